package main

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// deployFlags are the flags of `deploy TARGET...`.
type deployFlags struct {
	hostFlags
	build          buildFlags
	cacheKey       cacheKeyFlag
	ignoreWindow   bool
	waitWindow     bool
	mode           string
	dryRun         bool
	confirmTimeout time.Duration
	waitLock       time.Duration
	message        string
	compress       bool
	parallel       fleet.Parallelism
	reboot         bool
	rebootOpts     fleet.RebootOptions
}

// isTarget reports whether an argument of the top-level command names a
// fleet target rather than a subcommand: DIR#NAME, ".", or a directory.
func isTarget(arg string) bool {
	if strings.Contains(arg, "#") || arg == "." || strings.HasPrefix(arg, "./") || strings.HasPrefix(arg, "/") {
		return true
	}
	fi, err := os.Stat(arg)
	return err == nil && fi.IsDir()
}

func runDeploy(ctx context.Context, e *env, args []string) error {
	var df deployFlags
	fs := newFlags(e, "", "TARGET... (DIR#NAME: a deployment, a host, or @tag)")
	df.build.register(fs)
	df.hostFlags.register(fs)
	df.cacheKey.register(fs)
	registerFormat(fs, e)
	fs.StringVar(&df.mode, "mode", "switch", "switch, boot, test, dry-activate, build or push")
	fs.BoolVar(&df.dryRun, "dry-run", false, "show the plan per host (paths to copy, units, files) without changing anything")
	fs.DurationVar(&df.confirmTimeout, "confirm-timeout", 0, "roll a host back unless confirmed within this `duration` (default: the deployment's confirm_timeout, else 30s)")
	fs.DurationVar(&df.waitLock, "wait-lock", 0, "wait up to this `duration` for another run's run lock instead of failing at once")
	fs.StringVar(&df.message, "message", "", "a `message` recorded with the new generations")
	fs.BoolVar(&df.compress, "compress", false, "zstd-compress copies (slow links)")
	fs.IntVar(&df.parallel.Build, "parallel-build", 2, "hosts built at once")
	fs.IntVar(&df.parallel.Connect, "parallel-connect", 16, "hosts contacted at once for their run locks")
	fs.IntVar(&df.parallel.Copy, "parallel-copy", 4, "hosts copied to at once")
	fs.IntVar(&df.parallel.Activate, "parallel-activate", 0, "hosts activated at once within a batch (0: the whole batch)")
	fs.BoolVar(&df.ignoreWindow, "ignore-window", false, "go on outside the deployment's maintenance window")
	fs.BoolVar(&df.waitWindow, "wait-window", false, "outside the deployment's maintenance window, wait for it to open")
	fs.BoolVar(&df.reboot, "reboot", false, "with --mode boot: reboot each host into the new generation in its batch and wait until it runs it healthily")
	fs.DurationVar(&df.rebootOpts.Timeout, "reboot-timeout", 5*time.Minute, "with --reboot: how long a host has to come back after its reboot")
	fs.DurationVar(&df.rebootOpts.HealthTimeout, "health-timeout", 2*time.Minute, "with --reboot: how long a host has to start its units after its reboot")
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if c, ok := lookup(commands(), targets[0]); ok {
		// deploy --identity K verify .#prod: flags before a command.
		return usageErrorf("%q is a command, not a target: write it first and its flags after it (deploy %s [flags] ...); flags before TARGET belong to deploy itself", c.name, c.name)
	}
	if df.asJSON && e.format == formatMarkdown && df.dryRun {
		return usageErrorf("--format markdown and --json both write to stdout: choose one")
	}
	mode, err := fleet.ParseMode(df.mode)
	if err != nil {
		return &exitError{code: ExitUsage, err: err}
	}
	var reboot *fleet.RebootOptions
	if df.reboot {
		if mode != fleet.ModeBoot || df.dryRun {
			return usageErrorf("--reboot goes with --mode boot, without --dry-run")
		}
		reboot = &df.rebootOpts
	}
	b, err := df.build.builder(e)
	if err != nil {
		return err
	}
	key, err := df.cacheKey.load(e)
	if err != nil {
		return err
	}
	v := newView(e, df.asJSON, true)
	s := df.session(e, "deploy", targets, v)
	s.Builder, s.Parallel, s.WaitLock, s.CacheKey, s.Getenv = b, df.parallel, df.waitLock, key, e.getenv
	s.IgnoreWindow, s.WaitWindow = df.ignoreWindow, df.waitWindow
	rep, err := runSession(s, v, func() (*fleet.Report, error) {
		return s.Deploy(ctx, fleet.DeployOptions{Mode: mode, DryRun: df.dryRun, ConfirmTimeout: df.confirmTimeout,
			Message: df.message, Compress: df.compress, Reboot: reboot})
	})
	onStdout := false
	if df.dryRun && rep != nil && e.ciFormat() != formatText {
		wrote, perr := writePlan(e, s, rep)
		if perr != nil && err == nil {
			err = perr
		}
		onStdout = wrote
	}
	if derr := writeDrift(e, s, rep, df.dryRun); derr != nil && err == nil {
		err = derr
	}
	if !df.asJSON && !onStdout {
		if mode == fleet.ModeBuild {
			view.Systems(e.stdout, s.Selected, rep)
		} else {
			view.Results(e.stdout, s.Selected, rep)
		}
	}
	return err
}
