package activation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/manifest"
)

// Modes of an activation.
const (
	ModeSwitch      = "switch"       // apply now, make it the boot default once confirmed
	ModeBoot        = "boot"         // make it the boot default once confirmed; apply nothing now
	ModeTest        = "test"         // apply now; the boot default stays
	ModeDryActivate = "dry-activate" // print what would change
)

// Outcomes of an activation, also its final phase (see [agentapi.Outcome]).
const (
	OutcomeDone       = agentapi.OutcomeDone
	OutcomeRolledBack = agentapi.OutcomeRolledBack
	OutcomeFailed     = agentapi.OutcomeFailed
	OutcomeLockHeld   = agentapi.OutcomeLockHeld
	OutcomeDry        = agentapi.OutcomeDry
	OutcomeAwaiting   = agentapi.OutcomeAwaiting
)

// Request is one activation, as handed from the front process (the SSH
// session) to the detached worker in RunDir/requests/ID.json.
type Request struct {
	ID     string `json:"id"`
	System string `json:"system"`
	Mode   string `json:"mode"`
	// Generation, when non-zero, re-activates that existing generation
	// (rollback) instead of creating one.
	Generation int `json:"generation,omitempty"`
	// ConfirmTimeout is how long to wait for confirmation; 0 needs none.
	ConfirmTimeout time.Duration     `json:"confirm_timeout"`
	TokenHash      string            `json:"token_hash,omitempty"`
	Meta           map[string]string `json:"meta,omitempty"`
	User           string            `json:"user,omitempty"`
	Force          bool              `json:"force,omitempty"`
	// BootAttempts and BootTimeout set the trial of a boot-mode
	// activation (see boottrial.go; 0: the defaults).
	BootAttempts int           `json:"boot_attempts,omitempty"`
	BootTimeout  time.Duration `json:"boot_timeout,omitempty"`
	Created      time.Time     `json:"created"`
}

// Result is how an activation ended: log/activate-ID.result.json, and the
// last line the front prints.
type Result = agentapi.Result

// LogFile returns activation id's log file.
func (l Layout) LogFile(id string) string {
	return filepath.Join(l.LogDir(), "activate-"+id+".log")
}

// ResultFile returns activation id's result file.
func (l Layout) ResultFile(id string) string {
	return filepath.Join(l.LogDir(), "activate-"+id+".result.json")
}

func (l Layout) requestFile(id string) string { return filepath.Join(l.requestDir(), id+".json") }

// WriteRequest stores r for its worker.
func (l Layout) WriteRequest(r *Request) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.Write(l.requestFile(r.ID), data, 0o600)
}

// ReadRequest reads the request of activation id.
func (l Layout) ReadRequest(id string) (*Request, error) {
	data, err := os.ReadFile(l.requestFile(id))
	if err != nil {
		return nil, fmt.Errorf("activation request: %w", err)
	}
	r := &Request{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("activation request %q: %w", l.requestFile(id), err)
	}
	return r, nil
}

// ReadResult reads activation id's result; nil while it runs.
func (l Layout) ReadResult(id string) (*Result, error) {
	data, err := os.ReadFile(l.ResultFile(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("activation result: %w", err)
	}
	r := &Result{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("activation result %q: %w", l.ResultFile(id), err)
	}
	return r, nil
}

func (l Layout) writeResult(r *Result) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	// The metrics file first: whoever waits for the result file (the
	// front, deploy-agent confirm) then finds the metrics up to date. It
	// is a view: failing to write it fails nothing, and the reason goes to
	// the activation's log.
	if err := l.recordResult(r); err != nil {
		if f, ferr := os.OpenFile(l.LogFile(r.ID), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); ferr == nil {
			fmt.Fprintf(f, "recording the result in the metrics file: %v\n", err)
			f.Close()
		}
	}
	return atomicfile.Write(l.ResultFile(r.ID), append(data, '\n'), 0o600)
}

