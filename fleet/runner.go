package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
)

// HostOps is what a run does to one host, by name. The real one speaks to
// each host's agent with an [agentclient.Client]; tests of the rollout
// policy use their own. An error's result for its host is what
// [resultOf] makes of it.
type HostOps interface {
	// Lock takes host's run lock for run, waiting up to wait while another
	// run holds it; agent is the deploy-agent store path to hold it with
	// ("": the host's current agent). The reply is not Locked when another
	// run holds it. [agentclient.ErrNoAgent] and
	// [agentclient.ErrNoRunLock] mean the host cannot hold a run lock; the
	// run goes on without it.
	Lock(ctx context.Context, host string, run *agentapi.RunHolder, wait time.Duration, agent string) (*agentapi.LockReply, error)
	// Unlock releases host's run lock, if held.
	Unlock(host string)
	// Push copies the closure of system to host, or with dryRun only finds
	// what a copy would send, and reports the host's current systems.
	Push(ctx context.Context, host, system string, dryRun bool, progress func(closure.Progress)) (*PushResult, error)
	// Activate activates system on host in mode and sees it confirmed (or
	// rolled back). logf receives the target's log lines.
	Activate(ctx context.Context, host, system string, mode Mode, logf func(string)) (*ActivateOutcome, error)
	// Rollback returns host to generation gen (0: the one before the
	// current) and sees it confirmed.
	Rollback(ctx context.Context, host string, gen int, logf func(string)) error
}

// PushResult is what [HostOps.Push] found and did.
type PushResult struct {
	Paths       int    // paths in the closure
	Missing     int    // paths the host lacked (sent, unless a dry run)
	Bytes       int64  // NAR bytes of the missing paths
	Current     string // the host's current system before the push ("" if none)
	BootDefault string // the host's boot-default system before the push
	Plan        *Plan  // with dryRun: what activation would change
	// Fetched and FetchedBytes count what the host fetched from the
	// binary cache (the rest was sent); CacheError says why it could not
	// use the cache.
	Fetched      int
	FetchedBytes int64
	CacheError   string
}

// Plan is what activating a system would change on a host (dry run).
type Plan struct {
	Start, Restart, Reload, Stop []string // units
	Files                        []string // files added, changed or removed
	// Repair is what the activation repairs of the host's drift from its
	// current generation ([agentapi.DriftItem.String] each): a drifted
	// host is re-applied even when it runs the system already.
	Repair []string
}

// withDrift adds to p (nil: nothing changes between the generations) what
// re-applying repairs of d: its drifted files change, its units that should
// run and do not start, and every item is in Repair.
func (p *Plan) withDrift(d *agentapi.Drift) *Plan {
	if d == nil || len(d.Items) == 0 {
		return p
	}
	out := &Plan{}
	if p != nil {
		*out = *p
	}
	out.Start, out.Files, out.Repair = slices.Clone(out.Start), slices.Clone(out.Files), slices.Clone(out.Repair)
	for _, it := range d.Items {
		out.Repair = append(out.Repair, it.String())
		switch {
		case it.Kind == agentapi.DriftFile && !slices.Contains(out.Files, it.Name):
			out.Files = append(out.Files, it.Name)
		case it.Kind == agentapi.DriftUnit && (it.Problem == "inactive" || it.Problem == "failed") &&
			!slices.Contains(out.Start, it.Name) && !slices.Contains(out.Restart, it.Name) && !slices.Contains(out.Reload, it.Name):
			out.Start = append(out.Start, it.Name)
		}
	}
	slices.Sort(out.Files)
	slices.Sort(out.Start)
	return out
}

// ActivateOutcome is the result of a successful [HostOps.Activate].
type ActivateOutcome struct {
	Generation int      // the new generation
	Previous   int      // the generation it replaced (0: none)
	Warnings   []string // the agent's warnings
}

// Parallelism limits how many hosts are in each phase at once. Zero
// values mean the defaults.
type Parallelism struct {
	Build    int // builds at once (default 2)
	Connect  int // hosts contacted at once for run locks and by host queries, exec, gc (default 16)
	Copy     int // copies at once (default 4)
	Activate int // activations at once within a batch, and rollbacks (default: the whole batch)
}

func (p Parallelism) build() int    { return orDefault(p.Build, 2) }
func (p Parallelism) connect() int  { return orDefault(p.Connect, 16) }
func (p Parallelism) copy() int     { return orDefault(p.Copy, 4) }
func (p Parallelism) activate() int { return orDefault(p.Activate, 1<<20) }

