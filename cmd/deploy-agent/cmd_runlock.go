package main

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// runLockArgs is the command line of run-lock (agentapi.RunLockCmd).
type runLockArgs struct {
	layout activation.Layout
	wait   time.Duration
	lease  time.Duration
	drift  bool
}

func parseRunLock(args []string, stderr io.Writer) (*runLockArgs, error) {
	fs := newFlagSet(agentapi.VerbRunLock, stderr)
	layout := layoutFlags(fs)
	a := &runLockArgs{}
	fs.DurationVar(&a.wait, "wait", 0, "wait up to this `duration` for a held lock")
	fs.DurationVar(&a.lease, "lease", time.Minute, "give the lock up after this `duration` without a line from the operator")
	fs.BoolVar(&a.drift, "drift", false, "once the lock is taken, compare the host with its current generation, in the reply")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	a.layout = layout()
	return a, nil
}

// runRunLock holds the run lock for an operator's run (see
// activation.Layout.HoldRunLock): the holder on the first line of stdin,
// the reply on stdout, then "ping" and "release" lines.
func runRunLock(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a, err := parseRunLock(args, stderr)
	if err != nil {
		return err
	}
	opts := activation.RunLockOptions{Wait: a.wait, Lease: a.lease, Logf: prefixed(stderr)}
	if a.drift {
		opts.Drift = func() (*agentapi.Drift, error) { return a.layout.Drift(ctx, activation.DriftOptions{}) }
	}
	opts.Systems = runningSystems(closure.NewTargetStore(a.layout.StateDir), a.layout.CurrentSystem())
	err = a.layout.HoldRunLock(ctx, stdin, stdout, opts)
	var held *activation.RunLockHeldError
	if errors.As(err, &held) {
		return lockHeldErr(err)
	}
	return err
}

// runLeaseArgs is the command line of run-lease (agentapi.RunLeaseCmd).
type runLeaseArgs struct {
	layout activation.Layout
	run    string
	d      time.Duration
}

func parseRunLease(args []string, stderr io.Writer) (*runLeaseArgs, error) {
	fs := newFlagSet(agentapi.VerbRunLease, stderr)
	layout := layoutFlags(fs)
	a := &runLeaseArgs{}
	fs.StringVar(&a.run, "run", "", "the `run` that holds the run lock and reboots the host")
	fs.DurationVar(&a.d, "for", 10*time.Minute, "keep the lock for the run across the reboot for at most this `duration`")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if a.run == "" || a.d <= 0 {
		return nil, usageErr(errors.New("run-lease: --run and a positive --for are required"))
	}
	a.layout = layout()
	return a, nil
}

// runRunLease keeps the run lock of a run that is about to reboot the
// host across the reboot (activation.Layout.LeaseRunLock).
func runRunLease(ctx context.Context, args []string, stderr io.Writer) error {
	a, err := parseRunLease(args, stderr)
	if err != nil {
		return err
	}
	return a.layout.LeaseRunLock(a.run, a.d)
}
