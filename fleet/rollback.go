package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/agentclient"
)

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
	o, err := s.hosts(ctx)
	if err != nil {
		return rep, err
	}
	s.forEach(ctx, rep, names, s.Parallel.activate(), func(ctx context.Context, hr *HostReport) {
		name := hr.Host
		c := o.clients[name]
		gens, err := c.Generations(ctx)
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
		res, err := c.Activate(ctx, g.System, agentclient.ActivateOptions{
			RollbackTo: g.Number, ConfirmTimeout: opts.ConfirmTimeout,
			Logf: func(format string, args ...any) {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseRollback, Message: fmt.Sprintf(format, args...)})
			},
		})
		if err != nil {
			s.fail(hr, PhaseRollback, ResultFailed, err)
			return
		}
		// The agent's warnings: a secret kept at its running version
		// because the generation's own is revoked, secrets on a tmpfs.
		for _, w := range res.Warnings {
			s.emit(Event{Type: EventWarning, Host: name, Phase: PhaseRollback, Message: w})
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
