package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/metricgate"
	"github.com/declarative/deploy/manifest"
)

// sshHosts is the real [HostOps]: one [agentclient.Client] per host (one
// connection per host for the whole run, made again if it dies), plus what
// a rollout adds to the client: the new systems' manifests, the cache, the
// activation settings, and each host's system before the run.
type sshHosts struct {
	clients map[string]*agentclient.Client
	// manifests are the new systems' manifests (the agent path, dry-run
	// plans); trustedKeys the keys that vouch for each closure's paths
	// that are not content-addressed.
	manifests   map[string]*manifest.Manifest
	trustedKeys map[string][]string
	compress    bool
	cache       *closure.CacheSpec
	activation  activationSettings
	// driftWithLock has each run lock also bring the host's drift (one
	// session and one agent process per host fewer than asking after);
	// Drift answers from it.
	driftWithLock bool

	// beforeConfirm, in tests, runs before a host's confirmation
	// connection is opened.
	beforeConfirm func(host string)

	mu        sync.Mutex
	before    map[string]string                   // each host's current system before this run
	lockDrift map[string]*agentapi.LockReply      // run lock replies that brought drift, until Drift takes them
	running   map[string]*agentapi.RunningSystems // what the run locks' replies said each host runs and boots
}

// activationSettings are the per-run settings of activation.
type activationSettings struct {
	confirmTimeout time.Duration     // 0: the agent's default (30s)
	meta           map[string]string // recorded with the generation: git_rev, operator, message
	waitLock       time.Duration     // how long to wait for a held activation lock (0: fail at once)
	boot           map[string]bootSettings
}

// bootSettings are a host's boot counting settings (boot_attempts,
// boot_timeout: the host's, else the deployment's; 0: the agent's).
type bootSettings struct {
	attempts int
	timeout  time.Duration
}

func (o *sshHosts) client(host string) (*agentclient.Client, error) {
	c := o.clients[host]
	if c == nil {
		return nil, fmt.Errorf("host %q: not selected", host)
	}
	return c, nil
}

// close closes every connection.
func (o *sshHosts) close() {
	for _, c := range o.clients {
		c.Close()
	}
}

// Lock implements [HostOps].
func (o *sshHosts) Lock(ctx context.Context, host string, run *agentapi.RunHolder, wait time.Duration, agent string) (*agentapi.LockReply, error) {
	c, err := o.client(host)
	if err != nil {
		return nil, err
	}
	if !o.driftWithLock {
		return c.Lock(ctx, run, wait, agent)
	}
	reply, err := c.LockDrift(ctx, run, wait, agent)
	if err == nil && reply.Locked {
		o.mu.Lock()
		if reply.Drift != nil || reply.DriftError != "" {
			if o.lockDrift == nil {
				o.lockDrift = map[string]*agentapi.LockReply{}
			}
			o.lockDrift[host] = reply
		}
		if reply.Running != nil {
			if o.running == nil {
				o.running = map[string]*agentapi.RunningSystems{}
			}
			o.running[host] = reply.Running
		}
		o.mu.Unlock()
	}
	return reply, err
}

// Running implements [RunningReporter] from the host's run lock reply.
func (o *sshHosts) Running(host string) (current, bootDefault string, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := o.running[host]
	if r == nil {
		return "", "", false
	}
	return r.Current, r.BootDefault, true
}

// Unlock implements [HostOps].
func (o *sshHosts) Unlock(host string) {
	if c := o.clients[host]; c != nil {
		c.Unlock()
	}
}

// unlockAll releases every run lock still held, every host at once.
func (o *sshHosts) unlockAll() {
	var held []string
	for name, c := range o.clients {
		if c.Locked() {
			held = append(held, name)
		}
	}
	// Not the run's context: a run that was interrupted releases its
	// locks on its way out.
	each(context.Background(), held, len(held), func(_ context.Context, name string) { o.clients[name].Unlock() })
}

