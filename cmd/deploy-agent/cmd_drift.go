package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// runDrift compares the machine with its current generation. It exits 0
// whether or not it found drift: the items say (deploy verify decides).
func runDrift(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbDrift, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	verifyStore := fs.Bool("verify-store", false, "rehash the current system's store paths (else only check that they are there)")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	d, err := layout().Drift(ctx, activation.DriftOptions{VerifyStore: *verifyStore})
	if err != nil {
		return err
	}
	if *asJSON {
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

// runHealth waits for the boot default's units and runs its health checks
// (after a reboot). It exits 0 when the host is healthy, 1 when not.
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbHealth, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for startup and for the units to become active")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	h, err := layout().Health(ctx, *wait, prefixed(stderr))
	if err != nil {
		return err
	}
	if *asJSON {
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
