package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// rollbackArgs is the command line of rollback (agentapi.RollbackCmd).
type rollbackArgs struct {
	layout         activation.Layout
	to             int
	confirmTimeout time.Duration
	meta           map[string]string
}

func parseRollback(args []string, stderr io.Writer) (*rollbackArgs, error) {
	fs := newFlagSet(agentapi.VerbRollback, stderr)
	layout := layoutFlags(fs)
	a := &rollbackArgs{meta: metaFlag{}}
	fs.IntVar(&a.to, "to", 0, "the generation `N` to activate (default: the one before the current)")
	fs.DurationVar(&a.confirmTimeout, "confirm-timeout", 0, "roll back again unless confirmed within this `duration` (token on stdin); 0: no confirmation")
	fs.Var(metaFlag(a.meta), "meta", "`key=value` for the log; repeatable")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if fs.NArg() != 0 {
		return nil, usageErr(errors.New("rollback: unexpected arguments"))
	}
	a.layout = layout()
	return a, nil
}

// runRollback activates an earlier generation with the same machinery as
// activate (see activation.Layout.RollbackTarget for which).
func runRollback(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a, err := parseRollback(args, stderr)
	if err != nil {
		return err
	}
	target, err := a.layout.RollbackTarget(a.to)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "deploy-agent: rolling back to generation %d\n", target.Number)
	req := &activation.Request{System: target.System, Generation: target.Number, Mode: activation.ModeSwitch,
		ConfirmTimeout: a.confirmTimeout, Meta: a.meta}
	return startActivation(ctx, a.layout, req, stdin, stdout, stderr, false)
}
