package main

import (
	"context"
	"fmt"
	"os"
	"path"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
)

// runStatus shows the fleet at a glance, one row per host from one request
// to each host: whether it answered, its running generation with the
// fleet commit and age, its boot default and whether a reboot is needed,
// pending and failed generations, whether its last application completed,
// pushed systems, who holds its run lock, and with --drift how it differs
// from its generation. --watch D refreshes the table every D. With
// --channel it shows instead what the hosts reported to a pull-mode
// channel, from the bucket (no SSH).
func runStatus(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var channelName string
	var pf publisherKeyFlag
	var bf buildFlags
	var opts fleet.StatusOptions
	var watch time.Duration
	var count int
	fs := newFlags(e, "status", "TARGET... [--drift] [--watch D] | TARGET... --channel NAME")
	hf.register(fs)
	fs.StringVar(&channelName, "channel", "", "show the hosts' reports to this pull-mode channel `name` instead (read from the bucket; no SSH)")
	fs.BoolVar(&opts.Drift, "drift", false, "also compare each host with its current generation (store paths checked for presence only; deploy verify rehashes them)")
	fs.DurationVar(&watch, "watch", 0, "refresh the table every `duration` until interrupted")
	fs.IntVar(&count, "count", 0, "with --watch: stop after `N` tables (0: until interrupted)")
	pf.register(fs)
	bf.store.register(fs)
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if watch < 0 || count < 0 || count > 0 && watch == 0 {
		return usageErrorf("status: --watch takes a positive duration, and --count goes with --watch")
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "status", targets, v)
	if channelName != "" {
		if opts.Drift || watch > 0 {
			return usageErrorf("status: --drift and --watch do not go with --channel")
		}
		return runChannelStatus(ctx, e, s, v, channelName, &pf, &bf, hf.asJSON)
	}
	redraw := false
	if f, ok := e.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) && e.getenv("TERM") != "dumb" {
		redraw = true
	}
	var last error
	rep, err := runSession(s, v, func() (*fleet.Report, error) {
		for n := 1; ; n++ {
			rep, err := s.StatusWith(ctx, opts)
			if watch == 0 {
				return rep, err
			}
			if ctx.Err() != nil {
				return nil, last
			}
			last = err
			if !hf.asJSON {
				if redraw {
					fmt.Fprint(e.stdout, "\x1b[H\x1b[2J")
				} else if n > 1 {
					fmt.Fprintln(e.stdout)
				}
				fmt.Fprintf(e.stdout, "%s (every %v)\n", time.Now().Format(time.RFC3339), watch)
				statusTable(e, s, rep, opts.Drift)
			}
			if count > 0 && n >= count {
				return nil, err
			}
			select {
			case <-ctx.Done():
				return nil, last
			case <-time.After(watch):
			}
		}
	})
	if hf.asJSON || rep == nil {
		return err
	}
	statusTable(e, s, rep, opts.Drift)
	return err
}

// statusTable prints one row per host.
func statusTable(e *env, s *fleet.Session, rep *fleet.Report, drift bool) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	head := "HOST\tREACHABLE\tGEN\tCOMMIT\tAGE\tBOOT\tPENDING\tFAILED\tCONSISTENT\tPUSHED\tRUN LOCK"
	if drift {
		head += "\tDRIFT"
	}
	fmt.Fprintln(tw, head)
	now := time.Now()
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		st := hr.Status
		if st == nil {
			why := string(hr.Result)
			if hr.Err != nil {
				why = hr.Err.Error()
			}
			reach := "yes"
			if hr.Result == fleet.ResultUnreachable || hr.Result == fleet.ResultSkipped {
				reach = "no"
			}
			row := fmt.Sprintf("%s\t%s\t?\t?\t?\t?\t?\t?\t?\t?\t%s", h.Name, reach, why)
			if drift {
				row += "\t?"
			}
			fmt.Fprintln(tw, row)
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
		commit, age := "-", "-"
		if st.CurrentGitRev != "" {
			commit = st.CurrentGitRev[:min(12, len(st.CurrentGitRev))]
		}
		if !st.CurrentTime.IsZero() {
			age = ageString(now.Sub(st.CurrentTime))
		}
		boot := dash(st.Boot)
		if st.RebootRequired {
			boot += " (reboot required)"
		}
		failed := "-"
		if len(st.Failed) > 0 {
			failed = strings.Trim(fmt.Sprint(st.Failed), "[]")
		}
		row := fmt.Sprintf("%s\tyes\t%s\t%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s", h.Name, dash(st.Current), commit, age, boot, dash(st.Pending), failed, st.Consistent, pushed, lock)
		if drift {
			switch d := st.Drift; {
			case d == nil:
				row += "\t?"
			case len(d.Items) == 0:
				row += "\tnone"
			default:
				row += fmt.Sprintf("\t%d: %s", len(d.Items), fleet.DriftSummary(d))
			}
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
}

// ageString renders a duration the way an operator reads an age: 45s,
// 12m, 5h, 3d.
func ageString(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// runChannelStatus is deploy status --channel NAME: the channel's last
// publish, and per host its release's serial and wave and its last report.
func runChannelStatus(ctx context.Context, e *env, s *fleet.Session, v view, name string, pf *publisherKeyFlag, bf *buildFlags, asJSON bool) error {
	pk, err := pf.load(e)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	s.Builder, s.PublisherKey, s.Getenv = b, pk, e.getenv
	var head *agentapi.ChannelRelease
	rep, err := runSession(s, v, func() (*fleet.Report, error) {
		rep, cr, err := s.ChannelStatus(ctx, name)
		head = cr
		return rep, err
	})
	if asJSON || rep == nil {
		return err
	}
	if head == nil {
		fmt.Fprintf(e.stdout, "channel %s: nothing published yet\n", name)
	} else {
		fmt.Fprintf(e.stdout, "channel %s: serial %d published %s", name, head.Serial, head.Published.Format(time.RFC3339))
		if head.Publisher != "" {
			fmt.Fprintf(e.stdout, " by %s", head.Publisher)
		}
		if head.GitRev != "" {
			fmt.Fprintf(e.stdout, " from commit %s", head.GitRev)
		}
		if head.Message != "" {
			fmt.Fprintf(e.stdout, " (%s)", head.Message)
		}
		fmt.Fprintln(e.stdout)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tWAVE\tRELEASE\tREPORTED\tOUTCOME\tGENERATION\tCHECK\tAT\tMESSAGE")
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		row := []any{h.Name, dash(hr.Wave), dash64(hr.Serial)}
		st := hr.Pull
		if st == nil {
			msg := "never reported"
			if hr.Err != nil {
				msg = hr.Err.Error()
			}
			row = append(row, "-", "-", "-", "-", "-", msg)
		} else {
			msg := st.Message
			if st.Refused != nil && !st.Refused.Time.Before(st.Time.Add(-time.Second)) {
				msg = "refused a release: " + st.Refused.Reason
			}
			check := st.Check
			if check == "" {
				check = "-"
			}
			row = append(row, dash64(st.Serial), st.Outcome, dash(st.Generation), check, st.Time.Format(time.RFC3339), msg)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row...)
	}
	tw.Flush()
	return err
}

func dash(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func dash64(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}