// Worker runs activations on the target. Its zero value uses the default
// layout.
type Worker struct {
	Layout Layout
	// Logf receives progress; the agent writes it to the activation log.
	Logf func(format string, args ...any)
	// Agent is the executable of this agent (for the record only).
	Agent string
	// UnitSettle is passed to [Options.UnitSettle].
	UnitSettle time.Duration
	// Watchdog, if set, arms the watchdog of activation id before the
	// activation changes anything: a process outside this one (a
	// transient systemd unit, restarted if it dies) that runs [Worker.Watch].
	// An error fails the activation before any change.
	Watchdog func(id string) error
	// StopWorker, if set, is called by [Worker.Watch] when the worker of
	// activation id (process pid) died, before taking over: it kills
	// whatever is left of the worker (the processes of its unit).
	StopWorker func(id string, pid int) error
	// Stopping reports whether the host is shutting down (default:
	// systemctl is-system-running says "stopping").
	Stopping func() bool
}

func (w *Worker) logf(format string, args ...any) {
	if w.Logf != nil {
		w.Logf(format, args...)
	}
}

func (w *Worker) store() *closure.Store {
	return closure.NewTargetStore(w.Layout.withDefaults().StateDir)
}

// Run carries out req under the activation lock and returns (and records)
// its result. It never returns a nil Result.
func (w *Worker) Run(ctx context.Context, req *Request) *Result {
	l := w.Layout
	res := &Result{V: agentapi.Version, ID: req.ID, Log: l.LogFile(req.ID)}
	started := time.Now()
	holder := Holder{PID: os.Getpid(), User: req.User, Started: started.UTC(), GitRev: req.Meta["git_rev"], Activation: req.ID, System: req.System}
	lock, err := l.TryLock(holder)
	var lh *LockHeldError
	// CheckLock (a front process or status) holds the lock for an instant;
	// a real holder holds it for the whole activation. Retry briefly.
	for i := 0; i < 5 && errors.As(err, &lh); i++ {
		time.Sleep(100 * time.Millisecond)
		lock, err = l.TryLock(holder)
	}
	if errors.As(err, &lh) {
		res.Outcome, res.Message, res.Holder = OutcomeLockHeld, lh.Error(), lh.Holder
		w.logf("%s", lh.Error())
		l.writeResult(res)
		return res
	}
	if err != nil {
		return w.finish(res, OutcomeFailed, err.Error())
	}
	defer lock.Unlock()
	// Beat until the result is written (see heartbeat.go); stopped before
	// the lock is released.
	defer l.startHeartbeat(req.ID, w.Logf)()
	// An earlier activation whose worker died, and whose watchdog has not
	// finished it yet (it waits for this lock too): finish it first, so
	// that this one starts from a generation that ran as a whole.
	if st, err := l.ReadState(); err == nil && st.Activation != nil && st.Activation.ID != req.ID && st.Activation.Phase.InProgress() {
		if r, _ := l.ReadResult(st.Activation.ID); r == nil {
			w.logf("activation %s (generation %d) was interrupted in phase %s: finishing it first", st.Activation.ID, st.Activation.Generation, st.Activation.Phase)
			if err := w.takeOver(ctx, st, false, "died"); err != nil {
				return w.finish(res, OutcomeFailed, fmt.Sprintf("finishing the interrupted activation %s: %v", st.Activation.ID, err))
			}
		}
	}
	os.Remove(l.confirmFile(req.ID))
	os.Remove(l.rejectFile(req.ID))
	w.run(ctx, req, res, started)
	if err := l.writeResult(res); err != nil {
		w.logf("recording the result: %v", err)
	}
	return res
}

func (w *Worker) finish(res *Result, outcome agentapi.Outcome, msg string) *Result {
	res.Outcome, res.Message = outcome, msg
	w.logf("%s: %s", outcome, msg)
	w.Layout.writeResult(res)
	return res
}