// Push implements [HostOps].
func (o *sshHosts) Push(ctx context.Context, host, system string, dryRun bool, progress func(closure.Progress)) (*PushResult, error) {
	m := o.manifests[host]
	if m == nil {
		return nil, fmt.Errorf("host %q: no manifest for %q", host, system)
	}
	c, err := o.client(host)
	if err != nil {
		return nil, err
	}
	res, err := c.Copy(ctx, []string{system}, m.Agent, agentclient.CopyOptions{
		Compress: o.compress, Progress: progress, DryRun: dryRun, Cache: o.cache, Keys: o.trustedKeys[host],
	})
	if err != nil {
		return nil, err
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
		var old *manifest.Manifest
		if pr.Current != "" {
			if old, err = c.Manifest(ctx, pr.Current); err != nil {
				return pr, &HostFailure{Result: ResultFailed, Err: err}
			}
		}
		pr.Plan = PlanFor(old, m)
	}
	return pr, nil
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

// Activate implements [HostOps]. A held activation lock is retried until
// the run's wait for locks has passed.
func (o *sshHosts) Activate(ctx context.Context, host, system string, mode Mode, logf func(string)) (*ActivateOutcome, error) {
	c, err := o.client(host)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(o.activation.waitLock)
	var hook func()
	if o.beforeConfirm != nil {
		hook = func() { o.beforeConfirm(host) }
	}
	opts := agentclient.ActivateOptions{
		Mode: string(mode), ConfirmTimeout: o.activation.confirmTimeout, Meta: o.activation.meta,
		BootAttempts: o.activation.boot[host].attempts, BootTimeout: o.activation.boot[host].timeout,
		Logf:          func(format string, args ...any) { logf(fmt.Sprintf(format, args...)) },
		BeforeConfirm: hook,
	}
	// Gates judge the new generation running: not in boot mode, where
	// it runs only after a reboot (nor does the host evaluate its own
	// then).
	if m := o.manifests[host]; m != nil && mode != ModeDryActivate && mode != ModeBoot {
		opts.Check, opts.ConfirmTimeout = operatorGates(m.MetricGates, opts.ConfirmTimeout, logf)
	}
	for {
		res, err := c.Activate(ctx, system, opts)
		var lh *agentclient.LockHeldError
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
			return nil, err
		}
		return &ActivateOutcome{Generation: res.Generation, Warnings: res.Warnings}, nil
	}
}

// Rollback implements [HostOps]: it returns the host to the generation
// that ran the system the host ran before this run (the agent's rollback
// --to N, with the same confirmation as any activation), so the
// generation's own metadata (commit, operator) stays true. gen is not used:
// the host's previous system is what this run replaced.
func (o *sshHosts) Rollback(ctx context.Context, host string, gen int, logf func(string)) error {
	o.mu.Lock()
	prev := o.before[host]
	o.mu.Unlock()
	if prev == "" {
		return fmt.Errorf("host %q ran no system before this run: nothing to roll back to", host)
	}
	c, err := o.client(host)
	if err != nil {
		return err
	}
	gens, err := c.Generations(ctx)
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
	_, err = c.Activate(ctx, prev, agentclient.ActivateOptions{
		RollbackTo: to, ConfirmTimeout: o.activation.confirmTimeout,
		Logf: func(format string, args ...any) { logf(fmt.Sprintf(format, args...)) },
	})
	return err
}

// Drift implements [DriftChecker] over the host's connection (store paths
// checked for presence only): what the host's run lock brought, else a
// request of its own.
func (o *sshHosts) Drift(ctx context.Context, host string) (*agentapi.Drift, error) {
	o.mu.Lock()
	r := o.lockDrift[host]
	delete(o.lockDrift, host)
	o.mu.Unlock()
	switch {
	case r != nil && r.DriftError != "":
		return nil, errors.New(r.DriftError)
	case r != nil:
		return r.Drift, nil
	}
	c, err := o.client(host)
	if err != nil {
		return nil, err
	}
	return c.Drift(ctx, false)
}

// Reboot implements [Rebooter] with [agentclient.Client.Reboot].
func (o *sshHosts) Reboot(ctx context.Context, host string, opts RebootOptions, logf func(string)) (*agentapi.Health, error) {
	c, err := o.client(host)
	if err != nil {
		return nil, err
	}
	return c.Reboot(ctx, opts, logf)
}

var (
	_ HostOps         = (*sshHosts)(nil)
	_ DriftChecker    = (*sshHosts)(nil)
	_ RunningReporter = (*sshHosts)(nil)
	_ Rebooter        = (*sshHosts)(nil)
)

// operatorGates returns the check that evaluates the metric gates with
// run_on operator (nil when there are none), and the confirmation timeout
// the host gets: the run's (default 30 s) plus the time those gates take
// (each its window and one query's timeout), so that the host does not
// roll back while the operator is still judging it.
func operatorGates(gates []manifest.MetricGate, confirmTimeout time.Duration, logf func(string)) (func(context.Context) error, time.Duration) {
	var mine []manifest.MetricGate
	var took time.Duration
	for _, g := range gates {
		if g.RunOn == manifest.GateOnOperator {
			mine = append(mine, g)
			took += time.Duration(g.WindowMS+g.QueryTimeoutMS) * time.Millisecond
		}
	}
	if len(mine) == 0 {
		return nil, confirmTimeout
	}
	if confirmTimeout <= 0 {
		confirmTimeout = 30 * time.Second
	}
	return func(ctx context.Context) error {
		for _, g := range mine {
			logf(fmt.Sprintf("metric gate %s (on the operator): evaluating %q every %v for %v (at least %d samples)", g.Name, g.Query,
				time.Duration(g.IntervalMS)*time.Millisecond, time.Duration(g.WindowMS)*time.Millisecond, g.MinSamples))
			err := metricgate.Evaluate(ctx, g, func(format string, args ...any) { logf(fmt.Sprintf(format, args...)) })
			if err != nil {
				return &agentclient.CheckError{Check: g.Name, Err: err}
			}
			logf(fmt.Sprintf("metric gate %s passed", g.Name))
		}
		return nil
	}, confirmTimeout + took
}
