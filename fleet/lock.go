package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/internal/procid"
)

// The run lock keeps two runs that change overlapping hosts apart (see
// package agentclient for how a host holds it): a run takes it on every
// host it changes before it copies anything, and holds it to its end; a
// host whose lock another run holds makes the whole run stop at once,
// having changed nothing.

// runHolder describes this run for the run locks it takes.
func (s *Session) runHolder() *agentapi.RunHolder {
	var rnd [8]byte
	rand.Read(rnd[:])
	h := &agentapi.RunHolder{Run: hex.EncodeToString(rnd[:]), Command: s.Command, Hosts: s.names(), Started: time.Now().UTC()}
	if u, err := user.Current(); err == nil {
		h.Operator = u.Username
	}
	h.Machine, _ = os.Hostname()
	if p, err := procid.Self(); err == nil {
		h.Process = &agentapi.RunProcess{Space: p.Space, PID: p.PID, Start: p.Start}
	}
	if s.Fleet != nil {
		h.GitRev = gitRev(s.Fleet.Dir)
	}
	return h
}

// lockHosts takes the run lock on every host in names (agentFor names the
// deploy-agent to run it with, "" for the host's current one). It first
// tries every host at once; if another run holds any, it lets go of all
// and takes them again one by one in name order, waiting up to WaitLock
// for each (and for a lock a younger run holds, up to lockSettle: see
// younger), so that of two runs started together one always gets through.
//
// It returns false when the run must stop: another run holds some host's
// lock (that host ends locked, naming the holder; the others skipped, and
// every lock taken is released). Otherwise it returns the hosts it could
// not reach, with the error, for the caller to fail while the others go
// on. A host whose agent cannot hold the lock (none yet, or too old) goes
// on without it, which a host.log line says.
func (s *Session) lockHosts(ctx context.Context, rep *Report, ops HostOps, names []string, agentFor func(string) string) (bool, map[string]error) {
	run := s.runHolder()
	names = sorted(names)
	type attempt struct {
		reply *agentapi.LockReply
		err   error
		dead  bool // taken over from a run whose process ended here
	}
	var mu sync.Mutex
	got := map[string]attempt{}
	for _, name := range names {
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "started"})
	}
	left := each(ctx, names, s.Parallel.connect(), func(ctx context.Context, name string) {
		reply, dead, err := lockOne(ctx, ops, name, run, 0, agentFor(name))
		mu.Lock()
		got[name] = attempt{reply, err, dead}
		mu.Unlock()
	})
	for _, name := range left {
		got[name] = attempt{err: ctx.Err()}
	}
	held := func(name string) bool { a := got[name]; return a.err == nil && a.reply != nil && !a.reply.Locked }
	if slices.ContainsFunc(names, held) {
		for _, name := range names {
			if a := got[name]; a.err == nil && a.reply != nil && a.reply.Locked {
				ops.Unlock(name)
			}
		}
		for _, name := range names {
			if got[name].err != nil {
				continue
			}
			if s.WaitLock > 0 {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseLock, Message: "waiting for the run lock"})
			}
			reply, dead, err := lockOne(ctx, ops, name, run, s.WaitLock, agentFor(name))
			if err == nil && reply != nil && !reply.Locked && s.WaitLock < lockSettle && younger(reply.Holder, run) {
				// Of two runs that meet, the younger gives up and lets go
				// of what it took (see below): wait for that, briefly. A
				// younger run that goes on holds it longer, and then this
				// one gives up instead.
				reply, dead, err = lockOne(ctx, ops, name, run, lockSettle, agentFor(name))
			}
			got[name] = attempt{reply, err, dead}
			if held(name) {
				break
			}
		}
	}
	if slices.ContainsFunc(names, held) {
		for _, name := range names {
			hr := rep.Hosts[name]
			a := got[name]
			switch {
			case held(name):
				hr.Holder = a.reply.Holder
				s.fail(hr, PhaseLock, ResultLocked, fmt.Errorf("the run lock is held by %s", a.reply.Holder.String()))
			case a.err == nil && a.reply != nil && a.reply.Locked:
				ops.Unlock(name)
				s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "skipped"})
				hr.Err = errors.New("another run holds the run lock of a host of this run")
				s.finish(hr, Event{Message: "another run holds the run lock of a host of this run"})
			default:
				s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "skipped"})
				s.finish(hr, Event{Message: "another run holds the run lock of a host of this run"})
			}
		}
		return false, nil
	}
	unreachable := map[string]error{}
	for _, name := range names {
		a := got[name]
		switch {
		case errors.Is(a.err, agentclient.ErrNoAgent), errors.Is(a.err, agentclient.ErrNoRunLock):
			s.emit(Event{Type: EventLog, Host: name, Phase: PhaseLock, Message: a.err.Error() + ": going on without the run lock"})
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "done"})
		case a.err != nil:
			unreachable[name] = a.err
		default:
			if a.reply.TookOver != nil && a.dead {
				which := "its process"
				if p := a.reply.TookOver.Process; p != nil {
					which = fmt.Sprintf("its process %d", p.PID)
				}
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseLock, TookOver: a.reply.TookOver,
					Message: "took over the run lock of " + a.reply.TookOver.String() + " at once: " + which + " on this machine no longer runs"})
			} else if a.reply.TookOver != nil {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseLock, TookOver: a.reply.TookOver,
					Message: "took over the run lock of " + a.reply.TookOver.String() + ", which ended without releasing it"})
			}
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "done"})
		}
	}
	return true, unreachable
}