func (w *Worker) run(ctx context.Context, req *Request, res *Result, started time.Time) {
	l := w.Layout
	set := func(outcome agentapi.Outcome, msg string) { res.Outcome, res.Message = outcome, msg }
	store := w.store()
	if ok, err := store.Valid(req.System); err != nil || !ok {
		set(OutcomeFailed, fmt.Sprintf("system %q is not a valid store path on this host (copy it first)", req.System))
		w.logf("%s", res.Message)
		return
	}
	next, err := ReadManifest(req.System, store.RealPath)
	if err != nil {
		set(OutcomeFailed, err.Error())
		w.logf("%s", res.Message)
		return
	}
	st, err := l.ReadState()
	if err != nil {
		set(OutcomeFailed, err.Error())
		return
	}
	prevGen, prevSystem := 0, ""
	if cur, _ := l.CurrentGeneration(); cur > 0 {
		prevGen, prevSystem = cur, st.CurrentSystem
	}
	machine, err := l.MachineManifest(store.RealPath)
	if err != nil {
		set(OutcomeFailed, err.Error())
		return
	}
	if req.Mode == ModeDryActivate {
		d := manifest.Diff(machine, next)
		pw := &lineWriter{logf: w.logf}
		d.Write(pw)
		pw.flush()
		set(OutcomeDry, "nothing changed")
		return
	}
	if req.Generation > 0 {
		if err := l.CheckCompatible(req.Generation); err != nil {
			set(OutcomeFailed, err.Error())
			w.logf("%s", res.Message)
			return
		}
	}
	// A revoked secret version is refused before anything changes (Apply
	// decides the same again, for every other way in).
	if _, err := l.planSecrets(machine, next, req.Generation, store.RealPath); err != nil {
		set(OutcomeFailed, fmt.Sprintf("%v; nothing was changed", err))
		w.logf("%s", res.Message)
		return
	}

	// The watchdog is armed before anything changes: from here on, if
	// this process dies (OOM killer, kill -9, its unit stopped), the
	// watchdog finishes the activation: it returns the host to its
	// previous generation unless the activation was confirmed (see Watch).
	if w.Watchdog != nil {
		if err := w.Watchdog(req.ID); err != nil {
			set(OutcomeFailed, fmt.Sprintf("cannot arm the activation's watchdog, so nothing was changed: %v", err))
			w.logf("%s", res.Message)
			return
		}
	}
	// The generation's number is recorded with the activation before the
	// generation is created, so that whoever finishes an interrupted
	// activation knows which generation to mark failed.
	n, exists := req.Generation, req.Generation > 0
	if !exists {
		if n, exists, err = l.planGeneration(req.System); err != nil {
			set(OutcomeFailed, err.Error())
			return
		}
	}
	res.Generation = n
	act := &ActivationState{Activation: agentapi.Activation{ID: req.ID, Generation: n, System: req.System,
		Mode: req.Mode, Previous: prevGen, Phase: PhaseStarting, PID: os.Getpid(), User: req.User, Started: started.UTC(),
		GitRev: req.Meta["git_rev"], Log: l.LogFile(req.ID)}, TokenHash: req.TokenHash}
	st.Activation = act
	w.setPhase(st, PhaseStarting, "")
	var gen *Generation
	if exists {
		gen, err = l.Generation(n)
	} else {
		gen, err = l.createGeneration(n, req.System, req.Meta, started)
	}
	if err != nil {
		set(OutcomeFailed, err.Error())
		w.setPhase(st, PhaseFailed, res.Message)
		return
	}
	w.logf("activating generation %d (%s, mode %s; running: generation %d)", gen.Number, req.System, req.Mode, prevGen)
	// A generation holds the system now: it needs no pushed root.
	if err := store.Unpin(req.System); err != nil {
		w.logf("removing the pushed root of %s: %v", req.System, err)
	}
	if err := w.installBootUnit(); err != nil {
		w.logf("installing the boot unit: %v", err)
	}

	if req.Mode != ModeBoot {
		// Switch the running system, then apply it.
		w.setPhase(st, PhaseApplying, "")
		if err := l.setCurrent(req.System); err != nil {
			w.rollback(ctx, res, st, prevSystem, err)
			return
		}
		st.Current, st.CurrentSystem = gen.Number, req.System
		w.setPhase(st, PhaseApplying, "")
		warnf := func(format string, args ...any) {
			msg := fmt.Sprintf(format, args...)
			act.Warnings = append(act.Warnings, msg)
			res.Warnings = append(res.Warnings, msg)
		}
		err := Apply(ctx, machine, next, Options{Layout: l, System: req.System, Generation: gen.Number,
			RealPath: store.RealPath, Force: req.Force, UnitSettle: w.UnitSettle, Logf: w.Logf, Warnf: warnf})
		gates := HostGates(next.MetricGates, req.ConfirmTimeout == 0)
		if err == nil && len(next.HealthChecks)+len(gates) > 0 {
			w.setPhase(st, PhaseChecking, "")
			err = w.checkHealth(ctx, gen.Number, next.HealthChecks, gates...)
		}
		if err != nil {
			w.logf("activation of generation %d failed: %v", gen.Number, err)
			w.rollback(ctx, res, st, prevSystem, err)
			return
		}
		w.logf("generation %d applied", gen.Number)
	}
	if req.ConfirmTimeout > 0 {
		act.Deadline = time.Now().Add(req.ConfirmTimeout).UTC()
		w.setPhase(st, PhaseAwaiting, "")
		w.logf("awaiting confirmation until %s", act.Deadline.Format(time.RFC3339))
	}
	w.conclude(ctx, req, res, st, prevSystem)
}

