package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/deploy"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/mesh"
	"github.com/hashicorp/hcl/v2"
)

// deployFlags are the flags of `deploy TARGET...`.
type deployFlags struct {
	build          buildFlags
	ssh            fleetSSHFlags
	tailnet        tailnetFlags
	mode           string
	dryRun         bool
	asJSON         bool
	confirmTimeout time.Duration
	waitLock       time.Duration
	message        string
	compress       bool
	parallel       deploy.Parallelism
	remoteState    string
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
	fs := newFlags(e, "[flags]", "TARGET... (DIR#NAME: a deployment, a host, or @tag)")
	df.build.register(fs)
	df.ssh.register(fs)
	df.tailnet.registerNode(fs)
	fs.StringVar(&df.mode, "mode", "switch", "switch, boot, test, dry-activate, build or push")
	fs.BoolVar(&df.dryRun, "dry-run", false, "show the plan per host (paths to copy, units, files) without changing anything")
	fs.BoolVar(&df.asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	fs.DurationVar(&df.confirmTimeout, "confirm-timeout", 0, "roll a host back unless confirmed within this `duration` (default: the deployment's confirm_timeout, else 30s)")
	fs.DurationVar(&df.waitLock, "wait-lock", 0, "wait up to this `duration` for a host's activation lock instead of failing at once")
	fs.StringVar(&df.message, "message", "", "a `message` recorded with the new generations")
	fs.BoolVar(&df.compress, "compress", false, "zstd-compress copies (slow links)")
	fs.IntVar(&df.parallel.Build, "parallel-build", 2, "hosts built at once")
	fs.IntVar(&df.parallel.Copy, "parallel-copy", 4, "hosts copied to at once")
	fs.IntVar(&df.parallel.Activate, "parallel-activate", 0, "hosts activated at once within a batch (0: the whole batch)")
	fs.StringVar(&df.remoteState, "remote-state-dir", deploy.DefaultStateDir, "the agent's state `directory` on targets")
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	mode, err := deploy.ParseMode(df.mode)
	if err != nil {
		return &exitError{code: ExitUsage, err: err}
	}
	b, err := df.build.builder(e)
	if err != nil {
		return err
	}
	_, err = deployTargets(ctx, e, &deploySpec{
		targets: targets, mode: mode, dryRun: df.dryRun, asJSON: df.asJSON, confirmTimeout: df.confirmTimeout,
		waitLock: df.waitLock, message: df.message, compress: df.compress, parallel: df.parallel,
		remoteState: df.remoteState, builder: b, mesh: df.ssh.config(e), printResults: true,
		tailnet: func(ctx context.Context) (mesh.Dialer, func(), error) {
			tf := df.tailnet
			tf.transport = "tailscale"
			tn, err := tf.start(ctx, e)
			if err != nil {
				return nil, nil, err
			}
			return tn, func() { tn.Close() }, nil
		},
	})
	return err
}

// deploySpec is one run of deploy TARGET..., from the CLI or the demo.
type deploySpec struct {
	targets        []string
	mode           deploy.Mode
	dryRun, asJSON bool
	confirmTimeout time.Duration
	waitLock       time.Duration
	message        string
	compress       bool
	parallel       deploy.Parallelism
	remoteState    string
	builder        *builder.Builder
	mesh           *mesh.Config
	// tailnet starts the tailnet node that hosts with transport =
	// "tailscale" are reached through (once per run, when needed).
	tailnet      func(ctx context.Context) (mesh.Dialer, func(), error)
	printResults bool // one line per host on stdout at the end
	view         view // nil: newView
}

// deployTargets builds every selected host, then rolls the systems out
// (unless the mode is build), and returns the report and the error that
// carries the exit code.
func deployTargets(ctx context.Context, e *env, sp *deploySpec) (*deploy.Report, error) {
	f, hosts, err := loadSelected(e, sp.targets)
	if err != nil {
		return nil, err
	}
	rollout, confirm, dep, err := rolloutFor(f, sp.targets, hosts)
	if err != nil {
		return nil, err
	}
	if sp.confirmTimeout > 0 {
		confirm = sp.confirmTimeout
	}
	v := sp.view
	if v == nil {
		v = newView(e, sp.asJSON)
		defer v.Close()
	}
	results, err := buildAll(ctx, e, sp.builder, f, hosts, sp.parallel.Build, v)
	if err != nil {
		return nil, err
	}
	if sp.mode == deploy.ModeBuild {
		if !sp.asJSON && sp.printResults {
			for _, h := range hosts {
				fmt.Fprintln(e.stdout, results[h.Name].SystemPath)
			}
		}
		return nil, nil
	}
	ops := &deploy.SSHOps{
		Store: sp.builder.Store, Mesh: sp.mesh, StateDir: sp.remoteState, Compress: sp.compress,
		Targets: map[string]mesh.Target{}, Manifests: map[string]*manifest.Manifest{},
		Activation: deploy.ActivationSettings{ConfirmTimeout: confirm, WaitLock: sp.waitLock, Meta: generationMeta(f.Dir, sp.message)},
	}
	defer ops.Close()
	hostMesh, closeTailnet, err := transports(ctx, sp, dep, hosts)
	if err != nil {
		return nil, err
	}
	defer closeTailnet()
	ops.HostMesh = hostMesh
	systems := map[string]string{}
	for _, h := range hosts {
		ops.Targets[h.Name] = meshTarget(h)
		ops.Manifests[h.Name] = results[h.Name].Manifest
		systems[h.Name] = results[h.Name].SystemPath
	}
	r := &deploy.Runner{Ops: ops, Mode: sp.mode, DryRun: sp.dryRun, Parallel: sp.parallel, Emit: v.Event}
	rep := r.Run(ctx, systems, rollout)
	if sp.view == nil {
		v.Close()
		v = nopView{}
	}
	if !sp.asJSON && sp.printResults {
		for _, h := range hosts {
			hr := rep.Hosts[h.Name]
			line := fmt.Sprintf("%s\t%s", h.Name, hr.Result)
			if hr.Generation != 0 {
				line += fmt.Sprintf("\tgeneration %d", hr.Generation)
			}
			fmt.Fprintln(e.stdout, line+"\t"+hr.System)
		}
	}
	return rep, reportError(rep)
}

type nopView struct{}

func (nopView) Event(deploy.Event) {}
func (nopView) Close()             {}

// rolloutFor derives batches and failure policy: a single deployment
// selected brings its batch_size, max_failures, rollback and
// confirm_timeout; any other selection is one batch, each host on its own
// (a failure rolls back only that host).
func rolloutFor(f *builder.Fleet, targets []string, hosts []*builder.Host) (deploy.Rollout, time.Duration, *builder.Deployment, error) {
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	if len(targets) == 1 {
		sel, _ := builder.ParseSelector(targets[0])
		if len(sel.Names) == 1 {
			if d, ok := f.Deployment(sel.Names[0]); ok {
				batches, err := deploy.Batches(names, d.BatchSize, true)
				if err != nil {
					return deploy.Rollout{}, 0, nil, withHint(fmt.Errorf("deployment %q: %w", d.Name, err), ExitConfig, "fix batch_size in the deployment block")
				}
				return deploy.Rollout{Batches: batches, MaxFailures: d.MaxFailures, RollbackAll: d.Rollback != "host"}, d.ConfirmTimeout, d, nil
			}
		}
	}
	return deploy.Rollout{Batches: [][]string{names}, MaxFailures: len(names)}, 0, nil, nil
}

// transports gives hosts with transport = "tailscale" (their own, or the
// deployment's) a mesh configuration that dials through the tailnet node,
// started once for the run. Host keys are verified the same way.
func transports(ctx context.Context, sp *deploySpec, dep *builder.Deployment, hosts []*builder.Host) (map[string]*mesh.Config, func(), error) {
	out := map[string]*mesh.Config{}
	var tsCfg *mesh.Config
	closeAll := func() {}
	for _, h := range hosts {
		t := h.Transport
		if dep != nil && dep.Transport != "" {
			t = dep.Transport
		}
		if t != "tailscale" {
			continue
		}
		if tsCfg == nil {
			if sp.tailnet == nil {
				return nil, closeAll, fmt.Errorf("host %q: transport tailscale is not available here", h.Name)
			}
			d, closeFn, err := sp.tailnet(ctx)
			if err != nil {
				return nil, closeAll, err
			}
			closeAll = closeFn
			c := *sp.mesh
			c.Dialer = d
			if c.DialTimeout == 0 {
				c.DialTimeout = 30 * time.Second
			}
			tsCfg = &c
		}
		out[h.Name] = tsCfg
	}
	return out, closeAll, nil
}

// buildAll builds every host (limited parallelism) before any host is
// touched; a configuration or build error stops here (exit 1).
func buildAll(ctx context.Context, e *env, b *builder.Builder, f *builder.Fleet, hosts []*builder.Host, parallel int, v view) (map[string]*builder.Result, error) {
	sem := make(chan struct{}, max(parallel, 1))
	var mu sync.Mutex
	results := map[string]*builder.Result{}
	var diags hcl.Diagnostics
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			v.Event(deploy.Event{V: deploy.EventSchemaVersion, Time: time.Now().UTC(), Type: deploy.EventPhase, Host: h.Name, Phase: deploy.PhaseBuild, State: "started"})
			res, d := b.Build(ctx, f, h.Name)
			mu.Lock()
			defer mu.Unlock()
			diags = append(diags, d...)
			if d.HasErrors() {
				v.Event(deploy.Event{V: deploy.EventSchemaVersion, Time: time.Now().UTC(), Type: deploy.EventPhase, Host: h.Name, Phase: deploy.PhaseBuild, State: "failed", Error: d.Error()})
				return
			}
			results[h.Name] = res
			v.Event(deploy.Event{V: deploy.EventSchemaVersion, Time: time.Now().UTC(), Type: deploy.EventPhase, Host: h.Name, Phase: deploy.PhaseBuild, State: "done", System: res.SystemPath})
		}()
	}
	wg.Wait()
	if diags.HasErrors() {
		printDiags(e, f, diags)
		return nil, configError(diags)
	}
	return results, nil
}

