package activation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/declarative/deploy/agentapi"
)

// The watchdog keeps the rollback decision alive when the worker dies.
//
// The worker arms it (Worker.Watchdog) after recording the activation in
// state.json and before changing anything. It is a process of its own (on
// systemd, a transient unit that systemd restarts whenever it dies), which
// runs [Worker.Watch]: it waits for the activation's lock. A worker that
// ends normally writes its result before it releases the lock, and the
// watchdog then simply exits. A worker that dies (OOM killer, kill -9, its
// unit stopped) releases the lock without a result: the watchdog kills
// what is left of the worker, takes the lock and finishes the activation
// from what state.json says:
//
//   - awaiting confirmation: it waits for the confirmation until the
//     recorded deadline, then finishes (the boot default moves) or rolls
//     back, exactly as the worker would have;
//   - starting, applying, checking or rolling back: the activation cannot
//     have been confirmed as a whole, so it rolls back to the previous
//     generation at once (mode boot changed nothing: it marks the
//     generation failed).
//
// A worker that hangs (stopped, frozen: its heartbeat, see heartbeat.go,
// stands still for [hungAfter] while it holds the lock) is killed first:
// every process of its unit with SIGKILL, and the watchdog confirms they
// are gone (the unit stopped, the worker's process gone, and then the
// lock, which only the worker's own descriptor held, taken). Only then
// does it take over as above, so that two actors never apply at once.
//
// A reboot ends the watchdog too; then the boot unit re-applies the boot
// default, which moves only after a confirmation.

// watchPoll is how often the watchdog looks at the lock.
var watchPoll = 200 * time.Millisecond

// Watch is the watchdog of activation id (see above). It returns once the
// activation has a result: nil when there was nothing to do or the
// takeover ended in a result, an error when it could not act.
func (w *Worker) Watch(ctx context.Context, id string) error {
	l := w.Layout
	var lock *Lock
	var beat heartbeatWatch
	how := "died"
	for {
		if res, _ := l.ReadResult(id); res != nil {
			return nil // the worker finished
		}
		var err error
		lock, err = l.TryLock(Holder{PID: os.Getpid(), User: "watchdog", Started: time.Now().UTC(), Activation: id})
		var lh *LockHeldError
		if err == nil {
			break
		}
		if !errors.As(err, &lh) {
			return err
		}
		if lh.Holder != nil && lh.Holder.Activation == id && lh.Holder.User != "watchdog" {
			// Our worker holds the lock: is it still making progress?
			if stale := beat.stale(l, id); stale > hungAfter {
				how = fmt.Sprintf("hung (no heartbeat for %v)", stale.Round(time.Second))
				if err := w.killHung(id, lh.Holder.PID, how); err != nil {
					w.logf("watchdog: %v; trying again", err)
					beat = heartbeatWatch{} // another full bound before the next try
				}
			}
		}
		if lh.Holder != nil && lh.Holder.Activation != id && lh.Holder.Activation != "" {
			// Another activation (or gc) holds the lock: ours ended,
			// whether or not it left a result, and another run has moved
			// on since.
			if st, err := l.ReadState(); err == nil && (st.Activation == nil || st.Activation.ID != id) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(watchPoll):
		}
	}
	defer lock.Unlock()
	if res, _ := l.ReadResult(id); res != nil {
		return nil
	}
	st, err := l.ReadState()
	if err != nil {
		return err
	}
	if act := st.Activation; act == nil || act.ID != id {
		// The worker died after arming the watchdog and before recording
		// the activation: nothing was changed.
		msg := fmt.Sprintf("the activation worker of %s died before it changed anything", id)
		w.logf("watchdog: %s", msg)
		if err := l.writeResult(&Result{V: agentapi.Version, ID: id, Outcome: OutcomeFailed, Message: msg, Log: l.LogFile(id)}); err != nil {
			return err
		}
		os.Remove(l.requestFile(id))
		return nil
	}
	return w.takeOver(ctx, st, true, how)
}

