// Package cli runs the real deploy binary (built once per test binary by
// package e2e) against test hosts, the way an operator does, and reads
// what it says: stdout, stderr, the exit code and the --json events.
//
// # Runs
//
// A [Runner] runs deploy inside a vmtest network (its switch namespace,
// where the hosts' addresses are reachable) with a HOME and XDG_CACHE_HOME
// of its own, no SSH agent, the machine's Go build and module caches for
// the Go packages it builds (see [e2e.GoCaches]), and the environment of
// the test process plus [Runner.Env]:
//
//	fl := e2e.NewFleet(t, nw)
//	fl.WriteHosts(t, "")
//	r := cli.New(t, nw, fl)
//	res := r.JSON(t, "", fl.Target("@test")).Want(t, 0)   // deploy --json ...
//	res = r.Text(t, "exec", fl.Target("h1"), "--", "true") // deploy exec ...
//	res.Want(t, 6)
//
// [Runner.JSON] and [Runner.Text] run a host command with the fleet's
// client key (--identity) and no ssh_config (--ssh-config none);
// [Runner.Run] runs exactly the arguments given; [Runner.Start] runs a
// --json host command in the background. [Result.Want] asserts an exact
// exit code and shows stdout and stderr when it is another.
//
// It is apart from package e2e because it reads events as [fleet.Event]:
// the tests of package fleet, and of agentclient (which fleet imports),
// use package e2e and could not import fleet through it.
package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/vmtest"
)

// Runner runs the deploy binary for a test.
type Runner struct {
	// Network is where deploy runs: in its switch namespace. Nil runs it
	// in the test process's own network namespace (for a tailnet, whose
	// coordination server and relay listen on the test process's
	// loopback).
	Network *vmtest.Network
	// Fleet gives the client key of host commands (--identity).
	Fleet *e2e.Fleet
	// Home is HOME; XDG_CACHE_HOME is Home/cache.
	Home string
	// Env is added to the environment of every run.
	Env []string
}

// New returns a Runner of the deploy binary in nw for the hosts of fl,
// with a new empty HOME.
func New(tb testing.TB, nw *vmtest.Network, fl *e2e.Fleet) *Runner {
	tb.Helper()
	e2e.Binaries(tb) // built before the first run's clock starts
	return &Runner{Network: nw, Fleet: fl, Home: tb.TempDir()}
}

// With returns a copy of r whose runs also have env.
func (r *Runner) With(env ...string) *Runner {
	c := *r
	c.Env = append(slices.Clip(r.Env), env...)
	return &c
}

// Result is what a finished run of deploy said.
type Result struct {
	Args   []string
	Stdout string
	Stderr string
	// Code is the exit code (-1 for a run ended by a signal).
	Code int
	// Events are the --json events on stdout, in order (nil without
	// --json).
	Events []fleet.Event
}

