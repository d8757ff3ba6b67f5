package main

import (
	"context"
	"fmt"
	"path"
	"text/tabwriter"
	"time"

	"github.com/declarative/deploy/deploy"
)

// runStatus shows each host's current, boot-default, pending and failed
// generations, whether its last application completed, and who holds its
// run lock.
func runStatus(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	fs := newFlags(e, "status", "TARGET...")
	hf.register(fs)
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "status", targets, v)
	rep, err := runSession(s, v, func() (*deploy.Report, error) { return s.Status(ctx) })
	if hf.asJSON || rep == nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tCURRENT\tBOOT\tPENDING\tFAILED\tCONSISTENT\tPUSHED\tRUN LOCK")
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		st := hr.Status
		if st == nil {
			fmt.Fprintf(tw, "%s\t?\t?\t?\t?\t?\t?\t%s\n", h.Name, hr.Result)
			continue
		}
		lock := "-"
		if st.RunLock != nil {
			lock = st.RunLock.String()
		}
		pushed := "-"
		if len(st.Pushed) > 0 {
			// The newest, by its store path's name, and how many more.
			pushed = path.Base(st.Pushed[0].System) + " (" + st.Pushed[0].Time.Format(time.RFC3339) + ")"
			if len(st.Pushed) > 1 {
				pushed += fmt.Sprintf(" +%d", len(st.Pushed)-1)
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%v\t%v\t%s\t%s\n", h.Name, st.Current, st.Boot, st.Pending, st.Failed, st.Consistent, pushed, lock)
	}
	tw.Flush()
	return err
}
