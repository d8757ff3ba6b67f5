package agentclient

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"

	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
)

// CopyOptions tunes [Client.Copy].
type CopyOptions struct {
	// Compress asks for zstd on the wire.
	Compress bool
	// Progress, if set, receives transfer progress.
	Progress func(closure.Progress)
	// Logf, if set, receives a line per step (default: the client's).
	Logf func(format string, args ...any)
	// DryRun only finds out what a copy would send: nothing is uploaded or
	// bootstrapped. Without an agent on the target, every path counts as
	// missing.
	DryRun bool
	// Cache, if set, has the agent fetch what it can from a binary cache
	// first (verified against the cache's keys); only the rest is sent.
	Cache *closure.CacheSpec
	// Keys are the public keys whose signatures vouch for paths that are
	// not content-addressed (Nix packages).
	Keys []string

	pin []string // the roots, pinned on the host
}

// CopyResult says what [Client.Copy] did.
type CopyResult struct {
	Paths        int  // paths in the closure
	Bootstrapped bool // the agent was uploaded and installed first
	Stats        *closure.TransferStats
}

// CopyError is a failed copy: the phase it failed in and, when the agent
// said something, the last lines of its stderr.
type CopyError struct {
	Phase     string // "bootstrap" or "transfer"
	Err       error
	AgentLogs string
}

func (e *CopyError) Error() string {
	msg := e.Err.Error()
	if !strings.HasPrefix(msg, e.Phase+":") {
		msg = e.Phase + ": " + msg
	}
	if e.AgentLogs != "" {
		msg += "\nagent: " + strings.ReplaceAll(strings.TrimSpace(e.AgentLogs), "\n", "\nagent: ")
	}
	return msg
}

func (e *CopyError) Unwrap() error { return e.Err }

// Copy makes the closure of roots valid in the host's store, sending from
// the local store only what the host lacks. agentPath is a valid local
// agent store path (see [agentapi.AgentName]); when the host lacks it, it
// is bootstrapped first. An interrupted copy is completed by calling Copy
// again.
func (c *Client) Copy(ctx context.Context, roots []string, agentPath string, opts CopyOptions) (*CopyResult, error) {
	local := c.Store
	if want := agentapi.StoreDir(c.stateDir()); want != local.StoreDir {
		return nil, fmt.Errorf("copy: the target's store is %q but these paths are for %q", want, local.StoreDir)
	}
	if opts.Logf == nil {
		opts.Logf = c.logf
	}
	logf := opts.Logf
	conn, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	cl, err := local.Closure(append([]string{agentPath}, roots...)...)
	if err != nil {
		return nil, fmt.Errorf("copy: %w", err)
	}
	paths := make([]string, len(cl))
	for i, pi := range cl {
		paths[i] = pi.Path
	}
	res := &CopyResult{Paths: len(paths)}
	opts.pin = roots
	// The receive command checks for the agent itself (exit 99 when it is
	// missing), so a copy to a host that has the agent, and a no-op above
	// all, is one session: the closure check's one round trip.
	stats, missing, err := c.receive(ctx, conn, paths, agentPath, opts)
	if missing {
		if opts.DryRun {
			res.Stats = &closure.TransferStats{Wanted: len(paths), Missing: len(paths), MissingPaths: paths}
			for _, pi := range cl {
				res.Stats.MissingBytes += pi.NarSize
			}
			return res, nil
		}
		res.Bootstrapped = true
		if err := c.bootstrapWith(ctx, conn, agentPath, logf); err != nil {
			return res, err
		}
		stats, missing, err = c.receive(ctx, conn, paths, agentPath, opts)
		if err == nil && missing {
			err = &CopyError{Phase: "bootstrap", Err: fmt.Errorf("the agent %q is still missing after its installation", agentPath)}
		}
	}
	res.Stats = stats
	if err != nil {
		return res, err
	}
	logf("copied %d of %d paths (%d NAR bytes)", stats.Imported, len(paths), stats.NarBytes)
	if !opts.DryRun && stats.Pinned < stats.PinAsked {
		logf("the host's agent (%s) did not keep the copied system as a pushed root: a gc on the host before its activation may delete it (upgrade the agent)", stats.Agent)
	}
	return res, nil
}

// connectionCause explains a transfer error that came from the connection
// (a closed socket, EOF) by the client's own verdict on the connection,
// such as "no reply to 3 keepalives": that names the host and the reason.
// Errors the agent reported, and protocol errors, are returned as they are.
func connectionCause(client *mesh.Client, err error) error {
	var ae *closure.AgentError
	var pe *closure.ProtocolError
	var hm *closure.HashMismatchError
	if errors.As(err, &ae) || errors.As(err, &pe) || errors.As(err, &hm) {
		return err
	}
	select {
	case <-client.Dead():
	case <-time.After(verdictWait):
		return err
	}
	if cause := client.Err(); cause != nil {
		var ue *mesh.UnreachableError
		if errors.As(cause, &ue) {
			return cause
		}
	}
	return err
}

