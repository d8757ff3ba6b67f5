package fleet

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/fanout"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/pull/channel"
	"github.com/hashicorp/hcl/v2"
)

// Session is one run of a host command over a fleet: it loads the fleet
// and selects hosts, builds their systems, reaches them (direct SSH,
// ProxyJump, or a tailnet node started once for the run), takes the run
// lock on every host that the command changes, applies the rollout policy,
// and turns everything that happens into one event stream ending in a
// [Report]. Every host command of the CLI is a method: [Session.Deploy],
// [Session.Build], [Session.BuildOne], [Session.Rollback],
// [Session.Generations], [Session.Status], [Session.GC], [Session.Exec],
// [Session.Diff], [Session.Verify], [Session.Reboot] and [Session.Copy].
//
// Set the fields, call [Session.Open], run one command, then
// [Session.Close]. Errors that callers branch on are typed:
// *[ConfigError] (nothing was touched), *[UsageError], and *[RunError] (some
// host did not end well; its [Report] says which and how).
type Session struct {
	// Targets select the hosts: DIR#NAME selectors of one fleet directory
	// (a deployment, a host or @tag; DIR alone selects every host).
	Targets []string
	// Hosts, when Targets is empty, are the hosts themselves, outside any
	// fleet (deploy copy --to).
	Hosts []*builder.Host
	// Command names the run in its events and in the run locks it takes:
	// "deploy", "rollback", "gc", ...
	Command string
	// Builder builds systems; needed by Deploy, Build, BuildOne and Diff.
	Builder *builder.Builder
	// Mesh is the operator's side of SSH: keys, known_hosts, ssh_config.
	Mesh *mesh.Config
	// Tailnet starts the tailnet node that hosts with transport =
	// "tailscale" are reached through; called at most once per session, and
	// only when a selected host needs it. The returned func stops it.
	Tailnet func(ctx context.Context) (mesh.Dialer, func(), error)
	// StateDir is the agent's state directory on the hosts (default
	// [agentapi.DefaultStateDir]).
	StateDir string
	// Parallel limits how many hosts are in each phase at once.
	Parallel Parallelism
	// WaitLock is how long to wait for run locks held by another run
	// (0: fail at once with the holder named).
	WaitLock time.Duration
	// Emit receives every event, one at a time; nil drops them.
	Emit func(Event)
	// Diagnostics receives configuration diagnostics (errors and
	// warnings) with the fleet they belong to (nil when it could not be
	// read), to print with source snippets.
	Diagnostics func(f *builder.Fleet, diags hcl.Diagnostics)
	// Ops replaces how hosts are acted on in a rollout (tests); nil means
	// over SSH.
	Ops HostOps
	// IgnoreWindow goes on outside the deployment's maintenance window;
	// WaitWindow waits for it to open. Neither: a run that would change
	// hosts outside it is a *[WindowError] (deploy, reboot).
	IgnoreWindow, WaitWindow bool
	// now and after are the window's clock; nil: the real one (tests
	// set them).
	now   func() time.Time
	after func(time.Duration) <-chan time.Time
	// CacheKey signs what is pushed to the fleet's binary cache; without
	// it nothing is pushed (hosts still fetch what the cache has).
	CacheKey *cache.SecretKey
	// PublisherKey signs the releases of [Session.Publish] and
	// [Session.ChannelRollback].
	PublisherKey *cache.SecretKey
	// TimestampKeys sign the hosts' timestamps of a channel with a root
	// (docs/trust.md).
	TimestampKeys []*cache.SecretKey
	// Getenv reads the environment for cache credentials (nil: the
	// process's).
	Getenv func(string) string

	// Fleet, Selected and Deployment are set by Open: the fleet, the
	// selected hosts (sorted by name), and the deployment when the
	// targets name exactly one.
	Fleet      *builder.Fleet
	Selected   []*builder.Host
	Deployment *builder.Deployment

	emitter     emitter
	ssh         *sshHosts
	counts      mesh.Counts // the run's SSH connections and sessions, per host
	tailnetOnce sync.Once
	tailnetStop func()
	tailnetErr  error
	tailnetCfg  *mesh.Config
	closeOnce   sync.Once
	// wrapChannel, in tests, stands between the session and its
	// channel's store.
	wrapChannel func(channel.Store) channel.Store
	notify      *notifier // nil: the fleet has no notify block, or the command is not notified
}

