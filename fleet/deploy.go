package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
)

// Rollout derives the rollout policy from the selection: a single
// deployment brings its batch_size, canary, max_failures and rollback; any
// other selection is one batch in which every host stands alone (a failure
// rolls back only that host).
func (s *Session) Rollout() Rollout {
	names := s.names()
	d := s.Deployment
	if d == nil {
		return Rollout{Batches: [][]string{names}, MaxFailures: len(names)}
	}
	return Rollout{Batches: Batches(names, d.BatchSize, d.Canary), MaxFailures: d.MaxFailures, RollbackAll: d.Rollback != "host",
		Budgets: budgetsOf(d.MaxUnavailable, names)}
}

// budgetsOf narrows a deployment's disruption budgets to the selected
// hosts (a budget's Max stays what the whole group allows).
func budgetsOf(bs []builder.Budget, names []string) []builder.Budget {
	var out []builder.Budget
	for _, b := range bs {
		b.Hosts = slices.DeleteFunc(slices.Clone(b.Hosts), func(h string) bool { return !slices.Contains(names, h) })
		if len(b.Hosts) > 0 {
			out = append(out, b)
		}
	}
	return out
}

// errNoBuilder is the error of a command that builds in a session
// without a builder.
var errNoBuilder = errors.New("session: no builder")

// build builds every selected host (Parallel.Build at once) into rep. A
// host that fails to build ends failed in the build phase; any failure is
// a *[ConfigError] with every host's diagnostics, each reported once
// however many hosts share it (an error in a role, say).
func (s *Session) build(ctx context.Context, rep *Report) (map[string]*builder.Result, error) {
	if s.Builder == nil {
		return nil, errNoBuilder
	}
	if s.Builder.Substitute == nil {
		sub, err := s.substituter()
		if err != nil {
			return nil, err
		}
		if sub != nil {
			s.Builder.Substitute = sub
		}
	}
	var mu sync.Mutex
	results := map[string]*builder.Result{}
	var diags hcl.Diagnostics
	// The hosts' own objects go into the store together, at the end: one
	// flush to disk for the whole build.
	batch, err := s.Builder.NewBatch(ctx)
	if err != nil {
		return nil, err
	}
	defer batch.Close()
	left := each(ctx, s.names(), s.Parallel.build(), func(ctx context.Context, name string) {
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseBuild, State: "started"})
		res, d := s.Builder.BuildInto(ctx, s.Fleet, name, batch)
		mu.Lock()
		defer mu.Unlock()
		diags = append(diags, d...)
		hr := rep.Hosts[name]
		if d.HasErrors() {
			hr.Result, hr.Phase, hr.Err = ResultFailed, PhaseBuild, errors.New(d.Error())
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseBuild, State: "failed", Error: d.Error()})
			return
		}
		results[name] = res
	})
	if err := batch.Commit(ctx); err != nil {
		for _, name := range s.names() {
			if hr := rep.Hosts[name]; results[name] != nil || hr.Result == ResultFailed {
				if results[name] != nil {
					hr.Result, hr.Phase, hr.Err = ResultFailed, PhaseBuild, fmt.Errorf("adding the system to the store: %w", err)
				}
				s.finish(hr, Event{})
			}
		}
		return nil, fmt.Errorf("adding the systems to the store: %w", err)
	}
	now := time.Now()
	for _, name := range s.names() {
		if res := results[name]; res != nil {
			rep.Hosts[name].System = res.SystemPath
			// A recent build is a root of deploy store gc (--keep-since).
			if err := s.Builder.Store.RecordBuild(res.SystemPath, name, now); err != nil {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseBuild, Message: "not recorded as a recent build (deploy store gc may collect it): " + err.Error()})
			}
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseBuild, State: "done", System: res.SystemPath})
		}
	}
	for _, name := range left {
		hr := rep.Hosts[name]
		hr.Result, hr.Phase, hr.Err = ResultFailed, PhaseBuild, fmt.Errorf("not built: %w", ctx.Err())
	}
	diags = dedupDiags(diags)
	s.diag(s.Fleet, diags)
	if diags.HasErrors() || len(left) > 0 {
		for _, name := range s.names() {
			if hr := rep.Hosts[name]; hr.Result == ResultFailed {
				s.finish(hr, Event{})
			}
		}
		if !diags.HasErrors() {
			return nil, ctx.Err()
		}
		return nil, &ConfigError{Diags: diags}
	}
	return results, nil
}

