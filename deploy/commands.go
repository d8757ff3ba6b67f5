package deploy

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/mesh"
	"github.com/hashicorp/hcl/v2"
)

// Rollout derives the rollout policy from the selection: a single
// deployment brings its batch_size, canary, max_failures and rollback; any
// other selection is one batch in which every host stands alone (a failure
// rolls back only that host). A bad batch size is a *[ConfigError].
func (s *Session) Rollout() (Rollout, error) {
	names := s.names()
	d := s.Deployment
	if d == nil {
		return Rollout{Batches: [][]string{names}, MaxFailures: len(names)}, nil
	}
	batches, err := Batches(names, d.BatchSize, d.Canary)
	if err != nil {
		return Rollout{}, &ConfigError{Err: fmt.Errorf("deployment %q: %w (fix batch_size or canary in the deployment block)", d.Name, err)}
	}
	return Rollout{Batches: batches, MaxFailures: d.MaxFailures, RollbackAll: d.Rollback != "host"}, nil
}

// build builds every selected host (Parallel.Build at once) into rep. A
// host that fails to build ends failed in the build phase; any failure is
// a *[ConfigError] with every host's diagnostics.
func (s *Session) build(ctx context.Context, rep *Report) (map[string]*builder.Result, error) {
	if s.Builder == nil {
		return nil, errors.New("session: no builder")
	}
	var mu sync.Mutex
	results := map[string]*builder.Result{}
	var diags hcl.Diagnostics
	each(ctx, s.names(), s.Parallel.build(), func(ctx context.Context, name string) {
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseBuild, State: "started"})
		res, d := s.Builder.Build(ctx, s.Fleet, name)
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
		hr.System = res.SystemPath
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseBuild, State: "done", System: res.SystemPath})
	})
	s.diag(s.Fleet, diags)
	if diags.HasErrors() {
		for _, name := range s.names() {
			if hr := rep.Hosts[name]; hr.Result == ResultFailed {
				s.finish(hr, Event{})
			}
		}
		return nil, &ConfigError{Diags: diags}
	}
	return results, nil
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
	if opts.Reboot != nil && (opts.Mode != ModeBoot || opts.DryRun) {
		return nil, &UsageError{Err: fmt.Errorf("--reboot goes with --mode boot (not %s), without --dry-run", opts.Mode)}
	}
	if opts.Mode == ModeBuild {
		return s.Build(ctx)
	}
	ro, err := s.Rollout()
	if err != nil {
		return nil, err
	}
	rep := s.begin(opts.Mode, ro.Batches)
	defer s.end(rep)
	ops, sshOps, err := s.ops(ctx)
	if err != nil {
		return rep, err
	}
	if sshOps != nil {
		// The run lock may bootstrap the agent from the local store.
		sshOps.Store = s.Builder.Store
	}
	var failed map[string]error
	if opts.locks() {
		agents := map[string]string{}
		for _, h := range s.Selected {
			a, err := s.Builder.AgentPath(ctx, h)
			if err != nil {
				return rep, &ConfigError{Err: err}
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
	if sshOps != nil {
		sshOps.Store, sshOps.Compress, sshOps.Cache = s.Builder.Store, opts.Compress, spec
		sshOps.Manifests = map[string]*manifest.Manifest{}
		sshOps.TrustedKeys = map[string][]string{}
		for name, res := range results {
			sshOps.Manifests[name] = res.Manifest
			sshOps.TrustedKeys[name] = res.TrustedKeys
		}
		sshOps.Activation = ActivationSettings{ConfirmTimeout: confirm, WaitLock: s.WaitLock, Meta: GenerationMeta(s.Fleet.Dir, opts.Message)}
	}
	r := &Runner{Ops: ops, Mode: opts.Mode, DryRun: opts.DryRun, Parallel: s.Parallel, Emit: s.emit, Failed: failed, NoRunEvents: true, Reboot: opts.Reboot}
	out := r.Run(ctx, systems, ro)
	for name, hr := range out.Hosts {
		rep.Hosts[name] = hr
	}
	return rep, rep.Err()
}

// ops returns the host operations of a rollout: Ops, else SSH (the
// *SSHOps is returned too, to be set up for the run).
func (s *Session) ops(ctx context.Context) (HostOps, *SSHOps, error) {
	if s.Ops != nil {
		return s.Ops, nil, nil
	}
	o, err := s.sshOps(ctx)
	if err != nil {
		return nil, nil, err
	}
	return o, o, nil
}

func (s *Session) unlockAll(ops HostOps) {
	if o, ok := ops.(*SSHOps); ok {
		o.UnlockAll()
		return
	}
	for _, name := range s.names() {
		ops.Unlock(name)
	}
}

// client connects to a selected host (once per session).
func (s *Session) client(ctx context.Context, name string) (*mesh.Client, error) {
	o, err := s.sshOps(ctx)
	if err != nil {
		return nil, err
	}
	return o.client(ctx, name)
}

// query runs fn on every selected host (Parallel.Connect at once) in
// phase, each in a report entry: fn returns the host's outcome, or an
// error that ends the host unreachable when it is one (or a
// *[HostFailure]'s result), else with def.
func (s *Session) query(ctx context.Context, rep *Report, phase Phase, def Result, names []string, fn func(ctx context.Context, hr *HostReport, c *mesh.Client) (Event, error)) {
	each(ctx, names, s.Parallel.connect(), func(ctx context.Context, name string) {
		hr := rep.Hosts[name]
		s.emit(Event{Type: EventPhase, Host: name, Phase: phase, State: "started"})
		c, err := s.client(ctx, name)
		if err != nil {
			s.fail(hr, phase, ResultUnreachable, err)
			return
		}
		ev, err := fn(ctx, hr, c)
		if err != nil {
			res := def
			if isUnreachable(err) {
				res = ResultUnreachable
			}
			s.fail(hr, phase, res, err)
			return
		}
		if hr.Result == ResultSkipped {
			hr.Result = ResultOK
		}
		hr.Phase = phase
		s.emit(Event{Type: EventPhase, Host: name, Phase: phase, State: "done"})
		s.finish(hr, ev)
	})
}

func isUnreachable(err error) bool {
	var ue *mesh.UnreachableError
	var hke *mesh.HostKeyError
	var uhe *mesh.UnknownHostError
	return errors.As(err, &ue) || errors.As(err, &hke) || errors.As(err, &uhe)
}

// Generations lists each selected host's generations (HostReport.Generations).
func (s *Session) Generations(ctx context.Context) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	s.query(ctx, rep, PhaseGenerations, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *mesh.Client) (Event, error) {
		gens, err := agentQuery(ctx, c, s.stateDir(), "generations")
		if err != nil {
			return Event{}, err
		}
		if gens == nil {
			hr.Generations = []*agentapi.Generation{}
		} else if hr.Generations, err = agentapi.DecodeGenerations(gens); err != nil {
			return Event{}, err
		}
		return Event{Generations: hr.Generations}, nil
	})
	return rep, rep.Err()
}

