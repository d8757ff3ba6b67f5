package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

func layoutFlags(fs *flag.FlagSet) func() activation.Layout {
	stateDir := stateDirFlag(fs)
	runDir := fs.String("run-dir", agentapi.DefaultRunDir, "the agent's runtime `directory` (lock, state, confirmations)")
	return func() activation.Layout { return activation.Layout{StateDir: *stateDir, RunDir: *runDir} }
}

type metaFlag map[string]string

func (m metaFlag) String() string { return "" }
func (m metaFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("--meta %q: want key=value", s)
	}
	m[k] = v
	return nil
}

// runActivate is the front of an activation (see activation.Start): it
// runs in the operator's SSH session, follows the activation's log to
// stderr until the activation awaits confirmation or ends, and prints one
// JSON result line on stdout.
func runActivate(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbActivate, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	mode := fs.String("mode", activation.ModeSwitch, "switch, boot, test or dry-activate")
	confirmTimeout := fs.Duration("confirm-timeout", 30*time.Second, "roll back unless confirmed within this `duration` (0: no confirmation); the token is read from stdin")
	meta := metaFlag{}
	fs.Var(meta, "meta", "`key=value` recorded with the generation (operator, git_rev, message); repeatable")
	force := fs.Bool("force", false, "replace unmanaged files and symlinks")
	noDetach := fs.Bool("no-detach", false, "run the activation in this process (debugging)")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() != 1 {
		return usageErr(errors.New("activate: want exactly one SYSTEM store path"))
	}
	switch *mode {
	case activation.ModeSwitch, activation.ModeBoot, activation.ModeTest, activation.ModeDryActivate:
	default:
		return usageErr(fmt.Errorf("activate: unknown mode %q", *mode))
	}
	req := &activation.Request{System: filepath.Clean(fs.Arg(0)), Mode: *mode, ConfirmTimeout: *confirmTimeout, Meta: meta, Force: *force}
	return startActivation(ctx, layout(), req, stdin, stdout, stderr, *noDetach)
}

// startActivation runs req (activate, rollback; see activation.Start)
// and prints its result.
func startActivation(ctx context.Context, l activation.Layout, req *activation.Request, stdin io.Reader, stdout, stderr io.Writer, noDetach bool) error {
	res, err := activation.Start(ctx, l, req, activation.StartOptions{NoDetach: noDetach, Token: stdin, Log: stderr, Logf: prefixed(stderr)})
	if err != nil {
		return activationErr(err)
	}
	return resultExit(stdout, res)
}

// runActivateWorker is the detached half of an activation (see
// activation.RunWorker): it runs the activation whose request the front
// wrote, logging to the activation's log.
func runActivateWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbActivateWorker, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	id := fs.String("id", "", "activation `id`")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	res, err := activation.RunWorker(ctx, layout(), *id)
	if err != nil {
		return err
	}
	return resultExit(io.Discard, res)
}

// runWatchdog is an activation's watchdog (see activation.Worker.Watch):
// it waits for the worker, and finishes the activation if the worker dies
// without a result, logging to the activation's log.
func runWatchdog(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbWatchdog, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	id := fs.String("id", "", "activation `id`")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if *id == "" {
		return usageErr(errors.New("watchdog: --id is required"))
	}
	return activation.RunWatchdog(ctx, layout(), *id)
}