// checkHealth runs generation gen's health checks, then its metric gates
// (those the host evaluates), and records the run in the metrics file.
func (w *Worker) checkHealth(ctx context.Context, gen int, checks []manifest.HealthCheck, gates ...manifest.MetricGate) error {
	err := CheckHealth(ctx, checks, w.Logf)
	if err == nil {
		err = CheckGates(ctx, gates, w.Logf)
	}
	// The checks that ran: all, or those up to the first that failed
	// (CheckHealth and CheckGates stop there).
	var names, failing []string
	he := (*HealthError)(nil)
	errors.As(err, &he)
	all := make([]string, 0, len(checks)+len(gates))
	for _, c := range checks {
		all = append(all, c.Name)
	}
	for _, g := range gates {
		all = append(all, g.Name)
	}
	for _, name := range all {
		names = append(names, name)
		if he != nil && name == he.Check {
			failing = []string{he.Check}
			break
		}
	}
	if merr := w.Layout.recordChecks(gen, names, failing); merr != nil {
		w.logf("recording the checks in the metrics file: %v", merr)
	}
	return err
}

// setPhase records the activation's phase in state.json.
func (w *Worker) setPhase(st *State, p agentapi.Phase, msg string) {
	st.Activation.Phase, st.Activation.Message, st.Activation.Updated = p, msg, time.Now().UTC()
	if err := w.Layout.writeState(st); err != nil {
		w.logf("writing state: %v", err)
	}
}

// conclude waits for the confirmation of an applied activation (until its
// deadline, when it asks for one), then makes it the boot default (modes
// switch and boot), or rolls it back.
func (w *Worker) conclude(ctx context.Context, req *Request, res *Result, st *State, prevSystem string) {
	l := w.Layout
	act := st.Activation
	gen := act.Generation
	set := func(outcome agentapi.Outcome, msg string) { res.Outcome, res.Message = outcome, msg }
	if req.ConfirmTimeout > 0 {
		if ok, rej := l.waitConfirmed(ctx, req.ID, gen, req.TokenHash, act.Deadline); !ok {
			cause := fmt.Errorf("not confirmed within %v", req.ConfirmTimeout)
			if ctx.Err() != nil {
				cause = fmt.Errorf("interrupted before confirmation: %w", ctx.Err())
			}
			if rej != nil {
				cause, res.Check = rej, rej.Check
				if rej.Check != "" {
					if err := l.recordChecks(gen, []string{rej.Check}, []string{rej.Check}); err != nil {
						w.logf("recording the checks in the metrics file: %v", err)
					}
				}
			}
			w.logf("%v", cause)
			if w.shutdownInterrupted(ctx, res, st) {
				return
			}
			if req.Mode == ModeBoot {
				l.markFailed(gen, cause.Error(), time.Now())
				set(OutcomeRolledBack, fmt.Sprintf("generation %d %v; the boot default stays", gen, cause))
				w.setPhase(st, PhaseRolledBack, res.Message)
				return
			}
			w.rollback(ctx, res, st, prevSystem, cause)
			return
		}
		w.logf("confirmed")
	}
	if err := l.markConfirmed(gen, time.Now()); err != nil {
		w.logf("recording the confirmation: %v", err)
	}
	if req.Mode == ModeBoot {
		// A trial until a boot of it confirms: recorded before the boot
		// default moves (see boottrial.go).
		if err := w.armTrial(ctx, gen, act.System, req); err != nil {
			set(OutcomeFailed, fmt.Sprintf("generation %d could not be armed as a trial, so it is not the boot default: %v", gen, err))
			w.setPhase(st, PhaseFailed, res.Message)
			return
		}
	}
	if req.Mode == ModeSwitch || req.Mode == ModeBoot {
		if err := l.setBootDefault(gen); err != nil {
			set(OutcomeFailed, fmt.Sprintf("generation %d runs but could not become the boot default: %v", gen, err))
			w.setPhase(st, PhaseFailed, res.Message)
			return
		}
		w.logf("generation %d is the boot default", gen)
	}
	if req.Mode == ModeSwitch {
		// The boot default runs: no trial is pending any more.
		if err := l.clearTrial(); err != nil {
			w.logf("dropping the boot trial: %v", err)
		}
	}
	set(OutcomeDone, fmt.Sprintf("generation %d activated", gen))
	w.setPhase(st, PhaseDone, res.Message)
	w.logf("%s", res.Message)
}

