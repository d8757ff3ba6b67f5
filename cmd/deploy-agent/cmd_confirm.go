package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// confirmArgs is the command line of confirm (agentapi.ConfirmCmd).
type confirmArgs struct {
	layout     activation.Layout
	wait       time.Duration
	generation int
}

func parseConfirm(args []string, stderr io.Writer) (*confirmArgs, error) {
	fs := newFlagSet(agentapi.VerbConfirm, stderr)
	layout := layoutFlags(fs)
	a := &confirmArgs{}
	fs.DurationVar(&a.wait, "wait", 10*time.Minute, "how long to wait for the activation's result")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if fs.NArg() != 1 {
		return nil, usageErr(errors.New("confirm: want the generation number"))
	}
	gen, err := strconv.Atoi(fs.Arg(0))
	if err != nil || gen <= 0 {
		return nil, usageErr(fmt.Errorf("confirm: %q is not a generation number", fs.Arg(0)))
	}
	a.layout, a.generation = layout(), gen
	return a, nil
}

// runConfirm confirms a pending activation: `confirm N` with the token on
// stdin. It then waits for the activation's result and exits like
// activate would (0 done, 3 rolled back).
func runConfirm(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a, err := parseConfirm(args, stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("confirm: must run as root")
	}
	tok, err := activation.ReadToken(stdin)
	if err != nil {
		return activationErr(err)
	}
	res, err := a.layout.ConfirmAndWait(ctx, a.generation, tok, a.wait, func(format string, args ...any) {
		fmt.Fprintf(stderr, "deploy-agent: "+format+"\n", args...)
	})
	if err != nil {
		return err
	}
	return resultExit(stdout, res)
}