// generationMeta is what each new generation records: the fleet's git
// commit (if the fleet is in a git work tree), the operator, a message.
func generationMeta(dir, message string) map[string]string {
	meta := map[string]string{}
	if u, err := user.Current(); err == nil {
		meta["operator"] = u.Username
	}
	if rev := gitRev(dir); rev != "" {
		meta["git_rev"] = rev
	}
	if message != "" {
		meta["message"] = message
	}
	return meta
}

// gitRev is the fleet's commit, with "-dirty" when the work tree has
// changes, or "" outside git.
func gitRev(dir string) string {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--", ".").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		rev += "-dirty"
	}
	return rev
}

// reportError maps a rollout's outcome to the documented exit codes:
// a host rolled back or failed → 3; else unreachable → 4; else a lock → 5.
func reportError(rep *deploy.Report) error {
	var parts []string
	for _, r := range []deploy.Result{deploy.ResultRolledBack, deploy.ResultFailed, deploy.ResultUnreachable, deploy.ResultLocked, deploy.ResultSkipped} {
		if hs := rep.With(r); len(hs) > 0 {
			parts = append(parts, fmt.Sprintf("%s: %s", r, strings.Join(hs, ", ")))
		}
	}
	err := fmt.Errorf("%s", strings.Join(parts, "; "))
	switch {
	case len(rep.With(deploy.ResultRolledBack))+len(rep.With(deploy.ResultFailed)) > 0:
		return &exitError{code: ExitRolledBack, err: err}
	case len(rep.With(deploy.ResultUnreachable)) > 0:
		return &exitError{code: ExitUnreachable, err: err}
	case len(rep.With(deploy.ResultLocked)) > 0:
		return &exitError{code: ExitLocked, err: err}
	}
	return nil
}