// rollback re-applies the previous generation (st.Activation.Previous,
// whose system is prevSystem) with that generation's own agent (or, when
// there is none, removes what the failed one installed), marks the
// activation's generation failed and sets the outcome.
func (w *Worker) rollback(ctx context.Context, res *Result, st *State, prevSystem string, cause error) {
	if w.shutdownInterrupted(ctx, res, st) {
		return
	}
	l := w.Layout
	gen, prevGen := st.Activation.Generation, st.Activation.Previous
	// A rollback must finish even when the activation was cancelled.
	ctx = context.WithoutCancel(ctx)
	st.Activation.RollbackBegun = true
	w.setPhase(st, PhaseRollingBack, cause.Error())
	var he *HealthError
	var rej *RejectedError
	switch {
	case errors.As(cause, &he):
		res.Check = he.Check
	case errors.As(cause, &rej):
		res.Check = rej.Check
	}
	var err error
	if gen != prevGen {
		// (A re-activation of the running generation that failed leaves
		// that generation as it was: it is re-applied, not failed.)
		if err = l.markFailed(gen, cause.Error(), time.Now()); err != nil {
			w.logf("marking generation %d failed: %v", gen, err)
		}
	}
	if prevGen > 0 {
		w.logf("rolling back to generation %d with its own agent", prevGen)
		err = w.runAgentApply(ctx, prevSystem, prevGen)
		if err == nil {
			st.Current, st.CurrentSystem = prevGen, prevSystem
		}
	} else {
		w.logf("no previous generation: removing what generation %d installed", gen)
		err = w.removeAll(ctx, gen)
		if err == nil {
			st.Current, st.CurrentSystem = 0, ""
		}
	}
	if err != nil {
		res.Outcome, res.Message = OutcomeFailed, fmt.Sprintf("generation %d failed (%v) and the rollback failed too: %v", gen, cause, err)
	} else {
		res.Outcome, res.Message = OutcomeRolledBack, fmt.Sprintf("generation %d failed (%v); rolled back to generation %d", gen, cause, prevGen)
		w.checkAfterRollback(ctx, res, st, prevGen, prevSystem)
	}
	w.setPhase(st, res.Outcome, res.Message)
	w.logf("%s", res.Message)
}

// shutdownInterrupted ends an activation cancelled because the host is
// shutting down (systemd stops every unit, the worker's too): a rollback
// now would race the shutdown, and the next boot's boot unit re-applies
// the boot default, which moves only after a confirmation. So the
// generation (unless it already ran before) is marked failed as the boot
// unit would mark it, nothing else changes, and the outcome says what
// happened: rolled back by the reboot to the boot default. It reports
// whether it ended the activation.
func (w *Worker) shutdownInterrupted(ctx context.Context, res *Result, st *State) bool {
	if ctx.Err() == nil || !w.stopping() {
		return false
	}
	l := w.Layout
	gen := st.Activation.Generation
	if gen != st.Activation.Previous {
		if err := l.markFailed(gen, "interrupted by a reboot or crash before confirmation", time.Now()); err != nil {
			w.logf("marking generation %d failed: %v", gen, err)
		}
	}
	boot, _ := l.BootGeneration()
	res.Outcome, res.Message = OutcomeRolledBack, fmt.Sprintf("generation %d: interrupted by a reboot of the host before it was confirmed; the host boots generation %d again", gen, boot)
	w.setPhase(st, PhaseRolledBack, res.Message)
	w.logf("%s", res.Message)
	return true
}