// dedupDiags drops the repeats of a diagnostic: the same severity, summary,
// detail and source range, as hosts that share a role report it.
func dedupDiags(diags hcl.Diagnostics) hcl.Diagnostics {
	type key struct {
		sev             hcl.DiagnosticSeverity
		summary, detail string
		subject         hcl.Range
	}
	seen := map[key]bool{}
	var out hcl.Diagnostics
	for _, d := range diags {
		k := key{sev: d.Severity, summary: d.Summary, detail: d.Detail}
		if d.Subject != nil {
			k.subject = *d.Subject
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, d)
	}
	return out
}

// Build builds every selected host's system closure (deploy build, and
// deploy --mode build): no host is contacted. Each host's report has its
// System.
func (s *Session) Build(ctx context.Context) (*Report, error) {
	rep := s.begin(ModeBuild, nil)
	defer s.end(rep)
	if _, err := s.build(ctx, rep); err != nil {
		return rep, err
	}
	for _, name := range s.names() {
		hr := rep.Hosts[name]
		hr.Result, hr.Phase = ResultOK, PhaseBuild
		s.finish(hr, Event{})
	}
	return rep, nil
}

// BuildOne builds the one host the targets select (deploy closure,
// why-depends): no host is contacted and no event is emitted; diagnostics
// go to [Session.Diagnostics]. Targets that select other than one host
// are a *[UsageError].
func (s *Session) BuildOne(ctx context.Context) (*builder.Result, error) {
	if len(s.Selected) != 1 {
		return nil, &UsageError{Err: fmt.Errorf("%q selects %d hosts; name one host", strings.Join(s.Targets, " "), len(s.Selected))}
	}
	if s.Builder == nil {
		return nil, errNoBuilder
	}
	res, diags := s.Builder.Build(ctx, s.Fleet, s.Selected[0].Name)
	s.diag(s.Fleet, diags)
	if diags.HasErrors() {
		return nil, &ConfigError{Diags: diags}
	}
	return res, nil
}

// DeployOptions are the settings of one [Session.Deploy].
type DeployOptions struct {
	Mode           Mode
	DryRun         bool          // the plan per host; nothing changes
	ConfirmTimeout time.Duration // 0: the deployment's, else 30s
	Message        string        // recorded with the new generations
	Compress       bool          // zstd on the wire
	// Reboot, with ModeBoot only, reboots each host whose running system
	// is not the new one, in its batch, and waits until it runs the new
	// one healthily (see [Session.Reboot]).
	Reboot *RebootOptions
}

// locks reports whether a deploy in this mode takes the run lock: every
// mode that changes a host (a dry run and dry-activate change nothing).
func (o DeployOptions) locks() bool {
	return !o.DryRun && o.Mode != ModeBuild && o.Mode != ModeDryActivate
}

