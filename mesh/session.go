package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// stderrTail is how much of a command's standard error is kept for errors.
const stderrTail = 64 << 10

// Run runs cmd in a new session and waits for it to exit. The arguments are
// shell-quoted, so the remote login shell sees exactly cmd; with
// Target.Sudo the command runs through sudo. stdin (may be nil) is copied to
// the command; stdout and stderr (may be nil) receive its output.
//
// A non-zero exit is an *[ExitError] carrying the last 64 KiB of stderr. A
// dead connection is its *[UnreachableError]. Cancelling ctx kills the
// command and closes the session; Run then returns ctx's error, wrapped.
func (cl *Client) Run(ctx context.Context, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	s, err := cl.start(ctx, cmd, stderr, true)
	if err != nil {
		return err
	}
	defer s.Close()
	go func() {
		if stdin != nil {
			io.Copy(s.Stdin, stdin)
		}
		s.Stdin.Close()
	}()
	if stdout == nil {
		stdout = io.Discard
	}
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(stdout, s.Stdout)
		copied <- err
	}()
	werr := s.Wait()
	if ctx.Err() != nil && errors.Is(werr, ctx.Err()) {
		// The session was abandoned; its stdout may never end.
		return werr
	}
	cerr := <-copied
	if werr != nil {
		return werr
	}
	if cerr != nil {
		return fmt.Errorf("run %q on %q: copy stdout: %w", s.cmd, cl.name, cerr)
	}
	return nil
}

// Output runs cmd like [Client.Run] and returns its standard output.
func (cl *Client) Output(ctx context.Context, cmd []string) ([]byte, error) {
	var b strings.Builder
	err := cl.Run(ctx, cmd, nil, &b, nil)
	return []byte(b.String()), err
}

// Session is a command started with [Client.Start], streaming in both
// directions.
type Session struct {
	// Stdin is the command's standard input; Close it to send EOF. With
	// sudo, writes wait until sudo has accepted the password and started
	// the command, so nothing written here ever reaches sudo.
	Stdin io.WriteCloser
	// Stdout is the command's standard output. Read it concurrently with
	// writing Stdin, or the command may block. If the connection dies, a
	// read fails with the connection's error instead of returning EOF.
	Stdout io.Reader

	cl     *Client
	sess   *ssh.Session
	cmd    string
	ctx    context.Context
	stderr *tailBuffer
	gate   *sudoGate // nil without sudo

	stderrDone chan struct{}
	exited     chan struct{} // closed when sess.Wait returned, with exitErr
	exitErr    error
	stopCtx    func() bool
	waitOnce   sync.Once
	waitErr    error
}

// Start starts cmd in a new session and returns at once, for streaming.
// Arguments are shell-quoted and sudo-wrapped as for [Client.Run]; with
// sudo, the password is written on stdin before anything written to
// Session.Stdin, only when sudo asks for it. Cancelling ctx kills the
// command and closes the session. Call [Session.Wait] (or Close) to release
// it.
func (cl *Client) Start(ctx context.Context, cmd []string) (*Session, error) {
	return cl.start(ctx, cmd, nil, true)
}

// Stderr returns the last 64 KiB the command wrote to standard error so far.
func (s *Session) Stderr() []byte { return s.stderr.Bytes() }

// Wait waits for the command to exit and for its standard error to end,
// and returns nil for exit status 0, an *[ExitError] otherwise, or the
// connection's *[UnreachableError]. Standard output must be read to EOF
// (or abandoned with Close) for the command to finish.
func (s *Session) Wait() error {
	s.waitOnce.Do(func() { s.waitErr = s.wait() })
	return s.waitErr
}

func (s *Session) wait() error {
	var err error
	select {
	case <-s.exited:
		err = s.exitErr
		<-s.stderrDone
	case <-s.ctx.Done():
		// Do not wait for the remote side: sshd keeps a session open until
		// its process exits, and a process that ignores its closed pipes
		// (sleep) would hold us.
		s.Close()
		return fmt.Errorf("run %q on %q: %w", s.cmd, s.cl.name, s.ctx.Err())
	}
	if s.stopCtx != nil {
		s.stopCtx()
	}
	if s.gate != nil {
		if gerr := s.gate.failure(); gerr != nil {
			return gerr
		}
	}
	if err == nil {
		return nil
	}
	if cerr := s.ctx.Err(); cerr != nil {
		return fmt.Errorf("run %q on %q: %w", s.cmd, s.cl.name, cerr)
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		x := &ExitError{Host: s.cl.name, Cmd: s.cmd, Code: ee.ExitStatus(), Stderr: string(s.stderr.Bytes())}
		if ee.Signal() != "" {
			x.Code, x.Signal = -1, ee.Signal()
		}
		return x
	}
	// The session ended without an exit status: almost always because the
	// connection went away. Give the watcher a moment to say so.
	select {
	case <-s.cl.dead:
		return s.cl.deadErr
	case <-time.After(time.Second):
	}
	return fmt.Errorf("run %q on %q: %w", s.cmd, s.cl.name, s.cl.connErr(err))
}