func (w *Worker) stopping() bool {
	if w.Stopping != nil {
		return w.Stopping()
	}
	out, _ := exec.Command("systemctl", "is-system-running").Output()
	return strings.TrimSpace(string(out)) == "stopping"
}

// checkAfterRollback runs the health checks of generation prevGen (system
// prevSystem), which a rollback just returned the host to, so that the
// metrics say how the host is now, not how the failed generation was. A
// check that fails is a warning of the result: the host runs prevGen
// again all the same. prevGen 0 (everything removed) has no checks.
func (w *Worker) checkAfterRollback(ctx context.Context, res *Result, st *State, prevGen int, prevSystem string) {
	var checks []manifest.HealthCheck
	if prevGen > 0 {
		m, err := ReadManifest(prevSystem, w.store().RealPath)
		if err != nil {
			w.logf("reading generation %d's health checks: %v", prevGen, err)
			return
		}
		checks = m.HealthChecks
	}
	if len(checks) > 0 {
		w.logf("running generation %d's health checks", prevGen)
	}
	if err := w.checkHealth(ctx, prevGen, checks); err != nil {
		msg := fmt.Sprintf("after the rollback, generation %d fails its health checks too: %v", prevGen, err)
		w.logf("%s", msg)
		res.Warnings = append(res.Warnings, msg)
		st.Activation.Warnings = append(st.Activation.Warnings, msg)
	}
}

// runAgentApply runs `<system>/agent/bin/deploy-agent apply --lock-held
// --generation N`: generation N re-applied by its own agent while this
// process holds the lock. Its output goes to the log.
func (w *Worker) runAgentApply(ctx context.Context, system string, gen int) error {
	l := w.Layout.withDefaults()
	exe := agentapi.SystemAgent(w.store().RealPath(system))
	cmd := exec.CommandContext(ctx, exe, agentapi.ApplyCmd{StateDir: l.StateDir, RunDir: l.RunDir, Generation: gen, LockHeld: true}.Args()...)
	lw := &lineWriter{logf: w.logf, prefix: "[generation " + fmt.Sprint(gen) + " agent] "}
	cmd.Stdout, cmd.Stderr = lw, lw
	err := cmd.Run()
	lw.flush()
	if err != nil {
		// The agent's last line says why (deploy-agent: ...).
		if why := strings.TrimPrefix(lw.last, "deploy-agent: "); why != lw.last {
			return fmt.Errorf("%s apply: %w: %s", exe, err, why)
		}
		return fmt.Errorf("%s apply: %w", exe, err)
	}
	return nil
}

// removeAll undoes a first activation: it applies an empty manifest.
func (w *Worker) removeAll(ctx context.Context, gen int) error {
	l := w.Layout
	store := w.store()
	machine, err := l.MachineManifest(store.RealPath)
	if err != nil {
		return err
	}
	empty := &manifest.Manifest{SchemaVersion: manifest.SchemaVersion}
	if err := Apply(ctx, machine, empty, Options{Layout: l, Logf: w.Logf, RealPath: store.RealPath}); err != nil {
		return err
	}
	return l.setCurrent("")
}

// ApplyGeneration applies generation n over whatever the machine has now
// and makes it the running system (no lock, no confirmation: the caller
// holds the lock). With boot set it is the boot-time variant (see
// [Options.Boot]). It is what `deploy-agent apply` and `deploy-agent boot`
// run.
func (w *Worker) ApplyGeneration(ctx context.Context, n int, boot bool) error {
	l := w.Layout
	g, err := l.Generation(n)
	if err != nil {
		return err
	}
	store := w.store()
	next, err := ReadManifest(g.System, store.RealPath)
	if err != nil {
		return err
	}
	machine, err := l.MachineManifest(store.RealPath)
	if err != nil {
		return err
	}
	// A revoked secret version without one to keep refuses the
	// generation before anything changes, the running-system link
	// included (Apply decides the same again).
	if _, err := l.planSecrets(machine, next, n, store.RealPath); err != nil {
		return &StepError{"secrets", err}
	}
	if err := l.setCurrent(g.System); err != nil {
		return err
	}
	err = Apply(ctx, machine, next, Options{Layout: l, System: g.System, Generation: n, RealPath: store.RealPath,
		Boot: boot, UnitSettle: w.UnitSettle, Logf: w.Logf})
	if err != nil {
		return err
	}
	st, err := l.ReadState()
	if err != nil {
		st = &State{}
	}
	st.Current, st.CurrentSystem = n, g.System
	if err := l.writeState(st); err != nil {
		return err
	}
	w.logf("generation %d applied", n)
	return nil
}

