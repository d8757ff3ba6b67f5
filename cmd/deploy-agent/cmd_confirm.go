package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// confirmArgs is the command line of confirm (agentapi.ConfirmCmd).
type confirmArgs struct {
	layout     activation.Layout
	wait       time.Duration
	generation int
	reject     string // the operator's failed check: reject instead of confirming
}

func parseConfirm(args []string, stderr io.Writer) (*confirmArgs, error) {
	fs := newFlagSet(agentapi.VerbConfirm, stderr)
	layout := layoutFlags(fs)
	a := &confirmArgs{}
	fs.DurationVar(&a.wait, "wait", 10*time.Minute, "how long to wait for the activation's result")
	fs.StringVar(&a.reject, "reject", "", "reject the activation instead: the operator's health check `NAME` failed (the reason is the line after the token on stdin); the host rolls back at once")
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
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "deploy-agent: "+format+"\n", args...)
	}
	in := bufio.NewReader(io.LimitReader(stdin, 64<<10))
	tok, err := activation.ReadToken(in)
	if err != nil {
		return activationErr(err)
	}
	var res *activation.Result
	if a.reject != "" {
		reason, _ := in.ReadString('\n')
		reason = strings.TrimSpace(reason)
		if reason == "" {
			reason = fmt.Sprintf("health check %q failed", a.reject)
		}
		res, err = a.layout.RejectAndWait(ctx, a.generation, tok, a.reject, reason, a.wait, logf)
	} else {
		res, err = a.layout.ConfirmAndWait(ctx, a.generation, tok, a.wait, logf)
	}
	if err != nil {
		return err
	}
	return resultExit(stdout, res)
}
