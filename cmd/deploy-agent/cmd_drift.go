package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// driftArgs is the command line of drift (agentapi.DriftCmd).
type driftArgs struct {
	layout      activation.Layout
	json        bool
	verifyStore bool
}

func parseDrift(args []string, stderr io.Writer) (*driftArgs, error) {
	fs := newFlagSet(agentapi.VerbDrift, stderr)
	layout := layoutFlags(fs)
	a := &driftArgs{}
	fs.BoolVar(&a.json, "json", false, "print JSON")
	fs.BoolVar(&a.verifyStore, "verify-store", false, "rehash the current system's store paths (else only check that they are there)")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	a.layout = layout()
	return a, nil
}

// runDrift compares the machine with its current generation. It exits 0
// whether or not it found drift: the items say (deploy verify decides).
func runDrift(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseDrift(args, stderr)
	if err != nil {
		return err
	}
	d, err := a.layout.Drift(ctx, activation.DriftOptions{VerifyStore: a.verifyStore})
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(stdout, d)
	}
	if d.Generation == 0 {
		fmt.Fprintln(stdout, "no generation runs: nothing to compare")
		return nil
	}
	if len(d.Items) == 0 {
		fmt.Fprintf(stdout, "no drift from generation %d\n", d.Generation)
		return nil
	}
	fmt.Fprintf(stdout, "drift from generation %d:\n", d.Generation)
	for _, it := range d.Items {
		fmt.Fprintf(stdout, "  %s\n", it)
	}
	return nil
}

// healthArgs is the command line of health (agentapi.HealthCmd).
type healthArgs struct {
	layout activation.Layout
	json   bool
	wait   time.Duration
}

func parseHealth(args []string, stderr io.Writer) (*healthArgs, error) {
	fs := newFlagSet(agentapi.VerbHealth, stderr)
	layout := layoutFlags(fs)
	a := &healthArgs{}
	fs.BoolVar(&a.json, "json", false, "print JSON")
	fs.DurationVar(&a.wait, "wait", 2*time.Minute, "how long to wait for startup and for the units to become active")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	a.layout = layout()
	return a, nil
}

// runHealth waits for the boot default's units and runs its health checks
// (after a reboot). It exits 0 when the host is healthy, 1 when not.
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseHealth(args, stderr)
	if err != nil {
		return err
	}
	h, err := a.layout.Health(ctx, a.wait, prefixed(stderr))
	if err != nil {
		return err
	}
	if a.json {
		if err := writeJSON(stdout, h); err != nil {
			return err
		}
	} else if h.Healthy {
		fmt.Fprintf(stdout, "healthy: generation %d (%s)\n", h.Current, h.SystemState)
	}
	if !h.Healthy {
		return fmt.Errorf("not healthy: %s", h.Message)
	}
	return nil
}