// Open loads the fleet and selects the hosts. Configuration errors are a
// *[ConfigError] (after [Session.Diagnostics] received them); a bad
// selector is a *[UsageError].
func (s *Session) Open() error {
	if len(s.Targets) == 0 {
		if len(s.Hosts) == 0 {
			return &UsageError{Err: errors.New("no hosts selected")}
		}
		s.Selected = s.Hosts
		return nil
	}
	var dir string
	var names []string
	all := false
	for _, a := range s.Targets {
		sel, err := builder.ParseSelector(a)
		if err != nil {
			return &UsageError{Err: err}
		}
		if dir != "" && filepath.Clean(sel.Dir) != filepath.Clean(dir) {
			return &UsageError{Err: fmt.Errorf("selectors name different fleet directories (%q and %q)", dir, sel.Dir)}
		}
		dir = sel.Dir
		if len(sel.Names) == 0 {
			all = true
		}
		names = append(names, sel.Names...)
	}
	if all {
		names = nil
	}
	f, diags := builder.Load(dir)
	if diags.HasErrors() {
		s.diag(f, diags)
		return &ConfigError{Diags: diags}
	}
	hosts, d := f.Select(names)
	diags = append(diags, d...)
	s.diag(f, diags)
	if diags.HasErrors() {
		return &ConfigError{Diags: diags}
	}
	s.Fleet, s.Selected = f, hosts
	s.notify = newNotifier(f.Notify, s.Command, s.Targets)
	if len(names) == 1 {
		if dep, ok := f.Deployment(names[0]); ok {
			s.Deployment = dep
		}
	}
	return nil
}

func (s *Session) diag(f *builder.Fleet, diags hcl.Diagnostics) {
	if len(diags) > 0 && s.Diagnostics != nil {
		s.Diagnostics(f, diags)
	}
}

// Close releases every run lock still held, closes the connections and
// stops the tailnet node. It may be called more than once.
func (s *Session) Close() {
	s.closeOnce.Do(func() {
		if s.ssh != nil {
			s.ssh.unlockAll()
			s.ssh.close()
		}
		if s.tailnetStop != nil {
			s.tailnetStop()
		}
	})
}

// names returns the selected hosts' names, in order.
func (s *Session) names() []string {
	out := make([]string, len(s.Selected))
	for i, h := range s.Selected {
		out[i] = h.Name
	}
	return out
}

// emit hands ev to Emit (see [emitter]).
func (s *Session) emit(ev Event) {
	s.notify.observe(ev)
	s.emitter.emit(s.Emit, ev)
}

// begin starts a run: run.start, and a report with every selected host
// skipped until it ends otherwise. end must follow on every path.
func (s *Session) begin(mode Mode, batches [][]string) *Report {
	return s.beginRun(Event{Mode: mode, Batches: batches})
}

// beginRun is begin with more of run.start said (a dry run).
func (s *Session) beginRun(start Event) *Report {
	rep := &Report{Hosts: map[string]*HostReport{}}
	for _, h := range s.Selected {
		rep.Hosts[h.Name] = &HostReport{Host: h.Name, Result: ResultSkipped}
	}
	start.Type, start.Command, start.Hosts = EventRunStart, s.Command, s.names()
	s.emit(start)
	return rep
}

// end emits run.done with the report's summary.
func (s *Session) end(rep *Report) {
	summary := map[Result][]string{}
	for _, name := range s.names() {
		if hr := rep.Hosts[name]; hr != nil {
			summary[hr.Result] = append(summary[hr.Result], name)
		}
	}
	ev := Event{Type: EventRunDone, Command: s.Command, Summary: summary}
	if s.ssh != nil {
		ev.SSH = s.counts.All()
	}
	// The webhooks hear of the end first; what failed to reach them is
	// said before run.done.
	s.notify.observe(ev)
	for _, msg := range s.notify.finish() {
		s.emitter.emit(s.Emit, Event{Type: EventWarning, Message: msg})
	}
	s.emitter.emit(s.Emit, ev)
}

// finish records a host's end in the report and emits its host.result.
func (s *Session) finish(hr *HostReport, ev Event) {
	ev.Type, ev.Host = EventResult, hr.Host
	ev.Result, ev.Phase = hr.Result, hr.Phase
	if ev.System == "" {
		ev.System = hr.System
	}
	if ev.Generation == 0 {
		ev.Generation = hr.Generation
	}
	if hr.Err != nil {
		ev.Error = hr.Err.Error()
	}
	if ev.LogTail == nil {
		ev.LogTail = hr.LogTail
	}
	if ev.Holder == nil {
		ev.Holder = hr.Holder
	}
	if ev.Health == nil {
		ev.Health = hr.Health
	}
	s.emit(ev)
}

