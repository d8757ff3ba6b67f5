package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// runRunLock holds the run lock for an operator's run (see
// activation.Layout.HoldRunLock): the holder on the first line of stdin,
// the reply on stdout, then "ping" and "release" lines.
func runRunLock(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbRunLock, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	wait := fs.Duration("wait", 0, "wait up to this `duration` for a held lock")
	lease := fs.Duration("lease", time.Minute, "give the lock up after this `duration` without a line from the operator")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	err := layout().HoldRunLock(ctx, stdin, stdout, activation.RunLockOptions{Wait: *wait, Lease: *lease, Logf: prefixed(stderr)})
	var held *activation.RunLockHeldError
	if errors.As(err, &held) {
		return lockHeldErr(err)
	}
	return err
}
