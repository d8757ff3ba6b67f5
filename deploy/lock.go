package deploy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
)

// The run lock (see activation's HoldRunLock for the host's side) keeps two
// runs that change overlapping hosts apart: from two operators, two
// pipelines, two machines. A run takes it on every host it changes before
// it copies anything, and holds it to its end; a host whose lock another
// run holds makes the whole run stop at once, having changed nothing.

// Errors of [HostOps.Lock] that let the run go on without the run lock.
var (
	// ErrNoAgent: the host has no deploy-agent to hold the lock (it was
	// never deployed to).
	ErrNoAgent = errors.New("the host has no deploy-agent")
	// ErrNoRunLock: the host's deploy-agent predates the run lock.
	ErrNoRunLock = errors.New("the host's deploy-agent predates the run lock")
)

// lockHeartbeat is how often the operator tells a host's run-lock process
// that the run is alive; the agent gives the lock up after lockLease
// without a word.
var (
	lockHeartbeat = 10 * time.Second
	lockLease     = time.Minute
)

// runHolder describes this run for the run locks it takes.
func (s *Session) runHolder() *agentapi.RunHolder {
	var rnd [8]byte
	rand.Read(rnd[:])
	h := &agentapi.RunHolder{Run: hex.EncodeToString(rnd[:]), Command: s.Command, Hosts: s.names(), Started: time.Now().UTC()}
	if u, err := user.Current(); err == nil {
		h.Operator = u.Username
	}
	h.Machine, _ = os.Hostname()
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
	}
	var mu sync.Mutex
	got := map[string]attempt{}
	for _, name := range names {
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "started"})
	}
	each(ctx, names, s.Parallel.connect(), func(ctx context.Context, name string) {
		reply, err := ops.Lock(ctx, name, run, 0, agentFor(name))
		mu.Lock()
		got[name] = attempt{reply, err}
		mu.Unlock()
	})
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
			reply, err := ops.Lock(ctx, name, run, s.WaitLock, agentFor(name))
			if err == nil && reply != nil && !reply.Locked && s.WaitLock < lockSettle && younger(reply.Holder, run) {
				// Of two runs that meet, the younger gives up and lets go
				// of what it took (see below): wait for that, briefly. A
				// younger run that goes on holds it longer, and then this
				// one gives up instead.
				reply, err = ops.Lock(ctx, name, run, lockSettle, agentFor(name))
			}
			got[name] = attempt{reply, err}
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
		case errors.Is(a.err, ErrNoAgent), errors.Is(a.err, ErrNoRunLock):
			s.emit(Event{Type: EventLog, Host: name, Phase: PhaseLock, Message: a.err.Error() + ": going on without the run lock"})
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "done"})
		case a.err != nil:
			unreachable[name] = a.err
		default:
			if a.reply.TookOver != nil {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseLock, TookOver: a.reply.TookOver,
					Message: "took over the run lock of " + a.reply.TookOver.String() + ", which ended without releasing it"})
			}
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseLock, State: "done"})
		}
	}
	return true, unreachable
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

// heldLock is a run lock that an SSHOps holds on a host: the agent's
// run-lock session and the heartbeat that keeps it.
type heldLock struct {
	sess  *mesh.Session
	run   *agentapi.RunHolder
	agent string
	stop  chan struct{}
	done  chan struct{}
}

// Lock implements [HostOps]: it runs `deploy-agent run-lock` on the host in
// a session that stays open, and keeps it alive with a heartbeat until
// [SSHOps.Unlock]. With agent set and missing on the host, the agent is
// bootstrapped first.
func (o *SSHOps) Lock(ctx context.Context, host string, run *agentapi.RunHolder, wait time.Duration, agent string) (*agentapi.LockReply, error) {
	c, err := o.client(ctx, host)
	if err != nil {
		return nil, err
	}
	return o.lockOn(ctx, c, host, run, wait, agent)
}