// Status reports each selected host's state (HostReport.Status): current,
// boot default, pending and failed generations, locks.
func (s *Session) Status(ctx context.Context) (*Report, error) {
	return s.StatusWith(ctx, StatusOptions{})
}

// StatusWith is [Session.Status] with options: with Drift, each host's
// agent also compares the host with its current generation
// (Status.Drift), in the same request (one round trip per host).
func (s *Session) StatusWith(ctx context.Context, opts StatusOptions) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	var extra []string
	if opts.Drift {
		extra = append(extra, "--drift")
	}
	s.query(ctx, rep, PhaseStatus, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *mesh.Client) (Event, error) {
		out, err := agentQuery(ctx, c, s.stateDir(), "status", extra...)
		if err != nil {
			return Event{}, err
		}
		hr.Status = &agentapi.Status{V: agentapi.Version, Failed: []int{}, Consistent: true}
		if out != nil {
			if err := agentapi.Decode("status", out, hr.Status); err != nil {
				return Event{}, err
			}
		}
		return Event{Status: hr.Status}, nil
	})
	return rep, rep.Err()
}

// agentQuery runs the host's current agent with `what --json`; nil output
// when the host has no agent (never deployed to).
func agentQuery(ctx context.Context, c *mesh.Client, stateDir, what string, extra ...string) ([]byte, error) {
	out, err := c.Output(ctx, append([]string{"sh", "-c", fmt.Sprintf(`test -x "$1" || exit %d; exec "$@"`, errAgentMissing),
		"sh", currentAgent(), what, "--json", "--state-dir", stateDir}, extra...))
	var ee *mesh.ExitError
	if errors.As(err, &ee) && ee.Code == errAgentMissing {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

func (s *Session) stateDir() string { return orDefaultDir(s.StateDir) }

// GCOptions are the limits of [Session.GC]; zero values are the agent's
// defaults where noted.
type GCOptions struct {
	// Keep is how many of the newest generations are kept (at least 1),
	// besides the current one and the boot default.
	Keep int
	// KeepPushed and PushedMaxAge bound the pushed systems (copied, not
	// activated) kept as roots; negative: no limit; 0: the agent's default
	// (3, and 7 days). DropPushed drops them all.
	KeepPushed   int
	PushedMaxAge time.Duration
	DropPushed   bool
}

// GC deletes each selected host's generations but the newest opts.Keep
// (never the current or the boot default), the pushed systems' roots
// beyond opts' limits, and the store paths nothing kept needs
// (HostReport.GC), under the run lock.
func (s *Session) GC(ctx context.Context, opts GCOptions) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	names, err := s.lockForHostCommand(ctx, rep)
	if err != nil {
		return rep, err
	}
	s.query(ctx, rep, PhaseGC, ResultCommandFailed, names, func(ctx context.Context, hr *HostReport, c *mesh.Client) (Event, error) {
		args := []string{"sh", "-c", fmt.Sprintf(`test -x "$1" || exit %d; exec "$@"`, errAgentMissing),
			"sh", currentAgent(), "gc", "--json", "--keep", fmt.Sprint(opts.Keep), "--state-dir", s.stateDir()}
		// Only what differs from the agent's defaults, so that agents from
		// before pushed roots still run the command.
		if opts.KeepPushed != 0 {
			args = append(args, "--keep-pushed", fmt.Sprint(max(opts.KeepPushed, 0)))
		}
		if opts.PushedMaxAge != 0 {
			args = append(args, "--pushed-max-age", max(opts.PushedMaxAge, 0).String())
		}
		if opts.DropPushed {
			args = append(args, "--drop-pushed")
		}
		out, err := c.Output(ctx, args)
		var ee *mesh.ExitError
		switch {
		case errors.As(err, &ee) && ee.Code == errAgentMissing:
			hr.GC = &agentapi.GCResult{V: agentapi.Version, Generations: []int{}}
		case errors.As(err, &ee) && ee.Code == 5:
			return Event{}, &HostFailure{Result: ResultLocked, Err: fmt.Errorf("gc: %w", err)}
		case err != nil:
			return Event{}, fmt.Errorf("gc: %w", err)
		default:
			hr.GC = &agentapi.GCResult{}
			if err := agentapi.Decode("gc", out, hr.GC); err != nil {
				return Event{}, err
			}
		}
		return Event{GC: hr.GC}, nil
	})
	return rep, rep.Err()
}

// lockForHostCommand takes the run lock (with each host's current agent)
// for a command that changes hosts without a build (rollback, gc). It
// returns the hosts to go on with; unreachable ones have ended.
func (s *Session) lockForHostCommand(ctx context.Context, rep *Report) ([]string, error) {
	ops, _, err := s.ops(ctx)
	if err != nil {
		return nil, err
	}
	ok, unreachable := s.lockHosts(ctx, rep, ops, s.names(), func(string) string { return "" })
	if !ok {
		return nil, rep.Err()
	}
	var names []string
	for _, name := range s.names() {
		if err := unreachable[name]; err != nil {
			s.fail(rep.Hosts[name], PhaseLock, ResultUnreachable, err)
			continue
		}
		names = append(names, name)
	}
	return names, nil
}

// IncompatibleGenerationError is a rollback refused before anything
// changed: the generation was created by an agent of a newer agent API
// than this deploy understands, and its own agent would run the rollback.
type IncompatibleGenerationError struct {
	Host       string
	Generation int
	AgentAPI   int
}

func (e *IncompatibleGenerationError) Error() string {
	return fmt.Sprintf("%s: generation %d was created by a deploy-agent of agent API version %d; this deploy understands up to %d: upgrade deploy (nothing was changed)",
		e.Host, e.Generation, e.AgentAPI, agentapi.Version)
}

// RollbackOptions say which generation [Session.Rollback] returns to.
type RollbackOptions struct {
	// To is a generation number; ToCommit a fleet commit (a prefix is
	// enough). Neither: the newest generation before the current that did
	// not fail.
	To             int
	ToCommit       string
	ConfirmTimeout time.Duration // default 30s
}

// Rollback returns each selected host to an earlier generation (see
// [PickGeneration]) under the run lock and the same confirmation as an
// activation; the hosts go at once (Parallel.Activate).
func (s *Session) Rollback(ctx context.Context, opts RollbackOptions) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	names, err := s.lockForHostCommand(ctx, rep)
	if err != nil {
		return rep, err
	}
	o, err := s.sshOps(ctx)
	if err != nil {
		return rep, err
	}
	each(ctx, names, s.Parallel.activate(), func(ctx context.Context, name string) {
		hr := rep.Hosts[name]
		c, err := o.client(ctx, name)
		if err != nil {
			s.fail(hr, PhaseRollback, ResultUnreachable, err)
			return
		}
		gens, err := Generations(ctx, c, s.stateDir())
		if err != nil {
			s.fail(hr, PhaseRollback, ResultFailed, err)
			return
		}
		g, err := PickGeneration(gens, opts.To, opts.ToCommit)
		if err != nil {
			s.fail(hr, PhaseRollback, ResultFailed, err)
			return
		}
		// The rollback runs g's own agent: one that speaks a newer agent
		// API would answer what this deploy cannot read, after it acted.
		if g.AgentAPI > agentapi.Version {
			s.fail(hr, PhaseRollback, ResultFailed, &IncompatibleGenerationError{Host: name, Generation: g.Number, AgentAPI: g.AgentAPI})
			return
		}
		hr.System = g.System
		msg := fmt.Sprintf("rolling back to generation %d", g.Number)
		if g.GitRev != "" {
			msg += fmt.Sprintf(" (commit %s)", g.GitRev)
		}
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseRollback, State: "started", Generation: g.Number, System: g.System, Message: msg})
		tail := &lineTail{max: 10}
		res, err := Activate(ctx, o.meshFor(name), o.Targets[name], g.System, ActivateOptions{
			Client: c, RollbackTo: g.Number, ConfirmTimeout: opts.ConfirmTimeout, StateDir: s.stateDir(),
			Logf: func(format string, args ...any) {
				line := fmt.Sprintf(format, args...)
				tail.add(line)
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseRollback, Message: line})
			},
		})
		if err != nil {
			s.fail(hr, PhaseRollback, ResultFailed, classify(err, tail.lines()))
			return
		}
		hr.Result, hr.Phase, hr.Generation = ResultOK, PhaseRollback, res.Generation
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseRollback, State: "done", Generation: res.Generation})
		s.finish(hr, Event{})
	})
	return rep, rep.Err()
}