// Deploy builds every selected host, takes the run lock on all of them,
// then rolls the systems out batch by batch: copy what each lacks,
// activate, confirm over a new connection (see [Runner]). With ModeBuild it
// only builds.
func (s *Session) Deploy(ctx context.Context, opts DeployOptions) (*Report, error) {
	if opts.Mode == "" {
		opts.Mode = ModeSwitch
	}
	if s.Builder == nil {
		return nil, errNoBuilder
	}
	if opts.Reboot != nil && (opts.Mode != ModeBoot || opts.DryRun) {
		return nil, &UsageError{Err: fmt.Errorf("--reboot goes with --mode boot (not %s), without --dry-run", opts.Mode)}
	}
	if opts.Mode == ModeBuild {
		return s.Build(ctx)
	}
	ro := s.Rollout()
	rep := s.beginRun(Event{Mode: opts.Mode, Batches: ro.Batches, DryRun: opts.DryRun})
	defer s.end(rep)
	if opts.locks() {
		if err := s.awaitWindow(ctx); err != nil {
			return rep, err
		}
	}
	ops, real, err := s.ops(ctx)
	if err != nil {
		return rep, err
	}
	if st := s.Builder.Store; real != nil && st != nil && st.NARs == nil && len(s.Selected) > 1 {
		// Many hosts lack the same paths (the agent, a new package): each
		// NAR is dumped once and the same bytes go to every host.
		st.NARs = &closure.NARCache{Max: narCacheMax, MaxPath: narCacheMaxPath}
		defer func() { st.NARs = nil }()
	}
	var failed map[string]error
	if real != nil {
		// The runner looks at drift before the copy (see Runner.host):
		// the run lock brings it.
		real.driftWithLock = opts.locks() && opts.Mode.Activates() && opts.Mode != ModeDryActivate
	}
	if opts.locks() {
		agents := map[string]string{}
		for _, h := range s.Selected {
			a, err := s.Builder.AgentPath(ctx, h)
			if err != nil {
				return rep, s.configError(h.DefRange.Ptr(), "No deploy-agent for the host", "Host %q: %s.", h.Name, err)
			}
			agents[h.Name] = a
		}
		ok, unreachable := s.lockHosts(ctx, rep, ops, s.names(), func(name string) string { return agents[name] })
		if !ok {
			return rep, rep.Err()
		}
		failed = unreachable
		defer s.unlockAll(ops)
	}
	if len(failed) > ro.MaxFailures {
		// The rollout stops before its first batch (Runner.Run says
		// why): nothing to build for.
		r := &Runner{Ops: ops, Mode: opts.Mode, DryRun: opts.DryRun, Emit: s.emit, Failed: failed, NoRunEvents: true}
		for name, hr := range r.Run(ctx, nil, ro).Hosts {
			rep.Hosts[name] = hr
		}
		return rep, rep.Err()
	}
	results, err := s.build(ctx, rep)
	if err != nil {
		return rep, err
	}
	confirm := opts.ConfirmTimeout
	if confirm == 0 && s.Deployment != nil {
		confirm = s.Deployment.ConfirmTimeout
	}
	systems := map[string]string{}
	for name, res := range results {
		systems[name] = res.SystemPath
	}
	var spec *closure.CacheSpec
	if !opts.DryRun {
		s.pushToCache(ctx, results)
		spec = s.cacheSpec()
	}
	if real != nil {
		real.compress, real.cache = opts.Compress, spec
		real.manifests = map[string]*manifest.Manifest{}
		real.trustedKeys = map[string][]string{}
		for name, res := range results {
			real.manifests[name] = res.Manifest
			real.trustedKeys[name] = res.TrustedKeys
		}
		real.activation = activationSettings{confirmTimeout: confirm, waitLock: s.WaitLock, meta: GenerationMeta(s.Fleet.Dir, opts.Message), boot: s.bootSettings()}
	}
	r := &Runner{Ops: ops, Mode: opts.Mode, DryRun: opts.DryRun, Parallel: s.Parallel, Emit: s.emit, Failed: failed, NoRunEvents: true, Reboot: opts.Reboot}
	out := r.Run(ctx, systems, ro)
	for name, hr := range out.Hosts {
		rep.Hosts[name] = hr
	}
	return rep, rep.Err()
}

// The NAR cache of a deploy to several hosts: at most narCacheMax bytes,
// of paths up to narCacheMaxPath (bigger ones are dumped once per host, as
// they stream).
const (
	narCacheMax     = 256 << 20
	narCacheMaxPath = 64 << 20
)

// ops returns the host operations of a rollout: Ops, else the real ones
// (returned a second time, to be set up for the run).
func (s *Session) ops(ctx context.Context) (HostOps, *sshHosts, error) {
	if s.Ops != nil {
		return s.Ops, nil, nil
	}
	o, err := s.hosts(ctx)
	if err != nil {
		return nil, nil, err
	}
	return o, o, nil
}

func (s *Session) unlockAll(ops HostOps) {
	if o, ok := ops.(*sshHosts); ok {
		o.unlockAll()
		return
	}
	for _, name := range s.names() {
		ops.Unlock(name)
	}
}

// bootSettings are the selected hosts' boot counting settings: each
// host's boot_attempts and boot_timeout, else the deployment's.
func (s *Session) bootSettings() map[string]bootSettings {
	out := map[string]bootSettings{}
	for _, h := range s.Selected {
		b := bootSettings{attempts: h.BootAttempts, timeout: h.BootTimeout}
		if d := s.Deployment; d != nil {
			if b.attempts == 0 {
				b.attempts = d.BootAttempts
			}
			if b.timeout == 0 {
				b.timeout = d.BootTimeout
			}
		}
		out[h.Name] = b
	}
	return out
}