func (o *SSHOps) lockOn(ctx context.Context, c *mesh.Client, host string, run *agentapi.RunHolder, wait time.Duration, agent string) (*agentapi.LockReply, error) {
	exe := currentAgent()
	if agent != "" {
		exe = path.Join(agent, closure.AgentBin)
	}
	holder, _ := json.Marshal(run)
	for attempt := 0; ; attempt++ {
		// The session outlives ctx: Ctrl-C must not drop the lock before
		// the run has released it on its way out.
		sess, err := c.Start(context.WithoutCancel(ctx), []string{"sh", "-c", fmt.Sprintf(`test -x "$1" || exit %d; exec "$@"`, errAgentMissing),
			"sh", exe, "run-lock", "--state-dir", o.stateDir(), "--wait", wait.String(), "--lease", lockLease.String()})
		if err != nil {
			return nil, &HostFailure{Result: ResultUnreachable, Err: fmt.Errorf("run lock: %w", err)}
		}
		fmt.Fprintf(sess.Stdin, "%s\n", holder)
		line, rerr := readLine(ctx, sess)
		if rerr != nil {
			sess.Close()
			werr := sess.Wait()
			var ee *mesh.ExitError
			switch {
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.As(werr, &ee) && ee.Code == errAgentMissing && agent != "" && attempt == 0:
				if err := bootstrapAgent(ctx, o.Store, c, agent, o.stateDir(), o.logf()); err != nil {
					return nil, &HostFailure{Result: ResultUnreachable, Err: err}
				}
				continue
			case errors.As(werr, &ee) && ee.Code == errAgentMissing:
				return nil, ErrNoAgent
			case errors.As(werr, &ee) && strings.Contains(string(sess.Stderr()), `unknown command "run-lock"`):
				return nil, ErrNoRunLock
			case werr != nil:
				return nil, &HostFailure{Result: ResultUnreachable, Err: fmt.Errorf("run lock: %w", werr)}
			}
			return nil, &HostFailure{Result: ResultUnreachable, Err: fmt.Errorf("run lock: %w", rerr)}
		}
		reply := &agentapi.LockReply{}
		if err := agentapi.Decode("run lock", []byte(line), reply); err != nil {
			sess.Close()
			return nil, &HostFailure{Result: ResultFailed, Err: err}
		}
		if !reply.Locked {
			sess.Close()
			return reply, nil
		}
		hl := &heldLock{sess: sess, run: run, agent: agent, stop: make(chan struct{}), done: make(chan struct{})}
		go hl.heartbeat()
		o.mu.Lock()
		if o.locks == nil {
			o.locks = map[string]*heldLock{}
		}
		o.locks[host] = hl
		o.mu.Unlock()
		return reply, nil
	}
}

// readLine reads one line of the session's stdout, or fails when ctx ends.
func readLine(ctx context.Context, sess *mesh.Session) (string, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(sess.Stdout).ReadString('\n')
		ch <- result{line, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return "", r.err
		}
		return r.line, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (h *heldLock) heartbeat() {
	defer close(h.done)
	t := time.NewTicker(lockHeartbeat)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			if _, err := h.sess.Stdin.Write([]byte("ping\n")); err != nil {
				return
			}
		}
	}
}

// release tells the host's run-lock process to let go and waits a little
// for it to end.
func (h *heldLock) release() {
	close(h.stop)
	<-h.done
	h.sess.Stdin.Write([]byte("release\n"))
	h.sess.Stdin.Close()
	done := make(chan struct{})
	go func() { h.sess.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	h.sess.Close()
}

// Unlock implements [HostOps].
func (o *SSHOps) Unlock(host string) {
	o.mu.Lock()
	h := o.locks[host]
	delete(o.locks, host)
	o.mu.Unlock()
	if h != nil {
		h.release()
	}
}

// UnlockAll releases every run lock still held.
func (o *SSHOps) UnlockAll() {
	o.mu.Lock()
	hosts := make([]string, 0, len(o.locks))
	for h := range o.locks {
		hosts = append(hosts, h)
	}
	o.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() { defer wg.Done(); o.Unlock(h) }()
	}
	wg.Wait()
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