// Close closes the session and asks the server to kill the command:
// SIGKILL, or with sudo SIGTERM (which sudo relays to the command; a
// SIGKILL would kill only sudo). OpenSSH delivers signals only for
// non-root logins; otherwise a command that neither reads its closed stdin
// nor writes may run on until it ends by itself (as with the ssh command).
func (s *Session) Close() error {
	if s.gate != nil {
		s.sess.Signal(ssh.SIGTERM)
	} else {
		s.sess.Signal(ssh.SIGKILL)
	}
	s.sess.Close()
	return nil
}

// start opens a session and starts cmd. extraStderr (may be nil) gets the
// command's stderr besides the tail buffer. With bind, cancelling ctx
// closes the session; otherwise ctx only bounds the start.
func (cl *Client) start(ctx context.Context, cmd []string, extraStderr io.Writer, bind bool) (*Session, error) {
	if len(cmd) == 0 {
		return nil, fmt.Errorf("run on %q: empty command", cl.name)
	}
	line := ShellQuote(cmd)
	var gate *sudoGate
	remote := line
	if cl.target.Sudo {
		gate = newSudoGate(cl, ctx)
		remote = gate.wrap(cmd)
	}

	var sess *ssh.Session
	err := cl.await(ctx, "open session", func() error {
		var err error
		sess, err = cl.ssh.NewSession()
		return err
	}, func() {
		if sess != nil {
			sess.Close()
		}
	})
	if err != nil {
		return nil, err
	}
	cl.cfg.Counts.add(countKey(cl.target), 0, 1)
	stdin, err1 := sess.StdinPipe()
	stdout, err2 := sess.StdoutPipe()
	stderr, err3 := sess.StderrPipe()
	if err := errors.Join(err1, err2, err3); err != nil {
		sess.Close()
		return nil, fmt.Errorf("run %q on %q: %w", line, cl.name, err)
	}
	err = cl.await(ctx, "exec", func() error { return sess.Start(remote) }, func() { sess.Close() })
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("run %q: %w", line, err)
	}

	s := &Session{
		Stdout:     &connReader{r: stdout, cl: cl},
		cl:         cl,
		sess:       sess,
		cmd:        line,
		ctx:        ctx,
		stderr:     &tailBuffer{max: stderrTail},
		gate:       gate,
		stderrDone: make(chan struct{}),
		exited:     make(chan struct{}),
	}
	go func() {
		s.exitErr = sess.Wait()
		close(s.exited)
	}()
	if !bind {
		s.ctx = context.WithoutCancel(ctx)
	}
	var errOut io.Writer = s.stderr
	if extraStderr != nil {
		errOut = io.MultiWriter(s.stderr, extraStderr)
	}
	if gate != nil {
		gate.sess, gate.stdin = sess, stdin
		s.Stdin = &gatedWriter{g: gate, w: stdin, cl: cl}
		go func() {
			defer close(s.stderrDone)
			gate.pump(stderr, errOut)
		}()
	} else {
		s.Stdin = &connWriter{w: stdin, cl: cl}
		go func() {
			defer close(s.stderrDone)
			io.Copy(errOut, stderr)
		}()
	}
	if bind {
		s.stopCtx = context.AfterFunc(ctx, func() { s.Close() })
	}
	return s, nil
}

// connReader turns the EOF that a dead connection leaves on a channel into
// the connection's error, so a cut is never mistaken for a complete stream.
type connReader struct {
	r  io.Reader
	cl *Client
}

func (r *connReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err == io.EOF {
		if d := r.cl.Err(); d != nil {
			return n, d
		}
	}
	return n, err
}

// connWriter reports the connection's error for a write on a dead
// connection.
type connWriter struct {
	w  io.WriteCloser
	cl *Client
}

func (w *connWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		err = w.cl.connErr(err)
	}
	return n, err
}

func (w *connWriter) Close() error { return w.w.Close() }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.max {
		t.b = append(t.b[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.b) + len(p) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	t.b = append(t.b, p...)
	return n, nil
}

// Bytes returns a copy of the kept bytes.
func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.b...)
}

var plainWord = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// ShellQuote quotes args for a POSIX shell so that the shell's word
// splitting yields exactly args: plain words stay as they are, everything
// else is single-quoted.
func ShellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if plainWord.MatchString(a) {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
