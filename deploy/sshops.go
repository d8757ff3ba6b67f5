package deploy

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/mesh"
)

// SSHOps is the real [HostOps]: it reaches hosts with mesh (one connection
// per host for the whole run, re-established if it dies), copies with
// [Copy] and activates with [Activate].
type SSHOps struct {
	// Store is the local store holding the built systems.
	Store *closure.Store
	// Mesh says how to authenticate and verify hosts.
	Mesh *mesh.Config
	// HostMesh overrides Mesh for some hosts (those reached through a
	// tailnet, say).
	HostMesh map[string]*mesh.Config
	// Targets maps host names to how to reach them.
	Targets map[string]mesh.Target
	// Manifests maps host names to their new system's manifest (for the
	// agent path and dry-run plans).
	Manifests map[string]*manifest.Manifest
	// TrustedKeys maps host names to the keys that vouch for the names of
	// their closure's paths that are not content-addressed.
	TrustedKeys map[string][]string
	// StateDir is the agent's state directory on targets (default
	// [DefaultStateDir]).
	StateDir string
	// Compress asks for zstd on the wire.
	Compress bool
	// Cache, if set, is the binary cache hosts fetch from before the rest
	// is sent.
	Cache *closure.CacheSpec
	// Activation holds the activation settings shared by every host.
	Activation ActivationSettings
	// Logf receives operator-side progress lines (may be nil).
	Logf func(format string, args ...any)

	mu      sync.Mutex
	clients map[string]*mesh.Client
	before  map[string]string    // each host's current system before this run
	locks   map[string]*heldLock // the run locks held
}

func (o *SSHOps) logf() func(string, ...any) {
	if o.Logf == nil {
		return func(string, ...any) {}
	}
	return o.Logf
}

// ActivationSettings are the per-run settings of activation.
type ActivationSettings struct {
	ConfirmTimeout time.Duration     // 0: the agent's default (30s)
	Meta           map[string]string // recorded with the generation: git_rev, operator, message
	WaitLock       time.Duration     // how long to wait for a held lock (0: fail at once)
}

// client returns the host's connection, connecting on first use and again
// when the previous connection died.
func (o *SSHOps) client(ctx context.Context, host string) (*mesh.Client, error) {
	o.mu.Lock()
	c := o.clients[host]
	o.mu.Unlock()
	if c != nil && c.Err() == nil {
		return c, nil
	}
	t, ok := o.Targets[host]
	if !ok {
		return nil, fmt.Errorf("host %q: no target", host)
	}
	c, err := o.meshFor(host).Connect(ctx, t)
	if err != nil {
		return nil, &HostFailure{Result: ResultUnreachable, Err: err}
	}
	o.mu.Lock()
	if o.clients == nil {
		o.clients = map[string]*mesh.Client{}
	}
	if old := o.clients[host]; old != nil {
		old.Close()
	}
	o.clients[host] = c
	lost := o.locks[host]
	delete(o.locks, host)
	o.mu.Unlock()
	if lost != nil {
		// The run lock's session died with the old connection: the host
		// gave the lock up, or will when it notices. Take it again; if
		// another run got it meanwhile, this host is lost to this run.
		close(lost.stop)
		lost.sess.Close()
		reply, err := o.lockOn(ctx, c, host, lost.run, 0, lost.agent)
		if err != nil {
			return nil, err
		}
		if !reply.Locked {
			return nil, &HostFailure{Result: ResultLocked, Err: fmt.Errorf("lost the run lock (the connection dropped) to %s", reply.Holder.String())}
		}
	}
	return c, nil
}

// Close closes every connection.
func (o *SSHOps) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, c := range o.clients {
		c.Close()
	}
	o.clients = nil
}

func (o *SSHOps) meshFor(host string) *mesh.Config {
	if m := o.HostMesh[host]; m != nil {
		return m
	}
	return o.Mesh
}

func (o *SSHOps) stateDir() string {
	if o.StateDir == "" {
		return DefaultStateDir
	}
	return o.StateDir
}

// Push implements [HostOps].
func (o *SSHOps) Push(ctx context.Context, host, system string, dryRun bool, progress func(closure.Progress)) (*PushResult, error) {
	m := o.Manifests[host]
	if m == nil {
		return nil, fmt.Errorf("host %q: no manifest for %q", host, system)
	}
	c, err := o.client(ctx, host)
	if err != nil {
		return nil, err
	}
	res, err := Copy(ctx, o.Store, c, []string{system}, m.Agent, CopyOptions{
		StateDir: o.stateDir(), Compress: o.Compress, Progress: progress, DryRun: dryRun,
		Logf: o.Logf, Cache: o.Cache, Keys: o.TrustedKeys[host],
	})
	if err != nil {
		return nil, &HostFailure{Result: ResultUnreachable, Err: err}
	}
	pr := &PushResult{Paths: res.Paths, Missing: res.Stats.Missing, Bytes: res.Stats.MissingBytes,
		Current: res.Stats.Current, BootDefault: res.Stats.BootDefault,
		Fetched: res.Stats.Fetched, FetchedBytes: res.Stats.FetchedBytes, CacheError: res.Stats.CacheError}
	o.mu.Lock()
	if o.before == nil {
		o.before = map[string]string{}
	}
	if _, seen := o.before[host]; !seen {
		o.before[host] = pr.Current
	}
	o.mu.Unlock()
	if dryRun {
		pr.Plan, err = o.plan(ctx, c, pr.Current, m)
		if err != nil {
			return pr, &HostFailure{Result: ResultFailed, Err: err}
		}
	}
	return pr, nil
}

