package main

import (
	"context"
	"time"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// runReboot reboots hosts batch by batch and waits for each to come back
// running its boot default healthily.
func runReboot(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var opts fleet.RebootOptions
	var waitLock time.Duration
	fs := newFlags(e, "reboot", "TARGET...")
	hf.register(fs)
	fs.DurationVar(&opts.Timeout, "timeout", 5*time.Minute, "how long a host has to come back (answer SSH from a new boot) after its reboot")
	fs.DurationVar(&opts.HealthTimeout, "health-timeout", 2*time.Minute, "how long a host has to finish starting up and start its units after its reboot (its health checks have their own timeouts)")
	fs.DurationVar(&waitLock, "wait-lock", 0, "wait up to this `duration` for another run's run lock instead of failing at once")
	ignoreWindow := fs.Bool("ignore-window", false, "go on outside the deployment's maintenance window")
	waitWindow := fs.Bool("wait-window", false, "outside the deployment's maintenance window, wait for it to open")
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	v := newView(e, hf.asJSON, true)
	s := hf.session(e, "reboot", targets, v)
	s.WaitLock, s.IgnoreWindow, s.WaitWindow = waitLock, *ignoreWindow, *waitWindow
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Reboot(ctx, opts) })
	if !hf.asJSON && rep != nil {
		view.Reboots(e.stdout, s.Selected, rep)
	}
	return err
}