// Rollout says how to roll systems out to hosts.
type Rollout struct {
	// Batches are host names per batch, in order (see [Batches]).
	Batches [][]string
	// MaxFailures is how many hosts may fail before the rollout stops.
	MaxFailures int
	// RollbackAll returns every host switched in this run to its previous
	// generation when the rollout stops on failures (rollback = "all").
	RollbackAll bool
	// Budgets are the deployment's disruption budgets (max_unavailable):
	// within a batch, at most so many of a group's hosts activate (or
	// reboot) at once, and hosts that may be down count against them
	// ([budgets]).
	Budgets []builder.Budget
}

// Runner rolls systems out to hosts.
type Runner struct {
	Ops      HostOps
	Mode     Mode
	DryRun   bool
	Parallel Parallelism
	// Emit receives every event; it must not block for long. Nil drops
	// them.
	Emit func(Event)
	// Failed are hosts that failed before the rollout (unreachable for
	// their run lock, say): each fails in its batch with its error, as if
	// its copy had failed.
	Failed map[string]error
	// NoRunEvents leaves run.start and run.done to the caller (a
	// [Session] run).
	NoRunEvents bool
	// Reboot, in ModeBoot, reboots each host whose running system is not
	// the new one once the new one is its boot default, and waits until
	// it runs it healthily (Ops must be a [Rebooter]).
	Reboot *RebootOptions

	emitter emitter
	budgets *budgets
}

func (r *Runner) emit(ev Event) { r.emitter.emit(r.Emit, ev) }

// Run rolls systems (host name → system store path) out batch by batch.
// A batch's hosts go through copy and activate concurrently (within the
// parallelism limits); after each batch, if more than MaxFailures hosts
// failed, the rollout stops, the remaining hosts are skipped and, with
// RollbackAll, every host switched in this run is returned to its
// previous generation.
func (r *Runner) Run(ctx context.Context, systems map[string]string, ro Rollout) *Report {
	rep := &Report{Hosts: map[string]*HostReport{}}
	var all []string
	for _, b := range ro.Batches {
		all = append(all, b...)
	}
	for _, h := range all {
		rep.Hosts[h] = &HostReport{Host: h, Result: ResultSkipped, System: systems[h]}
	}
	if !r.NoRunEvents {
		r.emit(Event{Type: EventRunStart, Hosts: all, Batches: ro.Batches, Mode: r.Mode, DryRun: r.DryRun})
	}
	copySem := make(chan struct{}, r.Parallel.copy())
	actSem := make(chan struct{}, r.Parallel.activate())
	r.budgets = newBudgets(ro.Budgets)
	announceBudgets(ro.Budgets, "activate", r.emit)
	// Hosts that failed before the rollout end first, and count against
	// MaxFailures before any host changes (and against the budgets of
	// their groups for the whole run).
	var early []string
	for _, h := range all {
		if r.Failed[h] != nil {
			early = append(early, h)
			r.budgets.markDown(h)
			r.host(ctx, rep.Hosts[h], copySem, actSem)
		}
	}
	failures := len(early)
	if haltBefore(ro, early, r.emit) {
		for _, h := range all {
			if r.Failed[h] == nil {
				r.emit(Event{Type: EventResult, Host: h, Result: ResultSkipped, Message: haltedMessage})
			}
		}
		ro.Batches = nil
	}
	var switched []string
	for i, batch := range ro.Batches {
		r.emit(Event{Type: EventBatchStart, Batch: i + 1, Hosts: batch})
		batch = slices.DeleteFunc(slices.Clone(batch), func(h string) bool { return r.Failed[h] != nil })
		// The whole batch at once: the phases' own limits apply inside.
		left := each(ctx, batch, len(batch), func(ctx context.Context, h string) {
			r.host(ctx, rep.Hosts[h], copySem, actSem)
		})
		for _, h := range left {
			r.emit(Event{Type: EventResult, Host: h, Result: ResultSkipped, Message: "interrupted before it started"})
		}
		for _, h := range batch {
			switch rep.Hosts[h].Result {
			case ResultOK:
				if rep.Hosts[h].Generation != 0 && r.Mode.Activates() && r.Mode != ModeDryActivate {
					switched = append(switched, h)
				}
			case ResultUnchanged, ResultPlanned, ResultSkipped:
				// Skipped in a batch: a disruption budget was spent
				// by hosts already counted, or the run ended.
			default:
				failures++
			}
		}
		if failures > ro.MaxFailures {
			if ro.RollbackAll && len(switched) > 0 {
				r.rollbackAll(ctx, rep, switched)
			}
			for _, b := range ro.Batches[i+1:] {
				for _, h := range b {
					r.emit(Event{Type: EventResult, Host: h, Result: ResultSkipped, Message: "an earlier batch failed"})
				}
			}
			break
		}
		if ctx.Err() != nil {
			break
		}
	}
	if !r.NoRunEvents {
		summary := map[Result][]string{}
		for _, h := range all {
			summary[rep.Hosts[h].Result] = append(summary[rep.Hosts[h].Result], h)
		}
		r.emit(Event{Type: EventRunDone, Summary: summary})
	}
	return rep
}