// PickGeneration chooses the generation to return to: to exactly;
// toCommit the newest generation from that commit that did not fail; by
// default the newest generation before the current that did not fail.
func PickGeneration(gens []*agentapi.Generation, to int, toCommit string) (*agentapi.Generation, error) {
	var cur int
	for _, g := range gens {
		if g.Current {
			cur = g.Number
		}
	}
	var pick *agentapi.Generation
	for _, g := range gens {
		var ok bool
		switch {
		case to > 0:
			ok = g.Number == to
		case toCommit != "":
			ok = !g.Failed && strings.HasPrefix(g.GitRev, toCommit)
		default:
			ok = !g.Failed && g.Number < cur
		}
		if ok && (pick == nil || g.Number > pick.Number) {
			pick = g
		}
	}
	switch {
	case pick != nil:
		return pick, nil
	case to > 0:
		return nil, fmt.Errorf("no generation %d", to)
	case toCommit != "":
		return nil, fmt.Errorf("no generation deployed from commit %q", toCommit)
	}
	return nil, errors.New("no earlier generation that did not fail")
}

// Exec runs cmd on every selected host (Parallel.Connect at once). Each
// line of output is a host.output event and goes to output (called one
// line at a time). A command that exits non-zero ends its host
// command-failed, with HostReport.ExitStatus.
func (s *Session) Exec(ctx context.Context, cmd []string, output func(host, stream, line string)) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	var outMu sync.Mutex
	s.query(ctx, rep, PhaseExec, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *mesh.Client) (Event, error) {
		line := func(stream string) *lineWriterFunc {
			return &lineWriterFunc{fn: func(l string) {
				s.emit(Event{Type: EventOutput, Host: hr.Host, Stream: stream, Message: l})
				if output != nil {
					outMu.Lock()
					output(hr.Host, stream, l)
					outMu.Unlock()
				}
			}}
		}
		stdout, stderr := line("stdout"), line("stderr")
		err := c.Run(ctx, cmd, nil, stdout, stderr)
		stdout.flush()
		stderr.flush()
		status := 0
		var ee *mesh.ExitError
		if errors.As(err, &ee) {
			status = ee.Code
			hr.ExitStatus = status
			return Event{}, &execError{status: status}
		}
		if err != nil {
			return Event{}, err
		}
		return Event{ExitStatus: &status}, nil
	})
	return rep, rep.Err()
}

