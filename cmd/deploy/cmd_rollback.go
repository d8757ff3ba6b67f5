package main

import (
	"context"
	"time"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// runRollback returns hosts to an earlier generation, under the run lock
// and with the same confirmation as an activation.
func runRollback(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var opts fleet.RollbackOptions
	var waitLock time.Duration
	fs := newFlags(e, "rollback", "TARGET... [--to N | --to-commit SHA]")
	hf.register(fs)
	fs.IntVar(&opts.To, "to", 0, "return to generation `N` (default: the one before the current that did not fail)")
	fs.StringVar(&opts.ToCommit, "to-commit", "", "return each host to its newest generation deployed from fleet commit `SHA` (a prefix is enough)")
	fs.DurationVar(&opts.ConfirmTimeout, "confirm-timeout", 30*time.Second, "roll forward again unless confirmed within this `duration`")
	fs.DurationVar(&waitLock, "wait-lock", 0, "wait up to this `duration` for another run's run lock instead of failing at once")
	var pub fleet.PublishOptions
	var pf publisherKeyFlag
	var bf buildFlags
	fs.StringVar(&pub.Channel, "channel", "", "roll back through this pull-mode channel `name`: publish an earlier release's systems again as a new serial (no SSH)")
	fs.Int64Var(&pub.ToSerial, "to-serial", 0, "with --channel: the serial `N` whose systems to publish again (default: the one before the channel's last)")
	fs.BoolVar(&pub.Wait, "wait", false, "with --channel: follow the rollout until every host reported")
	fs.DurationVar(&pub.WaveTimeout, "wave-timeout", 0, "with --channel: how long each wave has to report (default: the deployment's wave_timeout, else 30m)")
	fs.StringVar(&pub.Message, "message", "", "with --channel: a `message` recorded with the release")
	pf.register(fs)
	bf.store.register(fs)
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if opts.To > 0 && opts.ToCommit != "" {
		return usageErrorf("rollback: --to and --to-commit exclude each other")
	}
	if pub.Channel != "" {
		if opts.To > 0 || opts.ToCommit != "" {
			return usageErrorf("rollback: --channel goes with --to-serial, not --to or --to-commit")
		}
		return runChannelRollback(ctx, e, &hf, targets, pub, &pf, &bf)
	}
	if pub.ToSerial != 0 || pub.Wait {
		return usageErrorf("rollback: --to-serial and --wait go with --channel")
	}
	v := newView(e, hf.asJSON, true)
	s := hf.session(e, "rollback", targets, v)
	s.WaitLock = waitLock
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Rollback(ctx, opts) })
	if !hf.asJSON {
		view.Results(e.stdout, s.Selected, rep)
	}
	return err
}

// runChannelRollback is deploy rollback --channel NAME: the systems of an
// earlier release, published again as a new serial.
func runChannelRollback(ctx context.Context, e *env, hf *hostFlags, targets []string, opts fleet.PublishOptions, pf *publisherKeyFlag, bf *buildFlags) error {
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	v := newView(e, hf.asJSON, true)
	s := hf.session(e, "rollback", targets, v)
	if err := pf.signers(e, s, &opts); err != nil {
		return err
	}
	s.Builder, s.Getenv = b, e.getenv
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.ChannelRollback(ctx, opts) })
	if !hf.asJSON {
		view.Results(e.stdout, s.Selected, rep)
	}
	return err
}