// killHung kills activation id's hung worker (main process pid) and every
// process of its unit, and confirms they are gone; the watchdog takes the
// lock next.
func (w *Worker) killHung(id string, pid int, how string) error {
	phase := "unknown"
	if st, err := w.Layout.ReadState(); err == nil && st.Activation != nil && st.Activation.ID == id {
		phase = string(st.Activation.Phase)
	}
	w.logf("watchdog: the worker of activation %s (pid %d) %s in phase %s: killing it", id, pid, how, phase)
	if w.StopWorker == nil {
		return errors.New("no way to stop the worker")
	}
	if err := w.StopWorker(id, pid); err != nil {
		return fmt.Errorf("killing the hung worker: %w", err)
	}
	return nil
}

// takeOver finishes the activation recorded in st, whose worker died
// without a result or hung and was killed (how says which, for the log
// and the result); the caller holds the lock. With wait, an activation
// that awaits confirmation is given until its deadline; without (a new
// activation is starting), it is finished at once: confirmed if the
// confirmation is there, else rolled back.
func (w *Worker) takeOver(ctx context.Context, st *State, wait bool, how string) error {
	l := w.Layout
	act := st.Activation
	id := act.ID
	res := &Result{V: agentapi.Version, ID: id, Generation: act.Generation, Log: l.LogFile(id), Warnings: act.Warnings}
	defer func() {
		if err := l.writeResult(res); err != nil {
			w.logf("watchdog: recording the result: %v", err)
		}
		os.Remove(l.requestFile(id))
		os.Remove(l.heartbeatFile(id)) // a killed worker left it
	}()
	if act.Phase.Final() {
		// The worker recorded the end but died before the result.
		res.Outcome, res.Message = act.Phase, act.Message
		return nil
	}
	w.logf("watchdog: the worker of activation %s %s (phase %s): taking over", id, how, act.Phase)
	if w.StopWorker != nil {
		if err := w.StopWorker(id, act.PID); err != nil {
			w.logf("watchdog: stopping what is left of the worker: %v", err)
		}
	}
	act.PID = os.Getpid()
	req, err := l.ReadRequest(id)
	if err != nil {
		// The request is removed only after the result is written; rebuild
		// what finishing needs from the state.
		req = &Request{ID: id, System: act.System, Mode: act.Mode, TokenHash: act.TokenHash}
		if !act.Deadline.IsZero() {
			req.ConfirmTimeout = time.Until(act.Deadline)
		}
	}
	prevSystem := ""
	if act.Previous > 0 {
		g, err := l.Generation(act.Previous)
		if err != nil {
			res.Outcome, res.Message = OutcomeFailed, fmt.Sprintf("the worker %s and generation %d to roll back to is gone: %v", how, act.Previous, err)
			w.setPhase(st, PhaseFailed, res.Message)
			return errors.New(res.Message)
		}
		prevSystem = g.System
	}
	switch {
	case act.Phase == PhaseAwaiting:
		if !wait && time.Now().Before(act.Deadline) {
			act.Deadline = time.Now() // a new activation supersedes it
		}
		w.logf("watchdog: awaiting confirmation until %s", act.Deadline.Format(time.RFC3339))
		w.conclude(ctx, req, res, st, prevSystem)
	case act.Mode == ModeBoot:
		cause := fmt.Sprintf("the activation worker %s (phase %s) before confirmation", how, act.Phase)
		l.markFailed(act.Generation, cause, time.Now())
		res.Outcome, res.Message = OutcomeRolledBack, fmt.Sprintf("generation %d: %s; the boot default stays", act.Generation, cause)
		w.setPhase(st, PhaseRolledBack, res.Message)
		w.logf("watchdog: %s", res.Message)
	default:
		w.rollback(ctx, res, st, prevSystem, fmt.Errorf("the activation worker %s (phase %s) before confirmation", how, act.Phase))
	}
	return nil
}