// lockOne takes host's run lock for run. When another run holds it whose
// operator process ran on this machine (the same process table) and has
// ended, as when a run was cut off from the host and exited, it asks the
// host at once to take that run's lock over rather than wait for the
// host's lease; dead says it did. A run of another machine, or whose
// process this machine cannot tell ended, is waited for as usual.
func lockOne(ctx context.Context, ops HostOps, host string, run *agentapi.RunHolder, wait time.Duration, agent string) (reply *agentapi.LockReply, dead bool, err error) {
	reply, err = ops.Lock(ctx, host, run, wait, agent)
	if err != nil || reply == nil || reply.Locked || !endedHere(reply.Holder) {
		return reply, false, err
	}
	take := *run
	take.TakeOver = reply.Holder.Run
	reply, err = ops.Lock(ctx, host, &take, wait, agent)
	dead = err == nil && reply != nil && reply.Locked && reply.TookOver != nil && reply.TookOver.Run == take.TakeOver
	return reply, dead, err
}

// endedHere reports whether h is a run whose process ran in this
// machine's process table and has ended (see package procid).
func endedHere(h *agentapi.RunHolder) bool {
	return h != nil && h.Process != nil && procid.Gone(procid.ID{Space: h.Process.Space, PID: h.Process.PID, Start: h.Process.Start})
}

// lockSettle is how long the ordered pass of lockHosts waits for a lock
// that a younger run holds.
var lockSettle = 5 * time.Second

// younger reports whether the run h started taking its locks after run
// (ties broken by run id): every run orders any two the same way, whatever
// the clocks of their machines say, so of two runs that meet in the
// ordered pass exactly one waits for the other (wait-die). Without that,
// two runs started together could each find a lock the other held for a
// moment and both give up.
func younger(h, run *agentapi.RunHolder) bool {
	if h == nil {
		return false
	}
	if !h.Started.Equal(run.Started) {
		return h.Started.After(run.Started)
	}
	return h.Run > run.Run
}

// gitRev is the fleet's commit, with "-dirty" when the work tree has
// changes, or "" outside git.
func gitRev(dir string) string {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--", ".").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		rev += "-dirty"
	}
	return rev
}

// GenerationMeta is what each new generation records: the fleet's git
// commit (if the fleet is in a git work tree), the operator, a message.
func GenerationMeta(dir, message string) map[string]string {
	meta := map[string]string{}
	if u, err := user.Current(); err == nil {
		meta["operator"] = u.Username
	}
	if rev := gitRev(dir); rev != "" {
		meta["git_rev"] = rev
	}
	if message != "" {
		meta["message"] = message
	}
	return meta
}
