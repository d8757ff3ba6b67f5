package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// dialProxyCommand runs e's ProxyCommand as OpenSSH does — "exec COMMAND"
// by the user's $SHELL (else /bin/sh), tokens expanded — and returns a
// connection over its standard input and output. Its standard error is
// kept (the last 4 KiB) for errors. Closing the
// connection closes the pipes and sends the command SIGHUP, as ssh does.
func (c *Config) dialProxyCommand(e *endpoint) (net.Conn, error) {
	cmdline, err := c.expandTokens(e.proxyCommand, *e, true)
	if err != nil {
		return nil, fmt.Errorf("ProxyCommand of %q: %w", e.name, err)
	}
	shell := c.getenv("SHELL")
	if shell == "" {
		shell = "/bin/sh"
	}
	cmd := exec.Command(shell, "-c", "exec "+cmdline)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Pipes of our own, not StdinPipe/StdoutPipe: Wait (run as soon as
	// the command starts, to learn its exit) closes those, which could
	// drop the last bytes the command wrote before exiting.
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	pc := &proxyConn{cfg: c, name: e.name, cmd: cmd, stdin: inW, stdout: outR, exited: make(chan struct{}), stderr: &tailBuffer{max: 4096}}
	cmd.Stderr = pc.stderr
	err = cmd.Start()
	// The command has its own copies of its ends now.
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("ProxyCommand of %q: %w", e.name, err)
	}
	c.logf("mesh: %s: connecting through ProxyCommand %q", e.name, cmdline)
	go func() {
		pc.waitErr = cmd.Wait()
		close(pc.exited)
	}()
	return pc, nil
}

// proxyConn is a net.Conn over a ProxyCommand's pipes.
type proxyConn struct {
	cfg     *Config
	name    string
	cmd     *exec.Cmd
	stdin   *os.File
	stdout  *os.File
	stderr  *tailBuffer
	exited  chan struct{}
	waitErr error
	once    sync.Once
}

func (p *proxyConn) Read(b []byte) (int, error) {
	n, err := p.stdout.Read(b)
	if err == io.EOF {
		err = p.exitError(io.EOF)
	}
	return n, err
}

func (p *proxyConn) Write(b []byte) (int, error) {
	n, err := p.stdin.Write(b)
	if err != nil {
		err = p.exitError(err)
	}
	return n, err
}

// exitError explains why the stream ended: the command's exit status and
// the tail of its stderr, when it has exited.
func (p *proxyConn) exitError(err error) error {
	select {
	case <-p.exited:
	case <-time.After(100 * time.Millisecond):
		return err
	}
	msg := "ProxyCommand exited"
	if p.waitErr != nil {
		msg += ": " + p.waitErr.Error()
	}
	if s := strings.TrimSpace(string(p.stderr.Bytes())); s != "" {
		msg += ": " + s
	}
	if err == io.EOF {
		// Keep io.EOF visible to the ssh package's handshake reader.
		return &proxyEOF{msg: msg}
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// proxyEOF is io.EOF with the reason the proxy stream ended.
type proxyEOF struct{ msg string }

func (e *proxyEOF) Error() string        { return e.msg }
func (e *proxyEOF) Is(target error) bool { return target == io.EOF }

func (p *proxyConn) Close() error {
	p.once.Do(func() {
		p.stdin.Close()
		p.stdout.Close()
		if p.cmd.Process != nil {
			// ssh sends SIGHUP to the proxy command when it is done.
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGHUP)
			go func() {
				select {
				case <-p.exited:
				case <-time.After(5 * time.Second):
					_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
				}
			}()
		}
	})
	return nil
}

// pipeAddr names the proxy command's end of the connection.
type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

func (p *proxyConn) LocalAddr() net.Addr  { return pipeAddr("proxycommand") }
func (p *proxyConn) RemoteAddr() net.Addr { return pipeAddr("proxycommand:" + p.name) }

var errNoDeadlines = errors.New("ProxyCommand connections have no deadlines")

func (p *proxyConn) SetDeadline(time.Time) error      { return errNoDeadlines }
func (p *proxyConn) SetReadDeadline(time.Time) error  { return errNoDeadlines }
func (p *proxyConn) SetWriteDeadline(time.Time) error { return errNoDeadlines }

// dialDirect opens the first connection of a route: through e's
// ProxyCommand when it has one, else through the Dialer.
func (c *Config) dialDirect(ctx context.Context, e *endpoint) (net.Conn, error) {
	if e.proxyCommand != "" {
		return c.dialProxyCommand(e)
	}
	return c.dialer().DialContext(ctx, "tcp", e.addr())
}

var _ net.Conn = (*proxyConn)(nil)