// plan compares the host's current manifest with the new one.
func (o *SSHOps) plan(ctx context.Context, c *mesh.Client, current string, m *manifest.Manifest) (*Plan, error) {
	var old *manifest.Manifest
	if current != "" {
		data, err := c.Output(ctx, []string{"cat", path.Join(current, "manifest.json")})
		if err != nil {
			return nil, fmt.Errorf("reading the current manifest: %w", err)
		}
		if old, err = manifest.Parse(data); err != nil {
			return nil, fmt.Errorf("the current manifest: %w", err)
		}
	}
	return PlanFor(old, m), nil
}

// PlanFor summarises what activating m changes relative to old (nil: a
// host with no generation yet).
func PlanFor(old, m *manifest.Manifest) *Plan {
	d := manifest.Diff(old, m)
	p := &Plan{Start: d.Units.Start, Restart: d.Units.Restart, Reload: d.Units.Reload, Stop: d.Units.Stop}
	p.Files = append(append(append(p.Files, d.Files.Added...), d.Files.Changed...), d.Files.Removed...)
	slices.Sort(p.Files)
	return p
}

// Activate implements [HostOps] with [Activate] over the host's connection.
// A held lock is retried until Activation.WaitLock has passed.
func (o *SSHOps) Activate(ctx context.Context, host, system string, mode Mode, logf func(string)) (*ActivateOutcome, error) {
	tail := &lineTail{max: 10}
	deadline := time.Now().Add(o.Activation.WaitLock)
	for {
		c, err := o.client(ctx, host)
		if err != nil {
			return nil, err
		}
		res, err := Activate(ctx, o.meshFor(host), o.Targets[host], system, ActivateOptions{
			Client: c, Mode: string(mode), ConfirmTimeout: o.Activation.ConfirmTimeout, Meta: o.Activation.Meta,
			StateDir: o.stateDir(),
			Logf: func(format string, args ...any) {
				line := fmt.Sprintf(format, args...)
				tail.add(line)
				logf(line)
			},
		})
		var lh *LockHeldError
		if errors.As(err, &lh) && time.Now().Before(deadline) {
			logf("waiting for the lock: " + lh.Holder)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(2 * time.Second):
			}
			continue
		}
		if err != nil {
			return nil, classify(err, tail.lines())
		}
		return &ActivateOutcome{Generation: res.Generation, Warnings: res.Warnings}, nil
	}
}

// Rollback implements [HostOps]: it returns the host to the generation
// that ran the system the host ran before this run (the agent's rollback
// --to N, with the same confirmation as any activation), so the
// generation's own metadata (commit, operator) stays true. gen is not used:
// the host's previous system is what this run replaced.
func (o *SSHOps) Rollback(ctx context.Context, host string, gen int, logf func(string)) error {
	o.mu.Lock()
	prev := o.before[host]
	o.mu.Unlock()
	if prev == "" {
		return fmt.Errorf("host %q ran no system before this run: nothing to roll back to", host)
	}
	c, err := o.client(ctx, host)
	if err != nil {
		return err
	}
	gens, err := Generations(ctx, c, o.stateDir())
	if err != nil {
		return err
	}
	to := 0
	for _, g := range gens {
		if g.System == prev && !g.Failed && g.Number > to {
			to = g.Number
		}
	}
	if to == 0 {
		return fmt.Errorf("host %q: no generation runs %q", host, prev)
	}
	tail := &lineTail{max: 10}
	_, err = Activate(ctx, o.meshFor(host), o.Targets[host], prev, ActivateOptions{
		Client: c, RollbackTo: to, ConfirmTimeout: o.Activation.ConfirmTimeout, StateDir: o.stateDir(),
		Logf: func(format string, args ...any) {
			line := fmt.Sprintf(format, args...)
			tail.add(line)
			logf(line)
		},
	})
	if err != nil {
		return classify(err, tail.lines())
	}
	return nil
}

// classify maps activation errors to host results.
func classify(err error, tail []string) error {
	var rb *RolledBackError
	var lh *LockHeldError
	var ae *ActivationError
	var ue *mesh.UnreachableError
	switch {
	case errors.As(err, &rb):
		return &HostFailure{Result: ResultRolledBack, Err: err, LogTail: tail}
	case errors.As(err, &lh):
		return &HostFailure{Result: ResultLocked, Err: err}
	case errors.As(err, &ae):
		return &HostFailure{Result: ResultFailed, Err: err, LogTail: tail}
	case errors.As(err, &ue):
		return &HostFailure{Result: ResultUnreachable, Err: err, LogTail: tail}
	}
	return &HostFailure{Result: ResultFailed, Err: err, LogTail: tail}
}

// lineTail keeps the last max lines.
type lineTail struct {
	mu  sync.Mutex
	max int
	buf []string
}

func (t *lineTail) add(l string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, l)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
}

func (t *lineTail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.buf)
}

var _ HostOps = (*SSHOps)(nil)