// verdictWait bounds how long a failed transfer waits for the connection's
// keepalive verdict; the keepalive itself has already been running.
var verdictWait = 10 * time.Second

// receive runs one transfer through the agent's receive command, checked
// for on the host in the same session. missing reports that the agent is
// not installed (nothing was transferred).
func (c *Client) receive(ctx context.Context, conn *mesh.Client, paths []string, agentPath string, opts CopyOptions) (*closure.TransferStats, bool, error) {
	// The roots are pinned on the host (pushed closures' GC roots) until
	// they are activated or the pin expires: a gc before the activation
	// keeps them.
	argv := c.command([]agentapi.Agent{agentapi.AgentAt(agentPath)}, agentapi.ReceiveCmd{StateDir: c.stateDir()}.Args()...)
	stats, missing, stderr, err := sendThrough(ctx, c.Store, conn, argv, paths,
		closure.SendOptions{Compress: opts.Compress, Progress: opts.Progress, DryRun: opts.DryRun, Cache: opts.Cache, Keys: opts.Keys, Pin: opts.pin})
	var se *startError
	switch {
	case errors.As(err, &se):
		return nil, false, &CopyError{Phase: "transfer", Err: se.err}
	case err != nil:
		return stats, false, &CopyError{Phase: "transfer", Err: connectionCause(conn, err), AgentLogs: tail(stderr, 10)}
	}
	return stats, missing, nil
}

// startError is sendThrough's error when the session did not start.
type startError struct{ err error }

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// sendThrough runs argv on the host, a command that ends in an agent's
// receive (or exits agentapi.ExitNoAgent without a word), and sends paths to
// it. missing reports that exit: nothing was transferred. stderr is the
// command's stderr; a session that did not start is a *startError.
func sendThrough(ctx context.Context, local *closure.Store, client *mesh.Client, argv, paths []string, opts closure.SendOptions) (stats *closure.TransferStats, missing bool, stderr string, err error) {
	sess, err := client.Start(ctx, argv)
	if err != nil {
		return nil, false, "", &startError{err}
	}
	defer sess.Close()
	conn := &sessionConn{Reader: sess.Stdout, Writer: sess.Stdin, close: sess.Close}
	stats, err = closure.Send(ctx, local, paths, conn, opts)
	sess.Stdin.Close()
	werr := sess.Wait()
	var ee *mesh.ExitError
	if errors.As(werr, &ee) && ee.Code == agentapi.ExitNoAgent && stats != nil && stats.Agent == "" {
		return nil, true, string(sess.Stderr()), nil
	}
	if err == nil {
		err = werr
	}
	return stats, false, string(sess.Stderr()), err
}

type sessionConn struct {
	io.Reader
	io.Writer
	close func() error
}

func (c *sessionConn) Close() error { return c.close() }

// bootstrap installs agentPath on a host that lacks it.
func (c *Client) bootstrap(ctx context.Context, conn *mesh.Client, agentPath string) error {
	return c.bootstrapWith(ctx, conn, agentPath, c.logf)
}

// bootstrapWith installs agentPath on a host that lacks it (receive said
// so): by the host's older agent when it has one, else as a bare binary
// that registers itself.
func (c *Client) bootstrapWith(ctx context.Context, conn *mesh.Client, agentPath string, logf func(string, ...any)) error {
	logf("bootstrapping %s", agentPath)
	switch via, err := c.upgradeAgent(ctx, conn, agentPath); {
	case err == nil:
		logf("the host's agent %s received %s", via, agentPath)
		return nil
	case !errors.Is(err, errNoOldAgent):
		logf("the host's agent %s could not receive %s (%v); uploading it", via, agentPath, err)
	}
	local, stateDir := c.Store, c.stateDir()
	info, err := local.Info(agentPath)
	if err != nil {
		return err
	}
	bin := agentapi.AgentExecutable(local.RealPath(agentPath))
	storeDir := agentapi.StoreDir(stateDir)
	var rnd [12]byte
	rand.Read(rnd[:])
	upload := path.Join(storeDir, closure.UploadPrefix+hex.EncodeToString(rnd[:]))
	var stdout, stderr bytes.Buffer
	install := append([]string{upload}, agentapi.InstallSelfCmd{StateDir: stateDir, NarHash: info.NarHashString()}.Args()...)
	err = uploadCompressed(ctx, conn, bin, upload, install, &stdout, &stderr)
	var ee *mesh.ExitError
	if errors.As(err, &ee) && ee.Code == agentapi.ExitNoGzip {
		logf("no gzip on the host: uploading the bare agent binary over SFTP")
		stdout.Reset()
		stderr.Reset()
		if err := conn.Run(ctx, []string{"mkdir", "-p", storeDir}, nil, io.Discard, io.Discard); err != nil {
			return &CopyError{Phase: "bootstrap", Err: fmt.Errorf("creating %q: %w", storeDir, err)}
		}
		if err := uploadFile(ctx, conn, bin, upload); err != nil {
			return &CopyError{Phase: "bootstrap", Err: err}
		}
		err = conn.Run(ctx, install, nil, &stdout, &stderr)
	}
	if err != nil {
		conn.Run(ctx, []string{"rm", "-f", upload}, nil, io.Discard, io.Discard)
		return &CopyError{Phase: "bootstrap", Err: fmt.Errorf("install-self: %w", err), AgentLogs: tail(stderr.String(), 10)}
	}
	if got := strings.TrimSpace(stdout.String()); got != agentPath {
		return &CopyError{Phase: "bootstrap", Err: fmt.Errorf("install-self registered %q, want %q", got, agentPath)}
	}
	return nil
}

