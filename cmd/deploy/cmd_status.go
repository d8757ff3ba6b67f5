package main

import (
	"context"
	"fmt"
	"path"
	"text/tabwriter"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/deploy"
)

// runStatus shows each host's current, boot-default, pending and failed
// generations, whether its last application completed, and who holds its
// run lock. With --channel it shows instead what the hosts reported to a
// pull-mode channel, from the bucket (no SSH).
func runStatus(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var channelName string
	var pf publisherKeyFlag
	var bf buildFlags
	fs := newFlags(e, "status", "TARGET... [--channel NAME]")
	hf.register(fs)
	fs.StringVar(&channelName, "channel", "", "show the hosts' reports to this pull-mode channel `name` instead (read from the bucket; no SSH)")
	pf.register(fs)
	bf.store.register(fs)
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "status", targets, v)
	if channelName != "" {
		return runChannelStatus(ctx, e, s, v, channelName, &pf, &bf, hf.asJSON)
	}
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

// runChannelStatus is deploy status --channel NAME: the channel's last
// publish, and per host its release's serial and wave and its last report.
func runChannelStatus(ctx context.Context, e *env, s *deploy.Session, v view, name string, pf *publisherKeyFlag, bf *buildFlags, asJSON bool) error {
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
	rep, err := runSession(s, v, func() (*deploy.Report, error) {
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
