package fleet

import (
	"context"
	"errors"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/agentclient"
)

// RebootOptions tune a reboot ([Session.Reboot], and a deploy in boot mode
// with DeployOptions.Reboot): how long a host has to come back, and to
// become healthy.
type RebootOptions = agentclient.RebootOptions

// Rebooter is a [HostOps] that can reboot a host and wait until it runs
// its boot-default generation healthily (SSHOps can).
type Rebooter interface {
	Reboot(ctx context.Context, host string, opts RebootOptions, logf func(string)) (*agentapi.Health, error)
}

// DriftChecker is a [HostOps] that can compare a host with its current
// generation (SSHOps can); a deploy uses it to say what it overwrites.
type DriftChecker interface {
	Drift(ctx context.Context, host string) (*agentapi.Drift, error)
}

// RunningReporter is implemented by host operations that learn with the
// run lock which systems a host runs and boots (ok false: not known). A
// host that runs and boots the system a deploy would activate, and whose
// drift check found nothing (its closure present, every file, unit and
// account as its generation says), is unchanged without a transfer
// session: the no-op of a large fleet costs one session per host.
type RunningReporter interface {
	Running(host string) (current, bootDefault string, ok bool)
}

// Reboot reboots the selected hosts batch by batch, as a deploy rolls out
// (the deployment's batch_size, canary and max_failures; any other
// selection is one batch), under the run lock: each host of a batch is
// told to reboot, must answer SSH from a new boot within opts.Timeout,
// and must then run its boot-default generation with every unit that
// should run active and every health check passing (HostReport.Health).
// When more than max_failures hosts did not come back healthy, the
// rollout stops after that batch; the rest are skipped, not rebooted. A
// host that did not come back in time ends unreachable; one that came
// back unhealthy, failed.
func (s *Session) Reboot(ctx context.Context, opts RebootOptions) (*Report, error) {
	ro := s.Rollout()
	rep := s.begin("", ro.Batches)
	defer s.end(rep)
	if err := s.awaitWindow(ctx); err != nil {
		return rep, err
	}
	names, err := s.lockForHostCommand(ctx, rep)
	if err != nil {
		return rep, err
	}
	ops, _, err := s.ops(ctx)
	if err != nil {
		return rep, err
	}
	rb, ok := ops.(Rebooter)
	if !ok {
		return rep, errors.New("session: these host operations cannot reboot")
	}
	reachable := map[string]bool{}
	for _, n := range names {
		reachable[n] = true
	}
	// Hosts that ended unreachable when their run lock was taken count
	// against max_failures before any host reboots.
	var early []string
	for _, name := range s.names() {
		if !reachable[name] && rep.Hosts[name].Result == ResultUnreachable {
			early = append(early, name)
		}
	}
	failures := len(early)
	budgets := newBudgets(ro.Budgets)
	announceBudgets(ro.Budgets, "reboot", s.emit)
	for _, name := range early {
		budgets.markDown(name)
	}
	if haltBefore(ro, early, s.emit) {
		for _, name := range names {
			s.finish(rep.Hosts[name], Event{Message: haltedMessage + "; not rebooted"})
		}
		return rep, rep.Err()
	}
	for i, batch := range ro.Batches {
		s.emit(Event{Type: EventBatchStart, Batch: i + 1, Hosts: batch})
		var hosts []string
		for _, name := range batch {
			if reachable[name] {
				hosts = append(hosts, name)
			}
		}
		s.forEach(ctx, rep, hosts, len(hosts), func(ctx context.Context, hr *HostReport) {
			name := hr.Host
			release, err := budgets.acquire(ctx, name)
			if err != nil {
				var be *BudgetError
				if errors.As(err, &be) {
					hr.Phase, hr.Err = PhaseReboot, err
					s.finish(hr, Event{Message: err.Error()})
					return
				}
				s.fail(hr, PhaseReboot, ResultFailed, err)
				return
			}
			defer func() { release(keepsSlot(hr.Result)) }()
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseReboot, State: "started"})
			h, err := rb.Reboot(ctx, name, opts, func(line string) {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseReboot, Message: line})
			})
			hr.Health = h
			if err != nil {
				s.fail(hr, PhaseReboot, ResultFailed, err)
				return
			}
			hr.Result, hr.Phase, hr.Generation = ResultOK, PhaseReboot, h.Current
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseReboot, State: "done", Generation: h.Current})
			s.finish(hr, Event{Health: h})
		})
		for _, name := range hosts {
			if r := rep.Hosts[name].Result; r != ResultOK && r != ResultSkipped {
				failures++
			}
		}
		if failures > ro.MaxFailures || ctx.Err() != nil {
			for _, b := range ro.Batches[i+1:] {
				for _, name := range b {
					if reachable[name] {
						s.finish(rep.Hosts[name], Event{Message: "an earlier batch failed; not rebooted"})
					}
				}
			}
			break
		}
	}
	return rep, rep.Err()
}