// Command returns the command that runs deploy with exactly args, for a
// test that needs to set up its standard streams itself (a terminal, say).
func (r *Runner) Command(tb testing.TB, args ...string) *exec.Cmd {
	tb.Helper()
	bin := e2e.Binaries(tb).Deploy
	var cmd *exec.Cmd
	if r.Network != nil {
		cmd = r.Network.ControllerCommand(context.Background(), bin, args...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Env = append(os.Environ(), "HOME="+r.Home, "XDG_CACHE_HOME="+filepath.Join(r.Home, "cache"), "SSH_AUTH_SOCK=")
	cmd.Env = append(cmd.Env, e2e.GoCaches(tb)...)
	cmd.Env = append(cmd.Env, r.Env...)
	return cmd
}

// hostArgs is `[cmd] [--json] --identity KEY --ssh-config none args...`.
func (r *Runner) hostArgs(asJSON bool, cmd string, args []string) []string {
	var out []string
	if cmd != "" {
		out = append(out, cmd)
	}
	if asJSON {
		out = append(out, "--json")
	}
	out = append(out, "--identity", r.Fleet.Key, "--ssh-config", "none")
	return append(out, args...)
}

// Run runs deploy with exactly args and returns what it said; its events
// are parsed when args ask for --json.
func (r *Runner) Run(tb testing.TB, args ...string) *Result {
	tb.Helper()
	cmd := r.Command(tb, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			tb.Fatalf("deploy %s: %v", strings.Join(args, " "), err)
		}
	}
	tb.Logf("deploy %s: exit %d after %v", strings.Join(args, " "), cmd.ProcessState.ExitCode(), time.Since(start).Round(time.Millisecond))
	res := &Result{Args: args, Stdout: stdout.String(), Stderr: stderr.String(), Code: cmd.ProcessState.ExitCode()}
	if slices.Contains(args, "--json") {
		events, err := ParseEvents(stdout.Bytes())
		if err != nil {
			tb.Fatalf("deploy %s: %v\nstderr:\n%s", strings.Join(args, " "), err, res.Stderr)
		}
		res.Events = events
	}
	return res
}

// JSON runs the host command cmd ("" for deploy itself) with --json, the
// fleet's client key and no ssh_config, then args.
func (r *Runner) JSON(tb testing.TB, cmd string, args ...string) *Result {
	tb.Helper()
	return r.Run(tb, r.hostArgs(true, cmd, args)...)
}

// Text is [Runner.JSON] without --json: deploy's human output.
func (r *Runner) Text(tb testing.TB, cmd string, args ...string) *Result {
	tb.Helper()
	return r.Run(tb, r.hostArgs(false, cmd, args)...)
}

// Want fails the test unless the run exited with code, showing the
// command, stdout (or the failed hosts' results) and stderr. It returns res.
func (res *Result) Want(tb testing.TB, code int) *Result {
	tb.Helper()
	if res.Code != code {
		out := res.Stdout
		if res.Events != nil {
			out = res.Failures()
		}
		tb.Fatalf("deploy %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(res.Args, " "), res.Code, code, out, res.Stderr)
	}
	return res
}

// Output is stdout then stderr.
func (res *Result) Output() string { return res.Stdout + res.Stderr }

// Results are the events of type result, by host (the last of each).
func (res *Result) Results() map[string]fleet.Event { return Results(res.Events) }

// Failures describes the hosts of the run that did not end well, for a
// failure message.
func (res *Result) Failures() string {
	var b strings.Builder
	for _, ev := range res.Events {
		if ev.Type == fleet.EventResult && ev.Error != "" {
			fmt.Fprintf(&b, "%s: %s in %s: %s\n", ev.Host, ev.Result, ev.Phase, ev.Error)
		}
	}
	return b.String()
}

// Results are the events of type result, by host (the last of each).
func Results(events []fleet.Event) map[string]fleet.Event {
	out := map[string]fleet.Event{}
	for _, ev := range events {
		if ev.Type == fleet.EventResult {
			out[ev.Host] = ev
		}
	}
	return out
}

// ParseEvents reads --json output: every line must be an event of this
// schema version.
func ParseEvents(out []byte) ([]fleet.Event, error) {
	var events []fleet.Event
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		ev, err := parseEvent(sc.Bytes())
		if err != nil {
			return events, err
		}
		events = append(events, ev)
	}
	return events, sc.Err()
}

func parseEvent(line []byte) (fleet.Event, error) {
	var ev fleet.Event
	if err := json.Unmarshal(line, &ev); err != nil {
		return ev, fmt.Errorf("stdout line %q is not an event: %v", line, err)
	}
	if ev.V != fleet.EventSchemaVersion {
		return ev, fmt.Errorf("event %q has schema version %d, want %d", line, ev.V, fleet.EventSchemaVersion)
	}
	return ev, nil
}

// Running is a deploy --json running in the background ([Runner.Start]).
type Running struct {
	args   []string
	cmd    *exec.Cmd
	done   chan struct{} // closed once it has exited and its output is read
	stderr bytes.Buffer

	mu      sync.Mutex
	events  []fleet.Event
	stdout  bytes.Buffer
	parse   error         // the first line that was not an event
	changed chan struct{} // closed (and replaced) at each new event
	killed  bool
}

// Start starts the host command cmd ("" for deploy itself) with --json,
// the fleet's client key and no ssh_config, then args, in the background.
// The test's end kills it if it still runs.
func (r *Runner) Start(tb testing.TB, cmd string, args ...string) *Running {
	tb.Helper()
	all := r.hostArgs(true, cmd, args)
	c := r.Command(tb, all...)
	b := &Running{args: all, cmd: c, done: make(chan struct{}), changed: make(chan struct{})}
	c.Stderr = &b.stderr
	out, err := c.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.Start(); err != nil {
		tb.Fatalf("deploy %s: %v", strings.Join(all, " "), err)
	}
	tb.Cleanup(func() { b.Kill(); <-b.done })
	go func() {
		defer close(b.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			ev, err := parseEvent(sc.Bytes())
			b.mu.Lock()
			b.stdout.Write(sc.Bytes())
			b.stdout.WriteByte('\n')
			if err != nil && b.parse == nil {
				b.parse = err
			}
			if err == nil {
				b.events = append(b.events, ev)
				close(b.changed)
				b.changed = make(chan struct{})
			}
			b.mu.Unlock()
		}
		c.Wait()
	}()
	return b
}

// Done is closed once the run has exited.
func (b *Running) Done() <-chan struct{} { return b.done }

// Until blocks until ok holds for the events so far, or the run exits,
// and reports whether ok held.
func (b *Running) Until(ok func(events []fleet.Event) bool) bool {
	for {
		b.mu.Lock()
		held, changed := ok(b.events), b.changed
		b.mu.Unlock()
		if held {
			return true
		}
		select {
		case <-changed:
		case <-b.done:
			b.mu.Lock()
			defer b.mu.Unlock()
			return ok(b.events)
		}
	}
}

// Kill kills the run with SIGKILL (if it still runs).
func (b *Running) Kill() {
	b.mu.Lock()
	b.killed = true
	b.mu.Unlock()
	b.cmd.Process.Signal(syscall.SIGKILL)
}

// Wait waits until the run has exited and returns what it said. Its
// stdout must be events only, unless it was killed (a line may be cut).
func (b *Running) Wait(tb testing.TB) *Result {
	tb.Helper()
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.parse != nil && !b.killed {
		tb.Fatalf("deploy %s: %v\nstderr:\n%s", strings.Join(b.args, " "), b.parse, b.stderr.String())
	}
	return &Result{Args: b.args, Stdout: b.stdout.String(), Stderr: b.stderr.String(),
		Code: b.cmd.ProcessState.ExitCode(), Events: slices.Clone(b.events)}
}
