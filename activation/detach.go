package activation

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/declarative/deploy/agentapi"
)

// The three processes of an activation (see the package doc): the front
// ([Start]), the worker ([RunWorker], deploy-agent activate-worker) and the
// watchdog ([RunWatchdog], deploy-agent watchdog). Where systemd runs, the
// worker and the watchdog are transient units (deploy-activate-ID,
// deploy-watchdog-ID), else setsid processes. The front and the worker
// start this process's executable again: they are meant to run in
// deploy-agent.

// StartOptions says how [Start] runs an activation. Its zero value detaches
// the worker, reads no token, and discards the log.
type StartOptions struct {
	// NoDetach starts the worker as a plain child of this process, in its
	// session, not in a unit or session of its own (debugging).
	NoDetach bool
	// Token is where the confirmation token is read (its first line, see
	// [ReadToken]) when the request's ConfirmTimeout is not 0: the
	// operator's stdin.
	Token io.Reader
	// Log receives the activation's log as the worker writes it.
	Log io.Writer
	// Logf receives the front's own progress (the activation's id and log
	// file).
	Logf func(format string, args ...any)
}

// Start runs activation req: it must run as root; it reads the
// confirmation token when req needs one (mode dry-activate needs none),
// allocates the activation's id, records req (its ID, User when empty,
// Meta["operator"] when empty and Created are filled in), starts the
// worker and follows the activation.
//
// It returns the activation's result once there is one, or once the
// activation awaits confirmation ([OutcomeAwaiting]); that includes
// [OutcomeLockHeld] when another activation holds the lock, and
// [OutcomeFailed] when the worker and its watchdog both ended without a
// result. It returns an error, and no result, when the activation could
// not start ([*TokenError] for a missing token), or when ctx ends while
// following it (the activation goes on).
func Start(ctx context.Context, l Layout, req *Request, opts StartOptions) (*Result, error) {
	l = l.withDefaults()
	if req.Mode == ModeDryActivate {
		req.ConfirmTimeout = 0 // nothing changes, nothing to confirm
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("activate: must run as root")
	}
	if req.ConfirmTimeout > 0 {
		tok, err := ReadToken(opts.Token)
		if err != nil {
			return nil, err
		}
		req.TokenHash = HashToken(tok)
	}
	if err := l.Init(); err != nil {
		return nil, err
	}
	var lh *LockHeldError
	err := l.CheckLock()
	// A status, or a watchdog looking at the lock after its worker ended,
	// holds it for an instant; an activation holds it all along.
	for i := 0; i < 5 && errors.As(err, &lh); i++ {
		time.Sleep(100 * time.Millisecond)
		err = l.CheckLock()
	}
	if errors.As(err, &lh) {
		return &Result{V: agentapi.Version, Outcome: OutcomeLockHeld, Message: lh.Error(), Holder: lh.Holder}, nil
	}
	id, logFile, err := allocID(l)
	if err != nil {
		return nil, err
	}
	logFile.Close()
	req.ID = id
	if req.User == "" {
		req.User = UserName()
	}
	if req.Meta == nil {
		req.Meta = map[string]string{}
	}
	if req.Meta["operator"] == "" {
		req.Meta["operator"] = req.User
	}
	req.Created = time.Now().UTC()
	if err := l.WriteRequest(req); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("activate: finding this agent: %w", err)
	}
	workerArgs := []string{agentapi.VerbActivateWorker, "--id", id, "--state-dir", l.StateDir, "--run-dir", l.RunDir}
	var worker *exec.Cmd
	unit := ""
	switch {
	case opts.NoDetach:
		worker = exec.Command(exe, workerArgs...)
		if err := worker.Start(); err != nil {
			return nil, fmt.Errorf("activate: starting the worker: %w", err)
		}
	case hasSystemd():
		unit = "deploy-activate-" + id
		out, err := exec.CommandContext(ctx, "systemd-run", append([]string{"--unit=" + unit, "--collect", "--quiet",
			"--service-type=exec", "--description=deploy activation " + id,
			"--property=KillMode=mixed", "--property=TimeoutStopSec=10min", "--", exe}, workerArgs...)...).CombinedOutput()
		if err != nil {
			return l.workerNotStarted(unit, id, fmt.Errorf("activate: systemd-run: %w: %s", err, strings.TrimSpace(string(out))))
		}
	default:
		worker = exec.Command(exe, workerArgs...)
		worker.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := worker.Start(); err != nil {
			return nil, fmt.Errorf("activate: starting the worker: %w", err)
		}
	}
	if opts.Logf != nil {
		opts.Logf("activation %s (log %s)", id, l.LogFile(id))
	}
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	return follow(ctx, l, id, unit, worker, log)
}

