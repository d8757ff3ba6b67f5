package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
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

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

func layoutFlags(fs *flag.FlagSet) func() activation.Layout {
	stateDir := stateDirFlag(fs)
	runDir := fs.String("run-dir", agentapi.DefaultRunDir, "the agent's runtime `directory` (lock, state, confirmations)")
	return func() activation.Layout { return activation.Layout{StateDir: *stateDir, RunDir: *runDir} }
}

type metaFlag map[string]string

func (m metaFlag) String() string { return "" }
func (m metaFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("--meta %q: want key=value", s)
	}
	m[k] = v
	return nil
}

func usageErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &exitError{code: exitUsage, err: err}
}

// runActivate is the front of an activation: it runs in the operator's SSH
// session, hands the request to a detached worker (a transient systemd
// unit, or a setsid process without systemd), and follows the worker's log
// to stderr until the activation awaits confirmation or ends. It prints
// one JSON result line on stdout.
func runActivate(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("activate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	mode := fs.String("mode", activation.ModeSwitch, "switch, boot, test or dry-activate")
	confirmTimeout := fs.Duration("confirm-timeout", 30*time.Second, "roll back unless confirmed within this `duration` (0: no confirmation); the token is read from stdin")
	meta := metaFlag{}
	fs.Var(meta, "meta", "`key=value` recorded with the generation (operator, git_rev, message); repeatable")
	force := fs.Bool("force", false, "replace unmanaged files and symlinks")
	noDetach := fs.Bool("no-detach", false, "run the activation in this process (debugging)")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() != 1 {
		return usageErr(errors.New("activate: want exactly one SYSTEM store path"))
	}
	switch *mode {
	case activation.ModeSwitch, activation.ModeBoot, activation.ModeTest, activation.ModeDryActivate:
	default:
		return usageErr(fmt.Errorf("activate: unknown mode %q", *mode))
	}
	req := &activation.Request{System: filepath.Clean(fs.Arg(0)), Mode: *mode, ConfirmTimeout: *confirmTimeout, Meta: meta, Force: *force}
	if *mode == activation.ModeDryActivate {
		req.ConfirmTimeout = 0
	}
	return startActivation(ctx, layout(), req, stdin, stdout, stderr, *noDetach)
}

func operatorName() string {
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

// readToken reads the confirmation token: the first line of stdin.
func readToken(stdin io.Reader) ([]byte, error) {
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("reading the confirmation token from stdin: %w", err)
	}
	tok := strings.TrimSpace(line)
	if len(tok) < 16 {
		return nil, errors.New("no confirmation token on stdin (at least 16 characters; with --confirm-timeout 0 none is needed)")
	}
	return []byte(tok), nil
}

func startActivation(ctx context.Context, l activation.Layout, req *activation.Request, stdin io.Reader, stdout, stderr io.Writer, noDetach bool) error {
	if os.Geteuid() != 0 {
		return errors.New("activate: must run as root")
	}
	if req.ConfirmTimeout > 0 {
		tok, err := readToken(stdin)
		if err != nil {
			return usageErr(err)
		}
		req.TokenHash = activation.HashToken(tok)
	}
	if err := l.Init(); err != nil {
		return err
	}
	var lh *activation.LockHeldError
	err := l.CheckLock()
	// A status, or a watchdog looking at the lock after its worker ended,
	// holds it for an instant; an activation holds it all along.
	for i := 0; i < 5 && errors.As(err, &lh); i++ {
		time.Sleep(100 * time.Millisecond)
		err = l.CheckLock()
	}
	if errors.As(err, &lh) {
		printResult(stdout, &activation.Result{Outcome: activation.OutcomeLockHeld, Message: lh.Error(), Holder: lh.Holder})
		return &exitError{code: exitLockHeld, err: lh}
	}
	id, logf, err := allocID(l)
	if err != nil {
		return err
	}
	logf.Close()
	req.ID = id
	req.User = operatorName()
	if req.Meta == nil {
		req.Meta = map[string]string{}
	}
	if req.Meta["operator"] == "" {
		req.Meta["operator"] = req.User
	}
	req.Created = time.Now().UTC()
	if err := l.WriteRequest(req); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("activate: finding this agent: %w", err)
	}
	workerArgs := []string{"activate-worker", "--id", id, "--state-dir", l.StateDir, "--run-dir", l.RunDir}
	var worker *exec.Cmd
	unit := ""
	switch {
	case noDetach:
		worker = exec.Command(exe, workerArgs...)
		if err := worker.Start(); err != nil {
			return fmt.Errorf("activate: starting the worker: %w", err)
		}
	case hasSystemd():
		unit = "deploy-activate-" + id
		out, err := exec.CommandContext(ctx, "systemd-run", append([]string{"--unit=" + unit, "--collect", "--quiet",
			"--service-type=exec", "--description=deploy activation " + id,
			"--property=KillMode=mixed", "--property=TimeoutStopSec=10min", "--", exe}, workerArgs...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("activate: systemd-run: %w: %s", err, strings.TrimSpace(string(out)))
		}
	default:
		worker = exec.Command(exe, workerArgs...)
		worker.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := worker.Start(); err != nil {
			return fmt.Errorf("activate: starting the worker: %w", err)
		}
	}
	fmt.Fprintf(stderr, "deploy-agent: activation %s (log %s)\n", id, l.LogFile(id))
	return follow(ctx, l, id, unit, worker, stdout, stderr)
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
func watchdogPIDFile(l activation.Layout, id string) string {
	return filepath.Join(l.RunDir, "requests", id+".watchdog")
}

// watchdogAlive reports whether activation id's watchdog runs.
func watchdogAlive(ctx context.Context, l activation.Layout, id string) bool {
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
func armWatchdog(l activation.Layout, exe, id string) error {
	args := []string{"watchdog", "--id", id, "--state-dir", l.StateDir, "--run-dir", l.RunDir}
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

// stopWorker kills whatever is left of activation id's dead worker: every
// process of its unit (KillMode=mixed spares the worker's children when
// only the worker itself is stopped), or its process group without
// systemd.
func stopWorker(id string, pid int) error {
	if hasSystemd() {
		exec.Command("systemctl", "kill", "--signal=SIGKILL", workerUnit(id)).Run()
		if out, err := exec.Command("systemctl", "stop", workerUnit(id)).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl stop %s: %w: %s", workerUnit(id), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if pid > 0 {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	return nil
}

func hasSystemd() bool {
	fi, err := os.Stat("/run/systemd/system")
	if err != nil || !fi.IsDir() {
		return false
	}
	_, err = exec.LookPath("systemd-run")
	return err == nil
}

// allocID creates the next log file log/activate-N.log exclusively.
func allocID(l activation.Layout) (string, *os.File, error) {
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

// follow copies the worker's log to stderr until the activation awaits
// confirmation or has a result.
func follow(ctx context.Context, l activation.Layout, id, unit string, worker *exec.Cmd, stdout, stderr io.Writer) error {
	f, err := os.Open(l.LogFile(id))
	if err != nil {
		return err
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
		io.Copy(stderr, f)
		res, err := l.ReadResult(id)
		if err != nil {
			return err
		}
		if res != nil {
			io.Copy(stderr, f)
			return resultExit(stdout, res)
		}
		if st, err := l.ReadState(); err == nil && st.Activation != nil && st.Activation.ID == id && st.Activation.Phase == activation.PhaseAwaiting {
			io.Copy(stderr, f)
			return resultExit(stdout, &activation.Result{ID: id, Generation: st.Activation.Generation, Outcome: activation.OutcomeAwaiting,
				Message: "awaiting confirmation until " + st.Activation.Deadline.Format(time.RFC3339), Log: l.LogFile(id), Warnings: st.Activation.Warnings})
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
				io.Copy(stderr, f)
				res := &activation.Result{ID: id, Outcome: activation.OutcomeFailed, Message: "the activation worker and its watchdog ended without a result (see the log and the journal)", Log: l.LogFile(id)}
				return resultExit(stdout, res)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("activate: %w (the activation goes on; see deploy-agent status)", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// printResult prints r as the result line, in this agent's API version.
func printResult(w io.Writer, r *activation.Result) {
	r.V = agentapi.Version
	data, _ := json.Marshal(r)
	fmt.Fprintf(w, "%s\n", data)
}

// resultExit prints r and returns the error carrying its exit code.
func resultExit(stdout io.Writer, r *activation.Result) error {
	printResult(stdout, r)
	switch r.Outcome {
	case activation.OutcomeDone, activation.OutcomeAwaiting, activation.OutcomeDry:
		return nil
	case activation.OutcomeRolledBack:
		return &exitError{code: exitRolledBack, err: errors.New(r.Message)}
	case activation.OutcomeLockHeld:
		return &exitError{code: exitLockHeld, err: errors.New(r.Message)}
	}
	return errors.New(r.Message)
}

// runActivateWorker is the detached half: it runs the activation whose
// request the front wrote, logging to the activation's log.
func runActivateWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("activate-worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	id := fs.String("id", "", "activation `id`")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	l := layout()
	req, err := l.ReadRequest(*id)
	if err != nil {
		return err
	}
	logFile, err := os.OpenFile(l.LogFile(*id), os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer logFile.Close()
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("activate-worker: finding this agent: %w", err)
	}
	w := &activation.Worker{Layout: l, Logf: timestamped(logFile), StopWorker: stopWorker,
		Watchdog: func(id string) error { return armWatchdog(l, exe, id) }}
	res := w.Run(ctx, req)
	os.Remove(filepath.Join(l.RunDir, "requests", *id+".json"))
	if res.Outcome == activation.OutcomeDone || res.Outcome == activation.OutcomeDry {
		return nil
	}
	return resultExit(io.Discard, res)
}

func timestamped(w io.Writer) func(string, ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(w, "%s %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

// runWatchdog is an activation's watchdog (see activation.Worker.Watch):
// it waits for the worker, and finishes the activation if the worker dies
// without a result, logging to the activation's log.
func runWatchdog(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("watchdog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	id := fs.String("id", "", "activation `id`")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if *id == "" {
		return usageErr(errors.New("watchdog: --id is required"))
	}
	l := layout()
	logFile, err := os.OpenFile(l.LogFile(*id), os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer logFile.Close()
	w := &activation.Worker{Layout: l, Logf: timestamped(logFile), StopWorker: stopWorker}
	err = w.Watch(ctx, *id)
	if !hasSystemd() {
		os.Remove(watchdogPIDFile(l, *id))
	}
	return err
}
