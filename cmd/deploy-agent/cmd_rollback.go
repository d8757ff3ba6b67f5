package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/declarative/deploy/activation"
)

// runRollback activates an earlier generation with the same machinery as
// activate: by default the newest generation before the current one that
// did not fail, or --to N.
func runRollback(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rollback", flag.ContinueOnError)
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
	gens, err := l.Generations()
	if err != nil {
		return err
	}
	cur, _ := l.CurrentGeneration()
	var target *activation.Generation
	for _, g := range gens {
		switch {
		case *to > 0 && g.Number == *to:
			target = g
		case *to == 0 && (cur == 0 || g.Number < cur) && !g.Failed:
			target = g
		}
	}
	if target == nil {
		if *to > 0 {
			return fmt.Errorf("rollback: no generation %d", *to)
		}
		return errors.New("rollback: no earlier generation that did not fail")
	}
	// Refused before anything is allocated or changed (the worker checks
	// again under the lock).
	if err := l.CheckCompatible(target.Number); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	fmt.Fprintf(stderr, "deploy-agent: rolling back to generation %d\n", target.Number)
	req := &activation.Request{System: target.System, Generation: target.Number, Mode: activation.ModeSwitch,
		ConfirmTimeout: *confirmTimeout, Meta: meta}
	return startActivation(ctx, l, req, stdin, stdout, stderr, false)
}
