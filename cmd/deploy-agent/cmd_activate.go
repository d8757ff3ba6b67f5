package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// activateArgs is the command line of activate (agentapi.ActivateCmd).
type activateArgs struct {
	layout         activation.Layout
	mode           string
	confirmTimeout time.Duration
	meta           map[string]string
	force          bool
	bootAttempts   int
	bootTimeout    time.Duration
	noDetach       bool
	system         string
}

func parseActivate(args []string, stderr io.Writer) (*activateArgs, error) {
	fs := newFlagSet(agentapi.VerbActivate, stderr)
	layout := layoutFlags(fs)
	a := &activateArgs{meta: metaFlag{}}
	fs.StringVar(&a.mode, "mode", activation.ModeSwitch, "switch, boot, test or dry-activate")
	fs.DurationVar(&a.confirmTimeout, "confirm-timeout", 30*time.Second, "roll back unless confirmed within this `duration` (0: no confirmation); the token is read from stdin")
	fs.Var(metaFlag(a.meta), "meta", "`key=value` recorded with the generation (operator, git_rev, message); repeatable")
	fs.BoolVar(&a.force, "force", false, "replace unmanaged files and symlinks")
	fs.IntVar(&a.bootAttempts, "boot-attempts", 0, "mode boot: the boots `N` the generation may fail to confirm before the host boots its previous generation again (0: 3)")
	fs.DurationVar(&a.bootTimeout, "boot-timeout", 0, "mode boot: how long each boot of the generation has to confirm (0: 5m)")
	fs.BoolVar(&a.noDetach, "no-detach", false, "run the activation's worker as a child of this process, in this session, instead of detached (debugging)")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if fs.NArg() != 1 {
		return nil, usageErr(errors.New("activate: want exactly one SYSTEM store path"))
	}
	if a.bootAttempts < 0 || a.bootTimeout < 0 {
		return nil, usageErr(errors.New("activate: --boot-attempts and --boot-timeout cannot be negative"))
	}
	switch a.mode {
	case activation.ModeSwitch, activation.ModeBoot, activation.ModeTest, activation.ModeDryActivate:
	default:
		return nil, usageErr(fmt.Errorf("activate: unknown mode %q", a.mode))
	}
	a.layout, a.system = layout(), filepath.Clean(fs.Arg(0))
	return a, nil
}

// runActivate is the front of an activation (see activation.Start): it
// runs in the operator's SSH session, follows the activation's log to
// stderr until the activation awaits confirmation or ends, and prints one
// JSON result line on stdout.
func runActivate(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a, err := parseActivate(args, stderr)
	if err != nil {
		return err
	}
	req := &activation.Request{System: a.system, Mode: a.mode, ConfirmTimeout: a.confirmTimeout, Meta: a.meta, Force: a.force,
		BootAttempts: a.bootAttempts, BootTimeout: a.bootTimeout}
	return startActivation(ctx, a.layout, req, stdin, stdout, stderr, a.noDetach)
}

// startActivation runs req (activate, rollback) and prints its result.
func startActivation(ctx context.Context, l activation.Layout, req *activation.Request, stdin io.Reader, stdout, stderr io.Writer, noDetach bool) error {
	res, err := activation.Start(ctx, l, req, activation.StartOptions{NoDetach: noDetach, Token: stdin, Log: stderr, Logf: prefixed(stderr)})
	if err != nil {
		return activationErr(err)
	}
	return resultExit(stdout, res)
}

// idArgs is the command line of the detached halves of an activation,
// activate-worker and watchdog (activation.RunWorker, RunWatchdog).
type idArgs struct {
	layout activation.Layout
	id     string
}

func parseID(verb string, args []string, stderr io.Writer) (*idArgs, error) {
	fs := newFlagSet(verb, stderr)
	layout := layoutFlags(fs)
	a := &idArgs{}
	fs.StringVar(&a.id, "id", "", "activation `id`")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	a.layout = layout()
	return a, nil
}

// runActivateWorker is the detached half of an activation: it runs the
// activation whose request the front wrote, logging to its log.
func runActivateWorker(ctx context.Context, args []string, stderr io.Writer) error {
	a, err := parseID(agentapi.VerbActivateWorker, args, stderr)
	if err != nil {
		return err
	}
	res, err := activation.RunWorker(ctx, a.layout, a.id)
	if err != nil {
		return err
	}
	return resultExit(io.Discard, res)
}

// runWatchdog is an activation's watchdog (see activation.Worker.Watch):
// it waits for the worker, and finishes the activation if the worker dies
// without a result, logging to the activation's log.
func runWatchdog(ctx context.Context, args []string, stderr io.Writer) error {
	a, err := parseID(agentapi.VerbWatchdog, args, stderr)
	if err != nil {
		return err
	}
	if a.id == "" {
		return usageErr(errors.New("watchdog: --id is required"))
	}
	return activation.RunWatchdog(ctx, a.layout, a.id)
}
