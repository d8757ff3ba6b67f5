package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/declarative/deploy/fleet"
)

// runGenerations lists each host's generations: number, time, operator,
// fleet commit, current/boot/failed marks.
func runGenerations(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	fs := newFlags(e, "generations", "TARGET...")
	hf.register(fs)
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "generations", targets, v)
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Generations(ctx) })
	if hf.asJSON || rep == nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tGEN\tTIME\tOPERATOR\tCOMMIT\tSTATE\tMESSAGE")
	for _, h := range s.Selected {
		for _, g := range rep.Hosts[h.Name].Generations {
			var marks []string
			if g.Current {
				marks = append(marks, "current")
			}
			if g.Boot {
				marks = append(marks, "boot")
			}
			if g.Failed {
				marks = append(marks, "failed")
			}
			rev := g.GitRev
			if len(rev) > 12 {
				rev = rev[:12]
			}
			msg := g.Message
			if g.Failed && g.FailedReason != "" {
				msg = strings.TrimSpace(msg + " [" + g.FailedReason + "]")
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", h.Name, g.Number, g.Time.Local().Format(time.DateTime), g.Operator, rev, strings.Join(marks, ","), msg)
		}
	}
	tw.Flush()
	return err
}