// haltedMessage is the result of a host skipped because the rollout
// stopped before its first batch.
const haltedMessage = "the rollout stopped before its first batch: more hosts could not be reached or locked than max_failures allows"

// haltBefore decides whether a rollout stops before its first batch: when
// more of its hosts failed before it (they could not be reached, or their
// run lock not taken) than ro.MaxFailures allows, no host is changed. It
// then emits run.halt naming them, and reports true.
func haltBefore(ro Rollout, failed []string, emit func(Event)) bool {
	if len(failed) <= ro.MaxFailures {
		return false
	}
	emit(Event{Type: EventHalt, Hosts: failed, Message: fmt.Sprintf(
		"%d %s could not be reached or locked before any host changed (%s), more than max_failures = %d allows: no host is changed",
		len(failed), plural(len(failed), "host", "hosts"), strings.Join(failed, ", "), ro.MaxFailures)})
	return true
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func orDefault(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

// host runs one host through copy and activate.
func (r *Runner) host(ctx context.Context, hr *HostReport, copySem, actSem chan struct{}) {
	h := hr.Host
	// A step that failed for no reason its error names leaves the host
	// failed, but a run lock or a copy that failed leaves it unreachable
	// for this run (exit 4).
	fail := func(phase Phase, err error) {
		def := ResultFailed
		if phase == PhaseLock || phase == PhaseCopy {
			def = ResultUnreachable
		}
		hr.Phase, hr.Err = phase, err
		hr.Result, hr.LogTail = resultOf(err, def)
		r.emit(Event{Type: EventPhase, Host: h, Phase: phase, State: "failed", Error: err.Error()})
		r.emit(Event{Type: EventResult, Host: h, Result: hr.Result, Phase: phase, System: hr.System, Error: err.Error(), Check: checkOf(err), LogTail: hr.LogTail, Health: hr.Health})
	}
	if err := r.Failed[h]; err != nil {
		fail(PhaseLock, err)
		return
	}
	// What the host's state differs in from its current generation is
	// what this deploy overwrites: say so, and re-apply even an
	// unchanged system to repair it.
	drifted, clean := false, false
	if dc, ok := r.Ops.(DriftChecker); ok && r.Mode.Activates() && r.Mode != ModeDryActivate {
		d, err := dc.Drift(ctx, h)
		switch {
		case err == nil && d != nil && len(d.Items) == 0:
			clean = true
		case err != nil:
			r.emit(Event{Type: EventLog, Host: h, Phase: PhaseVerify, Message: "could not compare the host with its current generation: " + err.Error()})
		case len(d.Items) > 0:
			hr.Drift, drifted = d, true
			what := "this deploy overwrites it"
			switch {
			case r.DryRun:
				what = "a deploy would overwrite it"
			case r.Mode == ModeBoot:
				what = "the next boot, which applies the boot default, overwrites it"
			}
			r.emit(Event{Type: EventWarning, Host: h, Phase: PhaseVerify, Drift: d,
				Message: fmt.Sprintf("the host drifted from its generation %d (%s): %s", d.Generation, what, DriftSummary(d))})
		}
	}
	// A host that runs (and boots) this system, with nothing drifted, is
	// unchanged: what its run lock said is enough, no transfer session.
	if rr, ok := r.Ops.(RunningReporter); ok && clean && !r.DryRun {
		if cur, boot, ok := rr.Running(h); ok {
			pr := &PushResult{Current: cur, BootDefault: boot}
			if r.unchanged(pr, hr.System) && !(r.Reboot != nil && r.Mode == ModeBoot && cur != hr.System) {
				hr.Push, hr.Phase, hr.Result = pr, PhaseCopy, ResultUnchanged
				r.emit(Event{Type: EventResult, Host: h, Result: ResultUnchanged, Phase: PhaseCopy, System: hr.System})
				return
			}
		}
	}
	// A host whose disruption budget is spent already is not copied to.
	if err := r.budgets.spent(h); err != nil && r.Mode.Activates() && !r.DryRun {
		hr.Result, hr.Err = ResultSkipped, err
		r.emit(Event{Type: EventResult, Host: h, Result: ResultSkipped, System: hr.System, Message: err.Error()})
		return
	}
	select {
	case copySem <- struct{}{}:
	case <-ctx.Done():
		fail(PhaseCopy, ctx.Err())
		return
	}
	r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseCopy, State: "started"})
	var last time.Time
	pr, err := r.Ops.Push(ctx, h, hr.System, r.DryRun, func(p closure.Progress) {
		if p.Done || time.Since(last) > 100*time.Millisecond {
			last = time.Now()
			r.emit(Event{Type: EventProgress, Host: h, Phase: PhaseCopy, Path: p.Path, Sent: p.Sent, Confirmed: p.Confirmed, Total: p.Total})
		}
	})
	<-copySem
	hr.Push = pr
	if err != nil {
		fail(PhaseCopy, err)
		return
	}
	if pr.CacheError != "" {
		r.emit(Event{Type: EventLog, Host: h, Phase: PhaseCopy, Message: "cache: " + pr.CacheError + "; the rest was sent over the connection"})
	}
	r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseCopy, State: "done", CopyPaths: pr.Missing, Total: pr.Bytes, FetchedPaths: pr.Fetched, FetchedBytes: pr.FetchedBytes})
	hr.Phase = PhaseCopy
	if r.DryRun {
		hr.Result = ResultPlanned
		ev := Event{Type: EventPlan, Host: h, System: hr.System, CopyPaths: pr.Missing, Total: pr.Bytes, Result: ResultPlanned}
		if drifted && r.Mode != ModeBoot {
			pr.Plan = pr.Plan.withDrift(hr.Drift)
		}
		if p := pr.Plan; p != nil {
			ev.Start, ev.Restart, ev.Reload, ev.Stop, ev.Files, ev.Repair = p.Start, p.Restart, p.Reload, p.Stop, p.Files, p.Repair
		}
		r.emit(ev)
		return
	}
	if !r.Mode.Activates() {
		hr.Result = ResultOK
		r.emit(Event{Type: EventResult, Host: h, Result: ResultOK, Phase: PhaseCopy, System: hr.System})
		return
	}
	reboot := r.Reboot != nil && r.Mode == ModeBoot && pr.Current != hr.System
	if r.unchanged(pr, hr.System) && !(drifted && r.Mode != ModeBoot) {
		if !reboot {
			hr.Result = ResultUnchanged
			r.emit(Event{Type: EventResult, Host: h, Result: ResultUnchanged, Phase: PhaseCopy, System: hr.System})
			return
		}
		// Already the boot default: only the reboot is left.
		release, ok := r.takeDown(ctx, hr, PhaseReboot, actSem, fail)
		if !ok {
			return
		}
		defer func() { <-actSem; release(keepsSlot(hr.Result)) }()
		r.reboot(ctx, hr, fail)
		return
	}
	if drifted && r.unchanged(pr, hr.System) {
		r.emit(Event{Type: EventLog, Host: h, Phase: PhaseActivate, Message: "the host runs this system already: re-applying it to repair the drift"})
	}
	release, ok := r.takeDown(ctx, hr, PhaseActivate, actSem, fail)
	if !ok {
		return
	}
	defer func() { <-actSem; release(keepsSlot(hr.Result)) }()
	r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseActivate, State: "started"})
	out, err := r.Ops.Activate(ctx, h, hr.System, r.Mode, func(line string) {
		r.emit(Event{Type: EventLog, Host: h, Phase: PhaseActivate, Message: line})
	})
	if err != nil {
		fail(PhaseActivate, err)
		return
	}
	for _, w := range out.Warnings {
		r.emit(Event{Type: EventWarning, Host: h, Phase: PhaseActivate, Message: w})
	}
	hr.Generation, hr.Previous = out.Generation, out.Previous
	r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseConfirm, State: "done", Generation: out.Generation})
	if reboot {
		r.reboot(ctx, hr, fail)
		return
	}
	hr.Result, hr.Phase = ResultOK, PhaseConfirm
	r.emit(Event{Type: EventResult, Host: h, Result: ResultOK, Phase: PhaseConfirm, System: hr.System, Generation: out.Generation})
}

