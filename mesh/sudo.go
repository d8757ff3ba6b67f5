package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// How sudo is driven, so that the password never reaches the command and the
// command's input never reaches sudo:
//
//	sudo -S -p PROMPT -- sh -c 'printf %s "$0" >&2 && exec "$@"' STARTED CMD...
//
// PROMPT and STARTED are random markers. sudo writes PROMPT to stderr only
// when it wants a password; the command's shell writes STARTED once sudo has
// let it run. The operator side watches stderr: on PROMPT it writes the
// password (and only then); on STARTED it lets the caller's stdin through.
// A second PROMPT means the password was rejected.

// sudoGate holds a sudo-wrapped session's stdin until the command starts.
type sudoGate struct {
	cl      *Client
	ctx     context.Context
	prompt  []byte
	started []byte

	sess  *ssh.Session
	stdin io.WriteCloser

	timer   *time.Timer // fails the gate if sudo neither prompts nor starts the command in time
	once    sync.Once
	open    chan struct{} // closed when the command started or the gate failed
	mu      sync.Mutex
	err     error
	usedPwd *string
}

func newSudoGate(cl *Client, ctx context.Context) *sudoGate {
	return &sudoGate{
		cl:      cl,
		ctx:     ctx,
		prompt:  []byte("[deploy-sudo-prompt-" + randomHex() + "]"),
		started: []byte("[deploy-sudo-started-" + randomHex() + "]"),
		open:    make(chan struct{}),
	}
}

func randomHex() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// wrap returns the remote command line running cmd through sudo.
func (g *sudoGate) wrap(cmd []string) string {
	argv := append([]string{"sudo", "-S", "-p", string(g.prompt), "--",
		"sh", "-c", `printf %s "$0" >&2 && exec "$@"`, string(g.started)}, cmd...)
	return ShellQuote(argv)
}

func (g *sudoGate) fail(err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = err
	}
	g.mu.Unlock()
	g.once.Do(func() { close(g.open) })
	g.sess.Close()
}

func (g *sudoGate) failure() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// wait blocks until the command started (nil) or the gate failed.
func (g *sudoGate) wait() error {
	select {
	case <-g.open:
		return g.failure()
	case <-g.cl.dead:
		return g.cl.deadErr
	}
}

// pump reads the session's stderr: it answers sudo's prompt, opens the gate
// on the start marker, and copies everything else to out.
func (g *sudoGate) pump(stderr io.Reader, out io.Writer) {
	limit := g.cl.cfg.requestTimeout()
	g.timer = time.AfterFunc(limit, func() {
		g.fail(fmt.Errorf("sudo on %q: neither asked for a password with the expected prompt nor started the command within %v",
			g.cl.name, limit))
	})
	defer g.timer.Stop()
	markLen := max(len(g.prompt), len(g.started))
	var buf []byte
	chunk := make([]byte, 32<<10)
	prompts := 0
	for {
		n, rerr := stderr.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			ip, is := bytes.Index(buf, g.prompt), bytes.Index(buf, g.started)
			if is >= 0 && (ip < 0 || is < ip) {
				out.Write(buf[:is])
				rest := buf[is+len(g.started):]
				g.timer.Stop()
				if g.usedPwd != nil {
					g.cl.cacheSudoPassword(g.usedPwd)
				}
				g.once.Do(func() { close(g.open) })
				out.Write(rest)
				io.Copy(out, stderr)
				return
			}
			if ip < 0 {
				break
			}
			out.Write(buf[:ip])
			buf = buf[ip+len(g.prompt):]
			prompts++
			if prompts > 1 {
				g.cl.cacheSudoPassword(nil)
				g.fail(fmt.Errorf("sudo on %q: password rejected", g.cl.name))
				io.Copy(io.Discard, stderr)
				return
			}
			g.timer.Stop() // the password may come from a person
			pw, err := g.cl.sudoPassword(g.ctx)
			if err != nil {
				g.fail(err)
				io.Copy(io.Discard, stderr)
				return
			}
			g.usedPwd = &pw
			if _, err := io.WriteString(g.stdin, pw+"\n"); err != nil {
				g.fail(fmt.Errorf("sudo on %q: send password: %w", g.cl.name, g.cl.connErr(err)))
				io.Copy(io.Discard, stderr)
				return
			}
			g.timer.Reset(limit)
		}
		if keep := markLen - 1; len(buf) > keep {
			out.Write(buf[:len(buf)-keep])
			buf = append(buf[:0], buf[len(buf)-keep:]...)
		}
		if rerr != nil {
			out.Write(buf)
			msg := "sudo exited before running the command"
			if tail := lastLines(string(buf), 3, 512); tail != "" {
				msg += ": " + tail
			}
			g.mu.Lock()
			if g.err == nil {
				g.err = fmt.Errorf("sudo on %q: %s", g.cl.name, g.cl.connErrMsg(msg))
			}
			g.mu.Unlock()
			g.once.Do(func() { close(g.open) })
			return
		}
	}
}

// sudoPassword returns the password to answer sudo's prompt with.
func (cl *Client) sudoPassword(ctx context.Context) (string, error) {
	cl.sudoMu.Lock()
	defer cl.sudoMu.Unlock()
	if cl.sudoPass != nil {
		return *cl.sudoPass, nil
	}
	if f := cl.cfg.SudoPassword; f != nil {
		pw, err := f(ctx, cl.name)
		if err != nil {
			return "", fmt.Errorf("sudo on %q: get password: %w", cl.name, err)
		}
		return pw, nil
	}
	if pw := cl.cfg.getenv("DEPLOY_SUDO_PASSWORD"); pw != "" {
		return pw, nil
	}
	return "", fmt.Errorf("sudo on %q asks for a password: %w", cl.name, ErrSudoPasswordNeeded)
}

// ErrSudoPasswordNeeded reports that sudo asked for a password and none was
// available (no Config.SudoPassword, DEPLOY_SUDO_PASSWORD empty). Set one,
// or allow the user NOPASSWD in sudoers.
var ErrSudoPasswordNeeded = errors.New("no sudo password available (set DEPLOY_SUDO_PASSWORD or allow NOPASSWD)")

func (cl *Client) cacheSudoPassword(pw *string) {
	cl.sudoMu.Lock()
	cl.sudoPass = pw
	cl.sudoMu.Unlock()
}

func (cl *Client) connErrMsg(msg string) string {
	if d := cl.Err(); d != nil {
		return msg + " (" + d.Error() + ")"
	}
	return msg
}

// gatedWriter is a sudo session's stdin as the caller sees it.
type gatedWriter struct {
	g  *sudoGate
	w  io.WriteCloser
	cl *Client
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	if err := w.g.wait(); err != nil {
		return 0, err
	}
	n, err := w.w.Write(p)
	if err != nil {
		err = w.cl.connErr(err)
	}
	return n, err
}

// Close sends EOF once the command has started (never before the password).
func (w *gatedWriter) Close() error {
	if err := w.g.wait(); err != nil {
		return nil
	}
	return w.w.Close()
}
