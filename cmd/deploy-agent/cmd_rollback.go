package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// runRollback activates an earlier generation with the same machinery as
// activate (see activation.Layout.RollbackTarget for which).
func runRollback(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbRollback, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	to := fs.Int("to", 0, "the generation `N` to activate (default: the one before the current)")
	confirmTimeout := fs.Duration("confirm-timeout", 0, "roll back again unless confirmed within this `duration` (token on stdin); 0: no confirmation")
	meta := metaFlag{}
	fs.Var(meta, "meta", "`key=value` for the log; repeatable")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() != 0 {
		return usageErr(errors.New("rollback: unexpected arguments"))
	}
	l := layout()
	target, err := l.RollbackTarget(*to)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "deploy-agent: rolling back to generation %d\n", target.Number)
	req := &activation.Request{System: target.System, Generation: target.Number, Mode: activation.ModeSwitch,
		ConfirmTimeout: *confirmTimeout, Meta: meta}
	return startActivation(ctx, l, req, stdin, stdout, stderr, false)
}