// takeDown waits for what a host needs before the step that may take it
// down (phase): a slot in each disruption budget of its groups, then one
// of actSem. A host whose budget is spent by hosts that may be down ends
// skipped, saying so; a cancelled wait fails it in phase. It reports
// whether the host goes on; then, after the step, one of actSem must be
// taken back and release called (keep: the host may be down).
func (r *Runner) takeDown(ctx context.Context, hr *HostReport, phase Phase, actSem chan struct{}, fail func(Phase, error)) (release func(keep bool), ok bool) {
	release, err := r.budgets.acquire(ctx, hr.Host)
	var be *BudgetError
	switch {
	case errors.As(err, &be):
		hr.Result, hr.Phase, hr.Err = ResultSkipped, phase, err
		r.emit(Event{Type: EventResult, Host: hr.Host, Result: ResultSkipped, Phase: phase, System: hr.System, Message: err.Error()})
		return nil, false
	case err != nil:
		fail(phase, err)
		return nil, false
	}
	select {
	case actSem <- struct{}{}:
	case <-ctx.Done():
		release(false)
		fail(phase, ctx.Err())
		return nil, false
	}
	return release, true
}

// reboot reboots a host into its (new) boot default and waits until it
// runs it healthily; the host ends ok or fails in the reboot phase.
func (r *Runner) reboot(ctx context.Context, hr *HostReport, fail func(Phase, error)) {
	h := hr.Host
	rb, ok := r.Ops.(Rebooter)
	if !ok {
		fail(PhaseReboot, errors.New("these host operations cannot reboot"))
		return
	}
	r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseReboot, State: "started"})
	health, err := rb.Reboot(ctx, h, *r.Reboot, func(line string) {
		r.emit(Event{Type: EventLog, Host: h, Phase: PhaseReboot, Message: line})
	})
	hr.Health = health
	if err != nil {
		fail(PhaseReboot, err)
		return
	}
	hr.Result, hr.Phase, hr.Generation = ResultOK, PhaseReboot, health.Current
	r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseReboot, State: "done", Generation: health.Current})
	r.emit(Event{Type: EventResult, Host: h, Result: ResultOK, Phase: PhaseReboot, System: hr.System, Generation: health.Current, Health: health})
}