// Boot re-establishes the boot default after a reboot: it re-applies that
// generation completely (whatever an interrupted activation left), marks an
// unconfirmed generation that was being applied as failed, and records the
// running generation. It takes the lock.
func (w *Worker) Boot(ctx context.Context) error {
	l := w.Layout
	lock, err := l.TryLock(Holder{PID: os.Getpid(), User: "boot", Started: time.Now().UTC()})
	if err != nil {
		return err
	}
	defer lock.Unlock()
	// After a crash or a power loss, the store's interrupted commits are
	// settled before anything reads the store.
	if err := w.store().Recover(ctx); err != nil {
		w.logf("boot: recovering the store: %v", err)
	}
	n, err := l.BootGeneration()
	if err != nil || n == 0 {
		return err
	}
	if rec, err := l.readApplied(); err == nil && rec.Generation != 0 && rec.Generation != n {
		if g, err := l.Generation(rec.Generation); err == nil && g.Confirmed.IsZero() && !g.Failed {
			w.logf("generation %d was not confirmed before the reboot: marking it failed", rec.Generation)
			l.markFailed(rec.Generation, "interrupted by a reboot or crash before confirmation", time.Now())
		}
	}
	w.logf("boot: applying the boot default, generation %d", n)
	err = w.ApplyGeneration(ctx, n, true)
	// The textfile shows the generation that runs after the boot.
	if merr := l.WriteMetrics(); merr != nil {
		w.logf("boot: %v", merr)
	}
	return err
}

// BootUnitName is the unit that runs `deploy-agent boot` early at boot.
const BootUnitName = "deploy-boot.service"

// bootUnit is ordered before sysinit.target (and so before every service
// with default dependencies) and after local file systems are mounted, so
// the boot default's files, units and links are in place before systemd
// starts the services. It runs the boot default's own agent.
const bootUnit = `# Installed by deploy-agent. Re-applies the boot-default generation.
[Unit]
Description=deploy: re-apply the boot-default generation
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=sysinit.target shutdown.target
Conflicts=shutdown.target
ConditionPathExists=%[1]s/profiles/system

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%[1]s/profiles/system/agent/bin/deploy-agent boot --state-dir %[1]s --run-dir %[2]s
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
`

func (w *Worker) installBootUnit() error {
	l := w.Layout.withDefaults()
	if err := l.installUnit(BootUnitName, fmt.Sprintf(bootUnit, l.StateDir, l.RunDir), "sysinit.target"); err != nil {
		return err
	}
	// Boot counting's units: no-ops while no trial is pending.
	if err := l.installUnit(BootGuardUnitName, fmt.Sprintf(bootGuardUnit, l.StateDir, l.RunDir), "sysinit.target"); err != nil {
		return err
	}
	return l.installUnit(BootConfirmUnitName, fmt.Sprintf(bootConfirmUnit, l.StateDir, l.RunDir), "multi-user.target")
}

var _ io.Writer = (*lineWriter)(nil)

// ApplyGenerationLocked is [Worker.ApplyGeneration] under the activation
// lock, which it takes (failing at once with a *[LockHeldError] when
// another holds it) unless lockHeld says the caller holds it: what
// `deploy-agent apply` runs.
func (w *Worker) ApplyGenerationLocked(ctx context.Context, n int, lockHeld bool) error {
	if !lockHeld {
		lock, err := w.Layout.TryLock(Holder{PID: os.Getpid(), User: UserName(), Started: time.Now().UTC(), Activation: "apply"})
		if err != nil {
			return err
		}
		defer lock.Unlock()
		// An apply of its own changes the running generation: the
		// textfile says so (under a caller's lock, the caller's result
		// rewrites it).
		defer func() {
			if err := w.Layout.WriteMetrics(); err != nil {
				w.logf("%v", err)
			}
		}()
	}
	return w.ApplyGeneration(ctx, n, false)
}
