package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Client is an established SSH connection to one host, possibly through jump
// hosts. It is safe for concurrent use; each command runs in its own
// session. Keepalives run until Close or until the connection is declared
// dead, after which every operation fails with the error that killed it.
type Client struct {
	cfg    *Config
	target Target
	name   string
	ssh    *ssh.Client
	conns  []net.Conn    // raw connections, outermost (first hop) first
	hops   []*ssh.Client // jump-host clients, outermost first

	dead     chan struct{}
	deadOnce sync.Once
	deadErr  error

	sudoMu   sync.Mutex
	sudoPass *string // cached after sudo accepted it
}

// errClosed is the cause reported by operations after Close.
var errClosed = errors.New("client closed")

// Connect dials the target (through its jump hosts, if any), performs the SSH
// handshake verifying each host's key, authenticates, and starts keepalives.
// ctx bounds the whole connection setup; it does not affect the Client
// after Connect returns.
//
// Errors are *[HostKeyError], *[UnknownHostError], *[RevokedHostKeyError]
// or *[UnreachableError] (phase dial, handshake or auth), or a plain error
// for bad configuration.
func (c *Config) Connect(ctx context.Context, t Target) (*Client, error) {
	r, err := c.resolve(t)
	if err != nil {
		return nil, err
	}
	k := c.openKeys(ctx)
	defer k.close()

	cl := &Client{cfg: c, target: t, name: r.target.name, dead: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			cl.closeConns()
		}
	}()
	var prev *ssh.Client
	eps := append(append([]endpoint(nil), r.jumps...), r.target)
	for i := range eps {
		e := &eps[i]
		raw, err := c.dial(ctx, prev, e)
		if err != nil {
			return nil, err
		}
		cl.conns = append(cl.conns, raw)
		sc, err := c.handshake(ctx, raw, e, k)
		if err != nil {
			return nil, err
		}
		if i < len(eps)-1 {
			cl.hops = append(cl.hops, sc)
		} else {
			cl.ssh = sc
		}
		prev = sc
	}
	ok = true
	c.Counts.add(countKey(t), 1, 0)
	go cl.watch()
	interval, max := c.keepaliveInterval(), c.keepaliveMax()
	if c.KeepaliveInterval == 0 && r.target.aliveInterval > 0 {
		interval = r.target.aliveInterval
	}
	if c.KeepaliveMax == 0 && r.target.aliveMax > 0 {
		max = r.target.aliveMax
	}
	go cl.keepalive(interval, max)
	return cl, nil
}

// dial opens a raw connection to e: over TCP through the Dialer, or as a
// direct-tcpip channel through the previous hop.
func (c *Config) dial(ctx context.Context, via *ssh.Client, e *endpoint) (net.Conn, error) {
	timeout := c.dialTimeout()
	if c.DialTimeout == 0 && e.connectTimeout > 0 {
		timeout = e.connectTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var conn net.Conn
	var err error
	if via == nil {
		conn, err = c.dialDirect(dctx, e)
	} else {
		conn, err = via.DialContext(dctx, "tcp", e.addr())
	}
	if err != nil {
		return nil, &UnreachableError{Host: e.name, Phase: PhaseDial, Err: dialError(ctx, dctx, err, e.addr(), timeout)}
	}
	return conn, nil
}

// dialError words a failed dial of addr: one that ran out of its time
// (the dial context's deadline, or the network's own timeout, whichever
// came first) says so the same way wherever it happened.
func dialError(ctx, dctx context.Context, err error, addr string, timeout time.Duration) error {
	var ne net.Error
	if ctx.Err() == nil && (dctx.Err() != nil || errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("dial %s: timed out after %v", addr, timeout)
	}
	return err
}

// handshake runs the SSH handshake and authentication on raw, bounded by
// HandshakeTimeout and ctx (both close raw, which unblocks everything).
func (c *Config) handshake(ctx context.Context, raw net.Conn, e *endpoint, k *keys) (*ssh.Client, error) {
	v, err := c.newVerifier(e)
	if err != nil {
		return nil, err
	}
	signers, err := k.signers(e)
	if err != nil {
		return nil, &UnreachableError{Host: e.name, Phase: PhaseAuth, Err: err}
	}
	if len(signers) == 0 {
		err := k.authError(errors.New("no usable private key (no ssh-agent keys, no identity files)"))
		return nil, &UnreachableError{Host: e.name, Phase: PhaseAuth, Err: err}
	}
	cc := &ssh.ClientConfig{
		User:              e.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signers...)},
		HostKeyCallback:   v.callback,
		HostKeyAlgorithms: v.algorithms(),
	}

	timer := time.AfterFunc(c.handshakeTimeout(), func() { raw.Close() })
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	sconn, chans, reqs, err := ssh.NewClientConn(raw, e.addr(), cc)
	timedOut := !timer.Stop()
	cancelled := !stop()
	if err == nil && (timedOut || cancelled) {
		sconn.Close()
		err = errors.New("interrupted")
	}
	if err != nil {
		switch {
		case v.err != nil:
			return nil, v.err
		case cancelled:
			err = ctx.Err()
		case timedOut:
			err = fmt.Errorf("timed out after %v", c.handshakeTimeout())
		}
		phase := PhaseHandshake
		if v.verified {
			phase = PhaseAuth
			err = k.authError(err)
		}
		return nil, &UnreachableError{Host: e.name, Phase: phase, Err: err}
	}
	return ssh.NewClient(sconn, chans, reqs), nil
}