// unchanged reports whether the host already runs system as the mode
// wants it, so activation can be skipped.
func (r *Runner) unchanged(pr *PushResult, system string) bool {
	switch r.Mode {
	case ModeSwitch:
		return pr.Current == system && pr.BootDefault == system
	case ModeTest:
		return pr.Current == system
	case ModeBoot:
		return pr.BootDefault == system
	}
	return false
}

// rollbackAll returns the hosts switched in this run to their previous
// generations, concurrently.
func (r *Runner) rollbackAll(ctx context.Context, rep *Report, switched []string) {
	r.emit(Event{Type: EventRollback, Hosts: switched, Message: "the rollout failed; returning every host switched in this run"})
	left := each(ctx, switched, r.Parallel.activate(), func(ctx context.Context, h string) {
		hr := rep.Hosts[h]
		r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseRollback, State: "started", Generation: hr.Previous})
		err := r.Ops.Rollback(ctx, h, hr.Previous, func(line string) {
			r.emit(Event{Type: EventLog, Host: h, Phase: PhaseRollback, Message: line})
		})
		if err != nil {
			hr.Result, hr.Phase, hr.Err = ResultFailed, PhaseRollback, fmt.Errorf("rolling back to generation %d: %w", hr.Previous, err)
			r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseRollback, State: "failed", Error: hr.Err.Error()})
			r.emit(Event{Type: EventResult, Host: h, Result: ResultFailed, Phase: PhaseRollback, Error: hr.Err.Error()})
			return
		}
		hr.Result, hr.Phase = ResultRolledBack, PhaseRollback
		r.emit(Event{Type: EventPhase, Host: h, Phase: PhaseRollback, State: "done", Generation: hr.Previous})
		r.emit(Event{Type: EventResult, Host: h, Result: ResultRolledBack, Phase: PhaseRollback, Generation: hr.Previous})
	})
	for _, h := range left {
		hr := rep.Hosts[h]
		hr.Result, hr.Phase, hr.Err = ResultFailed, PhaseRollback, fmt.Errorf("not rolled back to generation %d: %w", hr.Previous, ctx.Err())
		r.emit(Event{Type: EventResult, Host: h, Result: ResultFailed, Phase: PhaseRollback, Error: hr.Err.Error()})
	}
}