// RunWorker is the detached half of activation id: it runs the request
// [Start] recorded with a [Worker] that logs to the activation's log and
// arms the activation's watchdog, and returns its result (never
// [OutcomeAwaiting]: the worker waits for the confirmation). It returns an
// error when it could not run the activation at all.
func RunWorker(ctx context.Context, l Layout, id string) (*Result, error) {
	l = l.withDefaults()
	req, err := l.ReadRequest(id)
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(l.LogFile(id), os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("activate-worker: finding this agent: %w", err)
	}
	w := &Worker{Layout: l, Logf: timestamped(logFile), StopWorker: stopWorker,
		Watchdog: func(id string) error { return armWatchdog(l, exe, id) }}
	res := w.Run(ctx, req)
	os.Remove(l.requestFile(id))
	return res, nil
}

// RunWatchdog is activation id's watchdog (see [Worker.Watch]), logging
// to the activation's log; its worker started it.
func RunWatchdog(ctx context.Context, l Layout, id string) error {
	l = l.withDefaults()
	logFile, err := os.OpenFile(l.LogFile(id), os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer logFile.Close()
	w := &Worker{Layout: l, Logf: timestamped(logFile), StopWorker: stopWorker}
	err = w.Watch(ctx, id)
	if !hasSystemd() {
		os.Remove(watchdogPIDFile(l, id))
	}
	return err
}

// TokenError is a confirmation token missing from, or unreadable on, the
// reader it was to come from (a usage error).
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

// ReadToken reads a confirmation token: the first line of r, at least 16
// characters once trimmed. Its errors are [*TokenError].
func ReadToken(r io.Reader) ([]byte, error) {
	if r == nil {
		r = strings.NewReader("")
	}
	// A *bufio.Reader is read one line only: what follows the token (a
	// rejection's reason) stays for the caller.
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(io.LimitReader(r, 4096))
	}
	line, err := br.ReadString('\n')
	if err != nil && err != io.EOF {
		return nil, &TokenError{fmt.Errorf("reading the confirmation token from stdin: %w", err)}
	}
	tok := strings.TrimSpace(line)
	if len(tok) < 16 {
		return nil, &TokenError{errors.New("no confirmation token on stdin (at least 16 characters; with --confirm-timeout 0 none is needed)")}
	}
	return []byte(tok), nil
}