// execError is a command that exited non-zero on a host.
type execError struct{ status int }

func (e *execError) Error() string { return fmt.Sprintf("the command exited with status %d", e.status) }

// lineWriterFunc calls fn with each complete line written to it.
type lineWriterFunc struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriterFunc) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

func (w *lineWriterFunc) flush() {
	if len(w.buf) > 0 {
		w.fn(string(w.buf))
		w.buf = nil
	}
}

// Diff builds the one selected host and compares its manifest with the
// manifest of the system the host runs now (HostReport.Diff); prev, when
// not nil, replaces what the host runs (deploy diff --from), and the host
// is not contacted.
func (s *Session) Diff(ctx context.Context, prev *manifest.Manifest) (*Report, error) {
	if len(s.Selected) != 1 {
		return nil, &UsageError{Err: fmt.Errorf("diff: the targets select %d hosts; name one host", len(s.Selected))}
	}
	rep := s.begin("", nil)
	defer s.end(rep)
	results, err := s.build(ctx, rep)
	if err != nil {
		return rep, err
	}
	name := s.Selected[0].Name
	next := results[name].Manifest
	if prev != nil {
		hr := rep.Hosts[name]
		hr.Result, hr.Phase, hr.Diff = ResultOK, PhaseDiff, manifest.Diff(prev, next)
		s.finish(hr, Event{Diff: hr.Diff})
		return rep, nil
	}
	s.query(ctx, rep, PhaseDiff, ResultCommandFailed, []string{name}, func(ctx context.Context, hr *HostReport, c *mesh.Client) (Event, error) {
		cur, err := currentManifest(ctx, c, s.stateDir())
		if err != nil {
			return Event{}, err
		}
		hr.Diff = manifest.Diff(cur, next)
		return Event{Diff: hr.Diff}, nil
	})
	return rep, rep.Err()
}

