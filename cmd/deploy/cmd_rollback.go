package main

import (
	"context"
	"time"

	"github.com/declarative/deploy/deploy"
)

// runRollback returns hosts to an earlier generation, under the run lock
// and with the same confirmation as an activation.
func runRollback(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var opts deploy.RollbackOptions
	var waitLock time.Duration
	fs := newFlags(e, "rollback", "TARGET... [--to N | --to-commit SHA]")
	hf.register(fs)
	fs.IntVar(&opts.To, "to", 0, "return to generation `N` (default: the one before the current that did not fail)")
	fs.StringVar(&opts.ToCommit, "to-commit", "", "return each host to its newest generation deployed from fleet commit `SHA` (a prefix is enough)")
	fs.DurationVar(&opts.ConfirmTimeout, "confirm-timeout", 30*time.Second, "roll forward again unless confirmed within this `duration`")
	fs.DurationVar(&waitLock, "wait-lock", 0, "wait up to this `duration` for another run's run lock instead of failing at once")
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if opts.To > 0 && opts.ToCommit != "" {
		return usageErrorf("rollback: --to and --to-commit exclude each other")
	}
	v := newView(e, hf.asJSON, true)
	s := hf.session(e, "rollback", targets, v)
	s.WaitLock = waitLock
	rep, err := runSession(s, v, func() (*deploy.Report, error) { return s.Rollback(ctx, opts) })
	if !hf.asJSON {
		resultLines(e, s, rep)
	}
	return err
}
