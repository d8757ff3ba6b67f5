package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/mesh"
)

// query runs fn on every host in names (Parallel.Connect at once) in
// phase, each in its report entry: fn returns the host's outcome, or an
// error that ends the host as [resultOf] says (def when the error does not
// say: the agent failed the query, say).
func (s *Session) query(ctx context.Context, rep *Report, phase Phase, def Result, names []string, fn func(ctx context.Context, hr *HostReport, c *agentclient.Client) (Event, error)) {
	o, err := s.hosts(ctx)
	if err != nil {
		for _, name := range names {
			s.fail(rep.Hosts[name], phase, ResultUnreachable, err)
		}
		return
	}
	s.forEach(ctx, rep, names, s.Parallel.connect(), func(ctx context.Context, hr *HostReport) {
		s.emit(Event{Type: EventPhase, Host: hr.Host, Phase: phase, State: "started"})
		ev, err := fn(ctx, hr, o.clients[hr.Host])
		if err != nil {
			s.fail(hr, phase, def, err)
			return
		}
		if hr.Result == ResultSkipped {
			hr.Result = ResultOK
		}
		hr.Phase = phase
		s.emit(Event{Type: EventPhase, Host: hr.Host, Phase: phase, State: "done"})
		s.finish(hr, ev)
	})
}

// Generations lists each selected host's generations (HostReport.Generations).
func (s *Session) Generations(ctx context.Context) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	s.query(ctx, rep, PhaseGenerations, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *agentclient.Client) (Event, error) {
		gens, err := c.Generations(ctx)
		if err != nil {
			return Event{}, err
		}
		hr.Generations = gens
		return Event{Generations: gens}, nil
	})
	return rep, rep.Err()
}

// StatusOptions tune [Session.StatusWith].
type StatusOptions struct {
	// Drift also compares each host with its current generation (store
	// paths checked for presence only), in the same request.
	Drift bool
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
	s.query(ctx, rep, PhaseStatus, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *agentclient.Client) (Event, error) {
		st, err := c.Status(ctx, opts.Drift)
		if err != nil {
			return Event{}, err
		}
		hr.Status = st
		return Event{Status: st}, nil
	})
	return rep, rep.Err()
}

// VerifyOptions tune [Session.Verify].
type VerifyOptions struct {
	// Quick only checks that the current system's store paths are
	// present, instead of rehashing them.
	Quick bool
}

// Verify compares each selected host's live state with its current
// generation's manifest (HostReport.Drift): managed files, directories
// and symlinks, decrypted secrets' owners and modes, units that should
// run, users and groups, and the store paths of the current system. A
// host that differs ends [ResultDrifted]. Nothing changes on the hosts.
func (s *Session) Verify(ctx context.Context, opts VerifyOptions) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	s.query(ctx, rep, PhaseVerify, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *agentclient.Client) (Event, error) {
		d, err := c.Drift(ctx, !opts.Quick)
		if err != nil {
			return Event{}, err
		}
		hr.Drift, hr.Generation = d, d.Generation
		if len(d.Items) > 0 {
			hr.Result = ResultDrifted
		}
		return Event{Drift: d}, nil
	})
	return rep, rep.Err()
}

// DriftSummary describes d's items in one line.
func DriftSummary(d *agentapi.Drift) string {
	items := make([]string, len(d.Items))
	for i, it := range d.Items {
		items[i] = it.String()
	}
	return strings.Join(items, "; ")
}

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
	s.query(ctx, rep, PhaseGC, ResultCommandFailed, names, func(ctx context.Context, hr *HostReport, c *agentclient.Client) (Event, error) {
		res, err := c.GC(ctx, agentapi.GCCmd{Keep: opts.Keep, KeepPushed: opts.KeepPushed, PushedMaxAge: opts.PushedMaxAge, DropPushed: opts.DropPushed})
		if err != nil {
			return Event{}, err
		}
		hr.GC = res
		return Event{GC: res}, nil
	})
	return rep, rep.Err()
}

// Exec runs cmd on every selected host (Parallel.Connect at once). Each
// line of output is a host.output event and goes to output (called one
// line at a time). A command that exits non-zero ends its host
// command-failed, with HostReport.ExitStatus.
func (s *Session) Exec(ctx context.Context, cmd []string, output func(host, stream, line string)) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	var outMu sync.Mutex
	s.query(ctx, rep, PhaseExec, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *agentclient.Client) (Event, error) {
		line := func(stream string) *lineWriter {
			return &lineWriter{fn: func(l string) {
				s.emit(Event{Type: EventOutput, Host: hr.Host, Stream: stream, Message: l})
				if output != nil {
					outMu.Lock()
					output(hr.Host, stream, l)
					outMu.Unlock()
				}
			}}
		}
		stdout, stderr := line("stdout"), line("stderr")
		err := c.Exec(ctx, cmd, stdout, stderr)
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

// lineWriter calls fn with each complete line written to it.
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
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

func (w *lineWriter) flush() {
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
	s.query(ctx, rep, PhaseDiff, ResultCommandFailed, []string{name}, func(ctx context.Context, hr *HostReport, c *agentclient.Client) (Event, error) {
		cur, err := c.CurrentManifest(ctx)
		if err != nil {
			return Event{}, err
		}
		hr.Diff = manifest.Diff(cur, next)
		return Event{Diff: hr.Diff}, nil
	})
	return rep, rep.Err()
}