// currentManifest reads the manifest of the system the host runs now; nil
// when it runs none yet (everything is new).
func currentManifest(ctx context.Context, c *mesh.Client, stateDir string) (*manifest.Manifest, error) {
	out, err := agentQuery(ctx, c, stateDir, "status")
	if err != nil || out == nil {
		return nil, err
	}
	st := &agentapi.Status{}
	if err := agentapi.Decode("status", out, st); err != nil {
		return nil, err
	}
	if st.CurrentSystem == "" {
		return nil, nil
	}
	data, err := c.Output(ctx, []string{"cat", path.Join(st.CurrentSystem, manifest.FileName)})
	if err != nil {
		return nil, fmt.Errorf("reading the current manifest: %w", err)
	}
	return manifest.Parse(data)
}

// Copy copies the closure of paths from local (and the agent, bootstrapped
// when missing) to every selected host (Parallel.Copy at once), sending
// only what each lacks; compress asks for zstd on the wire.
func (s *Session) Copy(ctx context.Context, local *closure.Store, paths []string, agent string, compress bool) (*Report, error) {
	rep := s.begin(ModePush, nil)
	defer s.end(rep)
	o, err := s.sshOps(ctx)
	if err != nil {
		return rep, err
	}
	each(ctx, s.names(), s.Parallel.copy(), func(ctx context.Context, name string) {
		hr := rep.Hosts[name]
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseCopy, State: "started"})
		c, err := o.client(ctx, name)
		if err != nil {
			s.fail(hr, PhaseCopy, ResultUnreachable, err)
			return
		}
		var last time.Time
		res, err := Copy(ctx, local, c, paths, agent, CopyOptions{
			StateDir: s.stateDir(), Compress: compress,
			Progress: func(p closure.Progress) {
				if p.Done || time.Since(last) > 100*time.Millisecond {
					last = time.Now()
					s.emit(Event{Type: EventProgress, Host: name, Phase: PhaseCopy, Path: p.Path, Sent: p.Sent, Confirmed: p.Confirmed, Total: p.Total})
				}
			},
			Logf: func(format string, args ...any) {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseCopy, Message: fmt.Sprintf(format, args...)})
			},
		})
		if err != nil {
			s.fail(hr, PhaseCopy, ResultUnreachable, err)
			return
		}
		hr.Result, hr.Phase = ResultOK, PhaseCopy
		hr.Push = &PushResult{Paths: res.Paths, Missing: res.Stats.Missing, Bytes: res.Stats.NarBytes}
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseCopy, State: "done", Paths: res.Paths, CopyPaths: res.Stats.Missing, Total: res.Stats.NarBytes})
		s.finish(hr, Event{})
	})
	return rep, rep.Err()
}