// fail ends hr with err in phase, its result as [resultOf] says (def when
// the error does not say). The phase's failure and the result are emitted.
func (s *Session) fail(hr *HostReport, phase Phase, def Result, err error) {
	hr.Phase, hr.Err = phase, err
	hr.Result, hr.LogTail = resultOf(err, def)
	s.emit(Event{Type: EventPhase, Host: hr.Host, Phase: phase, State: "failed", Error: err.Error()})
	s.finish(hr, Event{})
}

// each runs fn for every host in names, at most limit at once (see
// [fanout.Each]): once ctx is done no host starts, and those that did not
// are returned.
func each(ctx context.Context, names []string, limit int, fn func(ctx context.Context, name string)) []string {
	return fanout.Each(ctx, names, limit, fn)
}

// forEach runs fn for the report entry of every host in names, at most
// limit at once: the one fan-out of a session's commands. Once ctx is done
// no host starts; those that did not end skipped, saying so.
func (s *Session) forEach(ctx context.Context, rep *Report, names []string, limit int, fn func(ctx context.Context, hr *HostReport)) {
	left := each(ctx, names, limit, func(ctx context.Context, name string) { fn(ctx, rep.Hosts[name]) })
	for _, name := range left {
		hr := rep.Hosts[name]
		hr.Result, hr.Err = ResultSkipped, fmt.Errorf("not started: %w", ctx.Err())
		s.finish(hr, Event{Message: "interrupted before it started"})
	}
}

// hosts returns the real host operations, set up on first use: one agent
// client per selected host, reached through the tailnet node when its
// transport (or the deployment's) says so, else directly.
func (s *Session) hosts(ctx context.Context) (*sshHosts, error) {
	if s.ssh != nil {
		return s.ssh, nil
	}
	cfg := s.countedMesh(s.Mesh)
	ops := &sshHosts{clients: map[string]*agentclient.Client{}}
	for _, h := range s.Selected {
		c := &agentclient.Client{Target: Target(h), Mesh: cfg, StateDir: s.StateDir}
		if s.Builder != nil {
			c.Store = s.Builder.Store
		}
		if s.transport(h) == "tailscale" {
			tc, err := s.tailnet(ctx)
			if err != nil {
				return nil, err
			}
			c.Mesh = s.countedMesh(tc)
		}
		ops.clients[h.Name] = c
	}
	s.ssh = ops
	return ops, nil
}

// countedMesh is a copy of cfg (nil: the zero configuration) that counts
// into the session's counts (run.done reports them).
func (s *Session) countedMesh(cfg *mesh.Config) *mesh.Config {
	c := mesh.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Counts = &s.counts
	return &c
}

// transport is how h is reached: the deployment's transport, else the
// host's own ("ssh" when unset).
func (s *Session) transport(h *builder.Host) string {
	if s.Deployment != nil && s.Deployment.Transport != "" {
		return s.Deployment.Transport
	}
	if h.Transport == "" {
		return "ssh"
	}
	return h.Transport
}

// tailnet starts the tailnet node once and returns the mesh configuration
// that dials through it (host keys are verified the same way).
func (s *Session) tailnet(ctx context.Context) (*mesh.Config, error) {
	s.tailnetOnce.Do(func() {
		if s.Tailnet == nil {
			s.tailnetErr = errors.New("transport tailscale is not available here")
			return
		}
		d, stop, err := s.Tailnet(ctx)
		if err != nil {
			s.tailnetErr = err
			return
		}
		s.tailnetStop = stop
		c := *s.Mesh
		c.Dialer = d
		if c.DialTimeout == 0 {
			c.DialTimeout = 30 * time.Second
		}
		s.tailnetCfg = &c
	})
	return s.tailnetCfg, s.tailnetErr
}

// Target is how the operator reaches a fleet host with mesh.
func Target(h *builder.Host) mesh.Target {
	return mesh.Target{Name: h.Name, Address: h.Address, Port: h.Port, User: h.SSHUser, HostKey: h.HostKey, ProxyJump: h.ProxyJump, Sudo: h.Sudo}
}

// sorted returns a sorted copy of names.
func sorted(names []string) []string {
	out := slices.Clone(names)
	slices.Sort(out)
	return out
}
