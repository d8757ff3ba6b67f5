package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/term"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/cmd/deploy/internal/view"
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
				view.StatusTable(e.stdout, s.Selected, rep, opts.Drift)
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
	view.StatusTable(e.stdout, s.Selected, rep, opts.Drift)
	return err
}

// runChannelStatus is deploy status --channel NAME: the channel's last
// publish, and per host its release's serial and wave and its last report.
func runChannelStatus(ctx context.Context, e *env, s *fleet.Session, v view.View, name string, pf *publisherKeyFlag, bf *buildFlags, asJSON bool) error {
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
	view.ChannelStatus(e.stdout, name, head, s.Selected, rep)
	return err
}