// UserName is who runs this process, as the agent records it with
// activations and locks: $SUDO_USER, $USER or $LOGNAME, else the user's
// name, else the uid.
func UserName() string {
	for _, k := range []string{"SUDO_USER", "USER", "LOGNAME"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

// Unit names of an activation's worker and watchdog.
func workerUnit(id string) string   { return "deploy-activate-" + id + ".service" }
func watchdogUnit(id string) string { return "deploy-watchdog-" + id + ".service" }

// unitAlive reports whether a unit is running or about to (activating,
// also between automatic restarts, deactivating, reloading).
func unitAlive(ctx context.Context, unit string) bool {
	out, err := exec.CommandContext(ctx, "systemctl", "show", "--property=ActiveState", "--value", unit).Output()
	if err != nil {
		return false
	}
	switch strings.TrimSpace(string(out)) {
	case "active", "activating", "deactivating", "reloading":
		return true
	}
	return false
}

// watchdogPIDFile holds the pid of a watchdog started without systemd.
func watchdogPIDFile(l Layout, id string) string {
	return filepath.Join(l.requestDir(), id+".watchdog")
}

// watchdogAlive reports whether activation id's watchdog runs.
func watchdogAlive(ctx context.Context, l Layout, id string) bool {
	if hasSystemd() {
		return unitAlive(ctx, watchdogUnit(id))
	}
	data, err := os.ReadFile(watchdogPIDFile(l, id))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return err == nil && pid > 0 && syscall.Kill(pid, 0) == nil
}

// armWatchdog starts activation id's watchdog (deploy-agent watchdog):
// on systemd a transient unit that systemd restarts whenever it dies (no
// start limit), else a setsid process (not restarted).
func armWatchdog(l Layout, exe, id string) error {
	args := []string{agentapi.VerbWatchdog, "--id", id, "--state-dir", l.StateDir, "--run-dir", l.RunDir}
	if hasSystemd() {
		out, err := exec.Command("systemd-run", append([]string{"--unit=" + watchdogUnit(id), "--collect", "--quiet",
			"--service-type=exec", "--description=deploy activation " + id + " watchdog",
			"--property=Restart=on-failure", "--property=RestartSec=1", "--property=StartLimitIntervalSec=0",
			"--property=TimeoutStopSec=10min", "--", exe}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("systemd-run: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	cmd := exec.Command(exe, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Release()
	return os.WriteFile(watchdogPIDFile(l, id), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
}

// stopWorker kills activation id's worker (main process pid), dead or
// hung, and whatever is left of it, and confirms that nothing of it runs
// any more: every process of its unit gets SIGKILL (KillMode=mixed spares
// the worker's children when only the worker itself is stopped; SIGKILL
// also ends a stopped process), the unit is stopped, and it must then be
// inactive and the worker's process gone. Without systemd it kills the
// worker's process group (the worker leads its session) and waits for the
// process to be gone. It returns an error when it cannot confirm that.
func stopWorker(id string, pid int) error {
	if hasSystemd() {
		unit := workerUnit(id)
		exec.Command("systemctl", "kill", "--signal=SIGKILL", unit).Run()
		// Stopping a unit that is already gone (collected) fails; what
		// counts is that it does not run.
		out, stopErr := exec.Command("systemctl", "stop", unit).CombinedOutput()
		if unitAlive(context.Background(), unit) {
			return fmt.Errorf("%s still runs after SIGKILL and systemctl stop: %v: %s", unit, stopErr, strings.TrimSpace(string(out)))
		}
	} else if pid > 0 {
		syscall.Kill(-pid, syscall.SIGKILL)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if pid > 0 && !processGone(pid, 10*time.Second) {
		return fmt.Errorf("the worker's process %d is still there 10s after SIGKILL", pid)
	}
	return nil
}

// processGone waits up to wait for process pid to end: to be gone or a
// zombie (which can no longer act).
func processGone(pid int, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			// pid (comm) S ...: the state follows the last ')'.
			if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// workerNotStarted is the outcome of activation id whose worker's unit
// did not start (systemd-run failed: the worker died before it ran, or
// systemd refused the unit). A worker that never ran recorded nothing and
// changed nothing, and nobody will finish it: its result, written now, is
// a failure saying so, and the front prints it (an operator must not take
// another activation's outcome for this one's). If the unit runs after all,
// or the activation is recorded, err stands: the worker finishes it.
func (l Layout) workerNotStarted(unit, id string, err error) (*Result, error) {
	state, serr := exec.Command("systemctl", "show", "-P", "ActiveState", unit+".service").Output()
	switch strings.TrimSpace(string(state)) {
	case "active", "activating", "deactivating", "reloading":
		return nil, err
	}
	if serr != nil {
		return nil, err
	}
	if st, rerr := l.ReadState(); rerr != nil || (st.Activation != nil && st.Activation.ID == id) {
		return nil, err
	}
	res := &Result{V: agentapi.Version, ID: id, Outcome: OutcomeFailed,
		Message: fmt.Sprintf("the activation worker did not start (%v); nothing was changed", err), Log: l.LogFile(id)}
	if werr := l.writeResult(res); werr != nil {
		return nil, errors.Join(err, werr)
	}
	return res, nil
}

// hasSystemd reports whether systemd runs here and systemd-run is there.
func hasSystemd() bool {
	fi, err := os.Stat("/run/systemd/system")
	if err != nil || !fi.IsDir() {
		return false
	}
	_, err = exec.LookPath("systemd-run")
	return err == nil
}

// allocID creates the next log file log/activate-N.log exclusively.
func allocID(l Layout) (string, *os.File, error) {
	entries, err := os.ReadDir(l.LogDir())
	if err != nil {
		return "", nil, err
	}
	n := 0
	for _, e := range entries {
		s, ok := strings.CutPrefix(e.Name(), "activate-")
		if !ok {
			continue
		}
		s, _, _ = strings.Cut(s, ".")
		if k, err := strconv.Atoi(s); err == nil && k > n {
			n = k
		}
	}
	for tries := 0; tries < 100; tries++ {
		n++
		id := strconv.Itoa(n)
		f, err := os.OpenFile(l.LogFile(id), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", nil, fmt.Errorf("activate: %w", err)
		}
		return id, f, nil
	}
	return "", nil, errors.New("activate: cannot allocate an activation id")
}

// follow copies the worker's log to log until the activation awaits
// confirmation or has a result.
func follow(ctx context.Context, l Layout, id, unit string, worker *exec.Cmd, log io.Writer) (*Result, error) {
	f, err := os.Open(l.LogFile(id))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	exited := make(chan struct{})
	if worker != nil {
		go func() { worker.Wait(); close(exited) }()
	}
	lastAlive := time.Now()
	var deadSince, lastWatch time.Time
	dead := false
	for {
		io.Copy(log, f)
		res, err := l.ReadResult(id)
		if err != nil {
			return nil, err
		}
		if res != nil {
			io.Copy(log, f)
			return res, nil
		}
		if st, err := l.ReadState(); err == nil && st.Activation != nil && st.Activation.ID == id && st.Activation.Phase == PhaseAwaiting {
			io.Copy(log, f)
			return &Result{V: agentapi.Version, ID: id, Generation: st.Activation.Generation, Outcome: OutcomeAwaiting,
				Message: "awaiting confirmation until " + st.Activation.Deadline.Format(time.RFC3339), Log: l.LogFile(id), Warnings: st.Activation.Warnings}, nil
		}
		select {
		case <-exited:
			dead = true
		default:
		}
		if unit != "" && time.Since(lastAlive) > time.Second {
			lastAlive = time.Now()
			if !unitAlive(ctx, unit) {
				dead = true
			}
		}
		if dead && time.Since(lastWatch) > time.Second {
			lastWatch = time.Now()
			if res, _ := l.ReadResult(id); res != nil {
				continue
			}
			// The worker died: its watchdog finishes the activation (it
			// rolls back, or waits for the confirmation); follow it.
			if watchdogAlive(ctx, l, id) {
				deadSince = time.Time{}
			} else if deadSince.IsZero() {
				deadSince = time.Now()
			} else if time.Since(deadSince) > 5*time.Second {
				io.Copy(log, f)
				res := &Result{V: agentapi.Version, ID: id, Outcome: OutcomeFailed, Message: "the activation worker and its watchdog ended without a result (see the log and the journal)", Log: l.LogFile(id)}
				// A worker that died before it armed its watchdog had not
				// recorded the activation either, so it changed nothing and
				// nobody will finish it: its result is this one. (One that
				// recorded it is finished by the next activation, which
				// looks for activations without a result.)
				if st, err := l.ReadState(); err == nil && (st.Activation == nil || st.Activation.ID != id) {
					res.Message += "; it had not begun, so nothing was changed"
					if err := l.writeResult(res); err != nil {
						return nil, err
					}
				}
				return res, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("activate: %w (the activation goes on; see deploy-agent status)", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// timestamped logs lines with the time of day (UTC, to the millisecond)
// to w: the format of an activation's log.
func timestamped(w io.Writer) func(string, ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(w, "%s %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}