// Dead returns a channel that is closed when the connection is declared
// dead (keepalives failed), is closed by the peer, or Close is called.
func (cl *Client) Dead() <-chan struct{} { return cl.dead }

// Err returns why the connection died, or nil while it is alive. It is an
// *[UnreachableError] (phase keepalive or connection), or an error saying
// the client was closed.
func (cl *Client) Err() error {
	select {
	case <-cl.dead:
		return cl.deadErr
	default:
		return nil
	}
}

// Target returns the target the client was connected to.
func (cl *Client) Target() Target { return cl.target }

// Close closes the connection and every session on it.
func (cl *Client) Close() error {
	cl.die(fmt.Errorf("connection to %q: %w", cl.name, errClosed))
	return nil
}

// die records why the connection is dead (the first cause wins), closes
// the dead channel, then every underlying connection: whoever is unblocked
// by the closed connections finds the verdict already published.
func (cl *Client) die(err error) {
	cl.deadOnce.Do(func() {
		cl.deadErr = err
		close(cl.dead)
		cl.closeConns()
	})
}

func (cl *Client) closeConns() {
	// Closing the raw connections, outermost first, unblocks every read and
	// write on every channel at once.
	for _, c := range cl.conns {
		c.Close()
	}
	if cl.ssh != nil {
		cl.ssh.Close()
	}
	for i := len(cl.hops) - 1; i >= 0; i-- {
		cl.hops[i].Close()
	}
}

// watch notices a connection closed by the peer (or a jump host's).
func (cl *Client) watch() {
	all := append([]*ssh.Client{cl.ssh}, cl.hops...)
	done := make(chan error, len(all))
	for _, s := range all {
		go func() { done <- s.Wait() }()
	}
	select {
	case err := <-done:
		if err == nil {
			err = errors.New("closed by peer")
		}
		cl.die(&UnreachableError{Host: cl.name, Phase: PhaseConn, Err: err})
	case <-cl.dead:
	}
}

// keepalive sends keepalive@openssh.com requests; when max intervals pass
// without a reply, it declares the connection dead. Only one request is
// outstanding at a time (the ssh package serialises them); the reply's
// content does not matter, any reply proves the peer alive.
func (cl *Client) keepalive(interval time.Duration, max int) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		reply := make(chan error, 1)
		go func() {
			_, _, err := cl.ssh.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		missed := 0
	wait:
		for {
			select {
			case err := <-reply:
				if err != nil {
					cl.die(&UnreachableError{Host: cl.name, Phase: PhaseConn, Err: err})
					return
				}
				break wait
			case <-tick.C:
				missed++
				if missed >= max {
					cl.cfg.logf("mesh: %s: no keepalive reply in %v, closing the connection", cl.name, time.Duration(max)*interval)
					cl.die(&UnreachableError{Host: cl.name, Phase: PhaseKeepalive,
						Err: fmt.Errorf("no reply to %d keepalives in %v", max, time.Duration(max)*interval)})
					return
				}
			case <-cl.dead:
				return
			}
		}
		select {
		case <-tick.C:
		case <-cl.dead:
			return
		}
	}
}

// connErr turns an error from the ssh package into the connection's death
// cause if the connection is dead (it usually is when channels fail).
func (cl *Client) connErr(err error) error {
	if d := cl.Err(); d != nil {
		return d
	}
	return err
}

// await runs fn, a request that waits for the server's reply, bounded by
// ctx, RequestTimeout and the connection's death. If it gives up, abandon
// runs after fn returns (to close what fn opened late).
func (cl *Client) await(ctx context.Context, what string, fn func() error, abandon func()) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(cl.cfg.requestTimeout())
	defer timer.Stop()
	var err error
	select {
	case e := <-done:
		if e != nil {
			return fmt.Errorf("%s on %q: %w", what, cl.name, cl.connErr(e))
		}
		return nil
	case <-ctx.Done():
		err = fmt.Errorf("%s on %q: %w", what, cl.name, ctx.Err())
	case <-timer.C:
		err = &UnreachableError{Host: cl.name, Phase: PhaseRequest,
			Err: fmt.Errorf("%s: no reply in %v", what, cl.cfg.requestTimeout())}
	case <-cl.dead:
		err = cl.deadErr
	}
	go func() {
		<-done
		if abandon != nil {
			abandon()
		}
	}()
	return err
}
