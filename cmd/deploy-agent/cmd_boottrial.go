package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// bootTrialArgs is the command line of boot-guard and boot-confirm.
type bootTrialArgs struct{ layout activation.Layout }

func parseBootTrial(verb string, args []string, stderr io.Writer) (*bootTrialArgs, error) {
	fs := newFlagSet(verb, stderr)
	layout := layoutFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	return &bootTrialArgs{layout: layout()}, nil
}

// runBootGuard is deploy-boot-guard.service's command (run by the agent
// of the generation a trial falls back to): it counts the boot of a
// pending trial, tells systemd it is ready (the trial's boot unit waits
// for that), then watches the boot's confirmation (activation.BootGuard).
func runBootGuard(ctx context.Context, args []string, stderr io.Writer) error {
	a, err := parseBootTrial(agentapi.VerbBootGuard, args, stderr)
	if err != nil {
		return err
	}
	g := &activation.BootGuard{Layout: a.layout, Logf: prefixed(stderr), Ready: func() {
		if err := notifyReady(); err != nil {
			fmt.Fprintf(stderr, "deploy-agent: telling systemd the boot is counted: %v\n", err)
		}
	}}
	return g.Run(ctx)
}

// notifyReady sends READY=1 to systemd's notification socket
// (sd_notify(3); $NOTIFY_SOCKET, "@" for the abstract namespace, which
// package net handles). Without the variable it does nothing.
func notifyReady() error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte("READY=1"))
	return err
}

// runBootConfirm is deploy-boot-confirm.service's command (the trial's own
// agent): the boot default's health after startup confirms the trial, or
// records the boot's failure for the guard (activation.Layout.ConfirmBoot).
func runBootConfirm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseBootTrial(agentapi.VerbBootConfirm, args, stderr)
	if err != nil {
		return err
	}
	h, err := a.layout.ConfirmBoot(ctx, prefixed(stderr))
	if err != nil {
		return err
	}
	switch {
	case h == nil:
		fmt.Fprintln(stdout, "no trial to confirm")
	case h.Healthy:
		fmt.Fprintf(stdout, "confirmed: generation %d runs healthily\n", h.Current)
	default:
		return fmt.Errorf("not healthy: %s", h.Message)
	}
	return nil
}
