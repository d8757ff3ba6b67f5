package activation

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/internal/procid"
)

// The run lock is held by an operator's whole run (a deploy, a rollback, a
// gc) over every host it selected, from before its first copy to its end,
// so that two runs over overlapping hosts never interleave. Unlike the
// activation lock it is held by no activation on the host: a `deploy-agent
// run-lock` process holds it for the operator, in an SSH session the
// operator keeps open, until the operator releases it, the session ends,
// or the operator falls silent for the lease. A run that crashed therefore
// never leaves a lock that needs a person: its session ends and the next
// run takes the lock over, saying whose it was.

// RunLockFile is the run lock (flock); RunHolderFile records its holder.
func (l Layout) RunLockFile() string { return filepath.Join(l.withDefaults().RunDir, "run.lock") }

// RunHolderFile records the run holding (or last holding, when it ended
// without releasing) the run lock.
func (l Layout) RunHolderFile() string {
	return filepath.Join(l.withDefaults().RunDir, "run.holder")
}

// runHolderRecord is the run holder file: the run and the run-lock
// process that holds the lock for it.
type runHolderRecord struct {
	Holder agentapi.RunHolder `json:"holder"`
	PID    int                `json:"pid"`
	// Start is the process's start time (clock ticks since boot; 0 in a
	// record of an older agent): the process is signalled only while its
	// PID still names it.
	Start uint64 `json:"pid_start,omitempty"`
}

// RunLockOptions tunes [Layout.HoldRunLock].
type RunLockOptions struct {
	// Wait is how long to wait for a held lock (0: answer at once).
	Wait time.Duration
	// Lease is how long the operator may stay silent (no line on its
	// stream) before the lock is given up as abandoned (default 60s).
	Lease time.Duration
	// Logf receives what happens (may be nil).
	Logf func(format string, args ...any)
	// Drift, if set, is asked once the lock is taken, and its answer goes
	// into the reply (a deploy's look at drift, in the same request).
	Drift func() (*agentapi.Drift, error)
	// Systems, if set, is asked once the lock is taken for the host's
	// current and boot-default systems, which go into the reply.
	Systems func() (current, bootDefault string)
}

