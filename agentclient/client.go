// Package agentclient speaks to one host's deploy-agent from the
// operator's machine: it is the one place where the operator turns the
// agent's contract (package agentapi: verbs, command lines, exit codes,
// the run lock's conversation) into calls over SSH (package mesh).
//
// # The client
//
// A [Client] is one host: how to reach it, its agent's state directory,
// and the local store that systems and agents are copied from. It keeps one
// connection for a whole run ([Client.Conn]), connecting again when the
// connection dies, and opens fresh ones where the design wants a new
// connection (the confirmation of an activation). Its methods are the
// agent's operations:
//
//   - [Client.Copy]: the closure a host lacks, over the agent's receive,
//     bootstrapping the agent when the host has none;
//   - [Client.Activate]: an activation (or a rollback) and its
//     confirmation over a new connection, learning the outcome again
//     after a dropped connection;
//   - [Client.Lock] and [Client.Unlock]: the run lock, held by the
//     host's agent for the operator's whole run, with a heartbeat;
//   - the queries: [Client.Status], [Client.Generations], [Client.GC],
//     [Client.Drift], [Client.Manifest], [Client.Exec];
//   - [Client.Reboot]: a reboot, and the boot default's health after it.
//
// Which agent on the host answers each of them follows one rule,
// [agentapi.Command]. What an error means for the host is decided by
// [Classify].
package agentclient

import (
	"context"
	"fmt"
	"sync"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
)

// Client speaks to one host's agent. Set the fields, then call its
// methods; they may be called concurrently. Close closes its connection;
// [Client.Unlock] releases the run lock first when one is held.
type Client struct {
	// Target is the host and how to reach it.
	Target mesh.Target
	// Mesh authenticates and verifies hosts (and dials them: a tailnet
	// node's dialer, say).
	Mesh *mesh.Config
	// StateDir is the agent's state directory (default
	// [agentapi.DefaultStateDir]). Its store/ must be Store's StoreDir.
	StateDir string
	// Store is the local store that systems and agents are copied from.
	Store *closure.Store
	// Logf receives the client's own steps (bootstrapping, reconnecting);
	// nil drops them.
	Logf func(format string, args ...any)

	mu   sync.Mutex
	conn *mesh.Client
	lock *heldLock
}

// Name is the host's name (its address when it has none).
func (c *Client) Name() string {
	if c.Target.Name != "" {
		return c.Target.Name
	}
	return c.Target.Address
}

func (c *Client) stateDir() string {
	if c.StateDir == "" {
		return agentapi.DefaultStateDir
	}
	return c.StateDir
}

func (c *Client) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

func (c *Client) mesh() *mesh.Config {
	if c.Mesh == nil {
		return &mesh.Config{}
	}
	return c.Mesh
}

// Conn returns the client's connection, connecting on first use and again
// when the previous connection died. When the run lock was held over the
// connection that died, it is taken again first: if another run took it
// meanwhile, the error is a *[LockLostError].
func (c *Client) Conn(ctx context.Context) (*mesh.Client, error) {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil && conn.Err() == nil {
		return conn, nil
	}
	conn, err := c.Dial(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if old := c.conn; old != nil {
		old.Close()
	}
	c.conn = conn
	lost := c.lock
	c.lock = nil
	c.mu.Unlock()
	if lost != nil {
		// The run lock's session died with the old connection: the host
		// gave the lock up, or will when it notices. Take it again; if
		// another run got it meanwhile, this host is lost to this run.
		lost.abandon()
		reply, err := c.lockOn(ctx, conn, lost.run, 0, lost.agent, false)
		if err != nil {
			return nil, err
		}
		if !reply.Locked {
			return nil, &LockLostError{Host: c.Name(), Holder: reply.Holder}
		}
	}
	return conn, nil
}

// Dial opens a new connection to the host, apart from the client's own
// (the caller closes it). Any failure to connect leaves the host
// unreachable (a key file that cannot be read, say, as much as a network
// that does not answer), unless it is about the host's key.
func (c *Client) Dial(ctx context.Context) (*mesh.Client, error) {
	conn, err := c.mesh().Connect(ctx, c.Target)
	if err != nil && Classify(err) == KindOther {
		err = &KindError{Kind: KindUnreachable, Err: err}
	}
	return conn, err
}

// Connected reports whether the client has a live connection.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil && c.conn.Err() == nil
}

// Drop closes the client's connection; the next use connects again (and
// takes the run lock again if it was held).
func (c *Client) Drop() {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// Close closes the client's connection (a run lock held over it is given
// up by the host; release it first with [Client.Unlock]).
func (c *Client) Close() {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// command is the command line that runs the agent's args with the first of
// agents on the host (see [agentapi.Command]).
func (c *Client) command(agents []agentapi.Agent, args ...string) []string {
	return agentapi.Command(c.stateDir(), agents, args...)
}

// LockLostError is a run lock lost with a dropped connection to another
// run, which took it meanwhile.
type LockLostError struct {
	Host   string
	Holder *agentapi.RunHolder
}

func (e *LockLostError) Error() string {
	return fmt.Sprintf("%s: lost the run lock (the connection dropped) to %s", e.Host, e.Holder.String())
}