// uploadScript makes the store directory, writes the gzip stream on stdin
// to a new private file ($1, created exclusively) and runs the rest of its
// arguments (the uploaded agent's install-self), all in one session.
var uploadScript = fmt.Sprintf(`command -v gzip >/dev/null 2>&1 || exit %d
mkdir -p "${1%%/*}" || exit 1
umask 077
set -C
gzip -dc > "$1" && chmod 700 "$1" || exit 1
exec "$@"`, agentapi.ExitNoGzip)

// gzipped caches each agent binary's gzip stream (a few MB): a fleet's
// first deploy bootstraps many hosts with the same agent, all at once, and
// compressing it once per host was most of the operator's CPU time in a
// 10-host first deploy (issue 27). The first caller compresses; the others
// wait for its bytes.
var gzipped sync.Map // binary path -> *gzipOnce

type gzipOnce struct {
	once sync.Once
	data []byte
	err  error
}

// gzipFile returns src gzip-compressed (compressed once per process).
func gzipFile(src string) ([]byte, error) {
	v, _ := gzipped.LoadOrStore(src, &gzipOnce{})
	g := v.(*gzipOnce)
	g.once.Do(func() {
		raw, err := os.ReadFile(src)
		if err != nil {
			g.err = err
			return
		}
		buf := bytes.NewBuffer(make([]byte, 0, len(raw)/2))
		zw, _ := gzip.NewWriterLevel(buf, gzip.BestSpeed)
		zw.Write(raw)
		if err := zw.Close(); err != nil {
			g.err = err
			return
		}
		g.data = buf.Bytes()
	})
	if g.err != nil {
		gzipped.CompareAndDelete(src, g) // a later call tries again
	}
	return g.data, g.err
}

// uploadCompressed sends the binary src gzip-compressed (the agent is about
// 40% of its size so) to upload on the host and runs install there, in one
// session. A host without gzip exits agentapi.ExitNoGzip, having changed
// nothing.
func uploadCompressed(ctx context.Context, client *mesh.Client, src, upload string, install []string, stdout, stderr io.Writer) error {
	data, err := gzipFile(src)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	return client.Run(ctx, append([]string{"sh", "-c", uploadScript, "sh"}, install...), bytes.NewReader(data), stdout, stderr)
}

// errNoOldAgent is upgradeAgent's answer for a host with no agent at all.
var errNoOldAgent = errors.New("no agent on the host")

// upgradeAgent installs agentPath on a host that runs an older agent by
// having that agent receive it, compressed, in one session: an upgrade
// (every new release of deploy) then costs a few MB and one round trip
// instead of an upload of the bare binary and its installation. It returns
// the old agent's version; errNoOldAgent when the host has none, another
// error when the old one could not do it (an older transfer protocol, for
// one), and then the caller uploads the binary instead.
func (c *Client) upgradeAgent(ctx context.Context, conn *mesh.Client, agentPath string) (string, error) {
	argv := c.command([]agentapi.Agent{agentapi.AnyAgent}, agentapi.ReceiveCmd{StateDir: c.stateDir()}.Args()...)
	stats, missing, _, err := sendThrough(ctx, c.Store, conn, argv, []string{agentPath}, closure.SendOptions{Compress: true})
	if missing {
		return "", errNoOldAgent
	}
	via := ""
	if stats != nil {
		via = stats.Agent
	}
	return via, err
}

// uploadFile copies a local file to a new private file on the target with
// SFTP: created exclusively with mode 0700, written, synced, closed.
func uploadFile(ctx context.Context, client *mesh.Client, src, dst string) error {
	sc, err := client.SFTP(ctx)
	if err != nil {
		return fmt.Errorf("sftp: %w", err)
	}
	defer sc.Close()
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer in.Close()
	f, err := sc.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return fmt.Errorf("upload %q: %w", dst, err)
	}
	if err := f.Chmod(0o700); err != nil {
		f.Close()
		return fmt.Errorf("upload %q: %w", dst, err)
	}
	if _, err := io.Copy(f, in); err != nil {
		f.Close()
		sc.Remove(dst)
		return fmt.Errorf("upload %q: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		sc.Remove(dst)
		return fmt.Errorf("upload %q: %w", dst, err)
	}
	return nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