// HoldRunLock serves one run lock request: it reads the holder (one JSON
// line of [agentapi.RunHolder]) from in, takes the lock (waiting up to
// opts.Wait), writes its [agentapi.LockReply] to out, and, if it got the
// lock, holds it until in says "release", ends, or stays silent for the
// lease. Lines "ping" keep the lease. A held lock is reported, not waited
// for, unless opts.Wait: the reply then names the holder and HoldRunLock
// returns a *[RunLockHeldError].
//
// A lock whose previous holder ended without releasing it is taken over;
// the reply says whose it was. A request from the run that already holds
// the lock (its connection dropped and it came back) replaces the old
// holding process; so does a request whose TakeOver names the run holding
// the lock (the operator found that run's process ended on its own
// machine, see [agentapi.RunHolder.TakeOver]).
func (l Layout) HoldRunLock(ctx context.Context, in io.Reader, out io.Writer, opts RunLockOptions) error {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if opts.Lease <= 0 {
		opts.Lease = time.Minute
	}
	br := bufio.NewReader(in)
	me, err := agentapi.ReadRunHolder(br)
	if err != nil {
		return err
	}
	if err := l.Init(); err != nil {
		return err
	}
	f, err := os.OpenFile(l.RunLockFile(), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("run lock: %w", err)
	}
	defer f.Close()
	reply := func(r *agentapi.LockReply) error { return agentapi.WriteLockReply(out, r) }
	// A status query takes the lock for an instant to see whether it is
	// free: retry briefly before calling it held.
	deadline := time.Now().Add(max(opts.Wait, 300*time.Millisecond))
	replaced := false
	var kept *agentapi.RunLease
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			// Free, unless a run that rebooted the host keeps it with a
			// lease (LeaseRunLock) that has not expired.
			kept = l.readRunLease()
			if !kept.Blocks(me, time.Now()) {
				break
			}
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			if time.Now().After(deadline) {
				if err := reply(&agentapi.LockReply{Locked: false, Holder: &kept.Holder}); err != nil {
					return err
				}
				return &RunLockHeldError{Holder: &kept.Holder, Lease: kept}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("run lock: %w", ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("run lock %q: %w", l.RunLockFile(), err)
		}
		held := l.readRunHolder()
		if held != nil && !replaced && (held.Holder.Run == me.Run || held.Holder.Run == me.TakeOver) {
			if held.Holder.Run == me.Run {
				// Our own run, back after its connection dropped: the
				// old process may not have noticed yet.
				logf("run %s is back: ending its previous run-lock process %d", me.Run, held.PID)
			} else {
				// Its operator's process ended, says a run on the same
				// machine; this side may not have noticed for a while
				// (a connection cut off ends with no word).
				logf("run %s says the process of run %s on its machine ended: ending that run's run-lock process %d", me.Run, held.Holder.Run, held.PID)
			}
			if held.PID > 0 && held.PID != os.Getpid() && procid.Running(held.PID, held.Start) {
				syscall.Kill(held.PID, syscall.SIGTERM)
			}
			replaced = true
			deadline = time.Now().Add(max(opts.Wait, 5*time.Second))
		} else if time.Now().After(deadline) {
			var h *agentapi.RunHolder
			if held != nil {
				h = &held.Holder
			}
			if err := reply(&agentapi.LockReply{Locked: false, Holder: h}); err != nil {
				return err
			}
			return &RunLockHeldError{Holder: h}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("run lock: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Ours. A holder record left behind is a run that ended without
	// releasing the lock.
	var tookOver *agentapi.RunHolder
	if prev := l.readRunHolder(); prev != nil && prev.Holder.Run != me.Run {
		tookOver = &prev.Holder
		logf("taking over the run lock of %s: its run ended without releasing it", prev.Holder.String())
	}
	if kept != nil {
		if kept.Holder.Run == me.Run {
			logf("run %s takes its run lock again after the reboot it ordered", me.Run)
		} else if tookOver == nil {
			tookOver = &kept.Holder
			logf("taking over the run lock of %s: its lease across a reboot expired (%s) or its run ended", kept.Holder.String(), kept.Expires.Format(time.RFC3339))
		}
		if err := l.removeRunLease(); err != nil {
			return err
		}
	}
	rec := &runHolderRecord{Holder: *me, PID: os.Getpid()}
	rec.Holder.TakeOver = ""
	if self, err := procid.Self(); err == nil {
		rec.Start = self.Start
	}
	data, _ := json.Marshal(rec)
	if err := atomicfile.Write(l.RunHolderFile(), data, 0o600); err != nil {
		return err
	}
	r := &agentapi.LockReply{Locked: true, TookOver: tookOver}
	if opts.Systems != nil {
		cur, boot := opts.Systems()
		r.Running = &agentapi.RunningSystems{Current: cur, BootDefault: boot}
	}
	if opts.Drift != nil {
		if d, err := opts.Drift(); err != nil {
			r.DriftError = err.Error()
		} else {
			r.Drift = d
		}
	}
	if err := reply(r); err != nil {
		return err
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		for {
			s, err := agentapi.ReadLockRequest(br)
			if err != nil {
				return
			}
			lines <- s
		}
	}()
	lease := time.NewTimer(opts.Lease)
	defer lease.Stop()
	for {
		select {
		case s, ok := <-lines:
			if !ok {
				logf("run %s ended without releasing the run lock (its connection closed); giving it up", me.Run)
				return nil
			}
			switch s {
			case agentapi.LockRelease:
				os.Remove(l.RunHolderFile())
				if ls := l.readRunLease(); ls != nil && ls.Holder.Run == me.Run {
					l.removeRunLease()
				}
				return nil
			case agentapi.LockPing, "":
				lease.Reset(opts.Lease)
			default:
				logf("run lock: unknown request %q", s)
			}
		case <-lease.C:
			logf("run %s was silent for %v; giving up its run lock", me.Run, opts.Lease)
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// RunLockHeldError is a run lock held by another run.
type RunLockHeldError struct {
	Holder *agentapi.RunHolder // nil when the holder did not record itself
	// Lease is set when the holder keeps the lock across a reboot.
	Lease *agentapi.RunLease
}

func (e *RunLockHeldError) Error() string {
	if e.Lease != nil {
		return fmt.Sprintf("the run lock is kept across a reboot (until %s) by %s", e.Lease.Expires.Format(time.RFC3339), e.Holder.String())
	}
	return "the run lock is held by " + e.Holder.String()
}

func (l Layout) runLeaseFile() string { return agentapi.RunLeaseFile(l.withDefaults().StateDir) }

// readRunLease reads the run lock's lease across a reboot; nil when none.
func (l Layout) readRunLease() *agentapi.RunLease {
	r := &agentapi.RunLease{}
	if ok, err := readJSON(l.runLeaseFile(), r); !ok || err != nil || r.Holder.Run == "" {
		return nil
	}
	return r
}

func (l Layout) removeRunLease() error {
	if err := os.Remove(l.runLeaseFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(l.runLeaseFile()))
}

// LeaseRunLock keeps the run lock that run holds across the reboot it is
// about to order: a lease in the state directory (which a boot does not
// empty, unlike the run directory where the lock lives), written durably,
// that [Layout.HoldRunLock] honours after the boot: the lock is run's
// until it takes it again, its TakeOver names it, or d has passed.
func (l Layout) LeaseRunLock(run string, d time.Duration) error {
	held := l.flockHolder()
	if held == nil || held.Run != run {
		return fmt.Errorf("run %q does not hold the run lock (held by %s)", run, held.String())
	}
	rec := l.readRunHolder()
	if rec == nil {
		return fmt.Errorf("run %q: the run lock's holder is not recorded", run)
	}
	data, err := json.Marshal(&agentapi.RunLease{V: agentapi.Version, Holder: rec.Holder, Expires: time.Now().Add(d).UTC()})
	if err != nil {
		return err
	}
	return atomicfile.Write(l.runLeaseFile(), append(data, '\n'), 0o600)
}

func (l Layout) readRunHolder() *runHolderRecord {
	data, err := os.ReadFile(l.RunHolderFile())
	if err != nil {
		return nil
	}
	r := &runHolderRecord{}
	if json.Unmarshal(data, r) != nil || r.Holder.Run == "" {
		return nil
	}
	return r
}

// RunLockHolder names the run holding the run lock (or keeping it across
// a reboot with a lease that has not expired), or nil when it is free.
func (l Layout) RunLockHolder() *agentapi.RunHolder {
	if h := l.flockHolder(); h != nil {
		return h
	}
	if lease := l.readRunLease(); lease != nil && time.Now().Before(lease.Expires) {
		return &lease.Holder
	}
	return nil
}

// flockHolder names the run whose process holds the run lock's flock.
func (l Layout) flockHolder() *agentapi.RunHolder {
	f, err := os.OpenFile(l.RunLockFile(), os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		return nil // free; closing f releases it
	}
	if r := l.readRunHolder(); r != nil {
		return &r.Holder
	}
	return &agentapi.RunHolder{}
}
