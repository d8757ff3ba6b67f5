package agentclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/mesh"
)

// The run lock (see activation's HoldRunLock for the host's side) keeps two
// runs that change overlapping hosts apart: from two operators, two
// pipelines, two machines. The host's agent holds it for the operator's
// run, in an SSH session the operator keeps open and alive with a
// heartbeat; a host gives a dead run's lock up by itself.

// Errors of [Client.Lock] that let a run go on without the run lock.
var (
	// ErrNoAgent: the host has no deploy-agent to hold the lock (it was
	// never deployed to).
	ErrNoAgent = errors.New("the host has no deploy-agent")
	// ErrNoRunLock: the host's deploy-agent predates the run lock.
	ErrNoRunLock = errors.New("the host's deploy-agent predates the run lock")
)

// LockHeartbeat is how often the operator tells a host's run-lock process
// that the run is alive; the agent gives the lock up after LockLease
// without a word.
var (
	LockHeartbeat = 10 * time.Second
	LockLease     = time.Minute
)

// heldLock is a run lock that a Client holds: the agent's run-lock
// session and the heartbeat that keeps it.
type heldLock struct {
	sess  *mesh.Session
	run   *agentapi.RunHolder
	agent string
	stop  chan struct{}
	done  chan struct{}
}

// Lock takes the host's run lock for run, waiting up to wait while another
// run holds it, with `deploy-agent run-lock` in a session that stays open
// and a heartbeat until [Client.Unlock]. agent is the agent store path to
// hold it with ("": the running system's); when it is missing on the host
// it is bootstrapped first. The reply is not Locked when another run
// holds the lock. [ErrNoAgent] and [ErrNoRunLock] mean the host cannot
// hold a run lock.
func (c *Client) Lock(ctx context.Context, run *agentapi.RunHolder, wait time.Duration, agent string) (*agentapi.LockReply, error) {
	conn, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return c.lockOn(ctx, conn, run, wait, agent, false)
}

// LockDrift is [Client.Lock] that also has the agent compare the host with
// its current generation once the lock is taken, in the same request (store
// paths checked for presence only, as [Client.Drift] with verifyStore
// false): the reply's Drift, or DriftError. A deploy looks at drift before
// its copy, and asking with the lock saves each host a session and an
// agent process. An agent that predates this answers without either: the
// caller asks [Client.Drift] then.
func (c *Client) LockDrift(ctx context.Context, run *agentapi.RunHolder, wait time.Duration, agent string) (*agentapi.LockReply, error) {
	conn, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return c.lockOn(ctx, conn, run, wait, agent, true)
}

func (c *Client) lockOn(ctx context.Context, conn *mesh.Client, run *agentapi.RunHolder, wait time.Duration, agent string, drift bool) (*agentapi.LockReply, error) {
	who := []agentapi.Agent{agentapi.CurrentAgent}
	if agent != "" {
		who = []agentapi.Agent{agentapi.AgentAt(agent)}
	}
	bootstrapped := false
	for {
		args := agentapi.RunLockCmd{StateDir: c.stateDir(), Wait: wait, Lease: LockLease, Drift: drift}.Args()
		// The session outlives ctx: Ctrl-C must not drop the lock before
		// the run has released it on its way out.
		sess, err := conn.Start(context.WithoutCancel(ctx), c.command(who, args...))
		if err != nil {
			return nil, fmt.Errorf("run lock: %w", err)
		}
		agentapi.WriteRunHolder(sess.Stdin, run)
		reply, rerr := readReply(ctx, sess)
		if rerr != nil {
			sess.Close()
			werr := sess.Wait()
			var ee *mesh.ExitError
			var ve *agentapi.VersionError
			switch {
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.As(rerr, &ve):
				return nil, fmt.Errorf("run lock: %w", rerr)
			case errors.As(werr, &ee) && ee.Code == agentapi.ExitNoAgent && agent != "" && !bootstrapped:
				if err := c.bootstrap(ctx, conn, agent); err != nil {
					return nil, err
				}
				bootstrapped = true
				continue
			case errors.As(werr, &ee) && ee.Code == agentapi.ExitUsage && drift:
				// An agent that predates run-lock --drift: ask again
				// without it (the caller asks for drift on its own).
				drift = false
				continue
			case errors.As(werr, &ee) && ee.Code == agentapi.ExitNoAgent:
				return nil, ErrNoAgent
			case errors.As(werr, &ee) && ee.Code == agentapi.ExitUsage:
				if ok, perr := c.supports(ctx, conn, who, agentapi.VerbRunLock); perr == nil && !ok {
					return nil, ErrNoRunLock
				}
				return nil, fmt.Errorf("run lock: %w", werr)
			case werr != nil:
				return nil, fmt.Errorf("run lock: %w", werr)
			}
			return nil, fmt.Errorf("run lock: %w", rerr)
		}
		if !reply.Locked {
			sess.Close()
			return reply, nil
		}
		hl := &heldLock{sess: sess, run: run, agent: agent, stop: make(chan struct{}), done: make(chan struct{})}
		go hl.heartbeat()
		c.mu.Lock()
		c.lock = hl
		c.mu.Unlock()
		return reply, nil
	}
}

// readReply reads the agent's reply, or fails when ctx ends.
func readReply(ctx context.Context, sess *mesh.Session) (*agentapi.LockReply, error) {
	type result struct {
		reply *agentapi.LockReply
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := agentapi.ReadLockReply(bufio.NewReader(sess.Stdout))
		ch <- result{r, err}
	}()
	select {
	case r := <-ch:
		return r.reply, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (h *heldLock) heartbeat() {
	defer close(h.done)
	t := time.NewTicker(LockHeartbeat)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			if _, err := fmt.Fprintln(h.sess.Stdin, agentapi.LockPing); err != nil {
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
	fmt.Fprintln(h.sess.Stdin, agentapi.LockRelease)
	h.sess.Stdin.Close()
	done := make(chan struct{})
	go func() { h.sess.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	h.sess.Close()
}

// abandon stops the heartbeat of a lock whose connection died.
func (h *heldLock) abandon() {
	close(h.stop)
	h.sess.Close()
}

// Unlock releases the run lock, if held.
func (c *Client) Unlock() {
	c.mu.Lock()
	h := c.lock
	c.lock = nil
	c.mu.Unlock()
	if h != nil {
		h.release()
	}
}

// Locked reports whether the client holds the run lock.
func (c *Client) Locked() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lock != nil
}
