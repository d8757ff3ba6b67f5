package main

import (
	"context"
	"time"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// runGC deletes old generations (never the current or boot default) and
// unreferenced store paths on hosts, under the run lock.
func runGC(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var opts fleet.GCOptions
	var waitLock time.Duration
	fs := newFlags(e, "gc", "TARGET... --keep K")
	hf.register(fs)
	fs.IntVar(&opts.Keep, "keep", 5, "keep the newest `K` generations (and always the current and boot ones)")
	fs.IntVar(&opts.KeepPushed, "keep-pushed", 0, "keep the newest `N` pushed systems (copied, not activated); 0: the agent's default (3); -1: no limit")
	fs.DurationVar(&opts.PushedMaxAge, "pushed-max-age", 0, "drop pushed systems older than this `duration`; 0: the agent's default (168h); -1s: no limit")
	fs.BoolVar(&opts.DropPushed, "drop-pushed", false, "drop every pushed system (its store paths go unless a generation needs them)")
	fs.DurationVar(&waitLock, "wait-lock", 0, "wait up to this `duration` for another run's run lock instead of failing at once")
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if opts.Keep < 1 {
		return usageErrorf("gc: --keep must be at least 1")
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "gc", targets, v)
	s.WaitLock = waitLock
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.GC(ctx, opts) })
	if hf.asJSON || rep == nil {
		return err
	}
	view.GC(e.stdout, s.Selected, rep)
	return err
}
