package activation

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
)

// lockClient is the operator's end of one run-lock request served by
// HoldRunLock in a goroutine.
type lockClient struct {
	in    *io.PipeWriter
	reply *agentapi.LockReply
	done  chan error
}

func requestRunLock(t *testing.T, l Layout, run string, opts RunLockOptions) *lockClient {
	t.Helper()
	return requestRunLockAs(t, l, &agentapi.RunHolder{Run: run, Operator: "op-" + run, Command: "deploy", Hosts: []string{"web1"}, Started: time.Now()}, opts)
}

func requestRunLockAs(t *testing.T, l Layout, holder *agentapi.RunHolder, opts RunLockOptions) *lockClient {
	t.Helper()
	run := holder.Run
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &lockClient{in: inW, done: make(chan error, 1)}
	go func() {
		err := l.HoldRunLock(context.Background(), inR, outW, opts)
		outW.CloseWithError(io.EOF)
		inR.Close()
		c.done <- err
	}()
	h, _ := json.Marshal(holder)
	if _, err := fmt.Fprintf(inW, "%s\n", h); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("run %s: no reply: %v", run, err)
	}
	c.reply = &agentapi.LockReply{}
	if err := agentapi.Decode("run lock", []byte(line), c.reply); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *lockClient) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c.in, s+"\n"); err != nil {
		t.Fatal(err)
	}
}

func (c *lockClient) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the run-lock holder did not end")
		return nil
	}
}

func testLayout(t *testing.T) Layout {
	d := t.TempDir()
	return Layout{StateDir: filepath.Join(d, "state"), RunDir: filepath.Join(d, "run")}
}

func TestRunLock(t *testing.T) {
	l := testLayout(t)
	systems := func() (string, string) { return "/store/cur-system", "/store/boot-system" }
	a := requestRunLock(t, l, "a", RunLockOptions{Systems: systems})
	if !a.reply.Locked || a.reply.TookOver != nil {
		t.Fatalf("first request: %+v, want locked, nothing taken over", a.reply)
	}
	if r := a.reply.Running; r == nil || r.Current != "/store/cur-system" || r.BootDefault != "/store/boot-system" {
		t.Errorf("first request's running systems %+v, want what Systems says", r)
	}
	if h := l.RunLockHolder(); h == nil || h.Run != "a" {
		t.Errorf("RunLockHolder = %+v, want run a", h)
	}

	b := requestRunLock(t, l, "b", RunLockOptions{Systems: systems})
	var held *RunLockHeldError
	if err := b.wait(t); !errors.As(err, &held) {
		t.Fatalf("second run: %v, want a RunLockHeldError", err)
	}
	if b.reply.Running != nil {
		t.Errorf("a refused request's reply says what runs (%+v): only the holder may rely on it", b.reply.Running)
	}
	if b.reply.Locked || b.reply.Holder == nil || b.reply.Holder.Run != "a" || b.reply.Holder.Operator != "op-a" {
		t.Fatalf("second run's reply %+v, want not locked, held by run a", b.reply)
	}

	// Released: the next run takes it with nothing to take over.
	a.send(t, "ping")
	a.send(t, "release")
	if err := a.wait(t); err != nil {
		t.Fatal(err)
	}
	if h := l.RunLockHolder(); h != nil {
		t.Errorf("after the release RunLockHolder = %+v, want nil", h)
	}
	c := requestRunLock(t, l, "c", RunLockOptions{})
	if !c.reply.Locked || c.reply.TookOver != nil {
		t.Fatalf("after a release: %+v, want locked, nothing taken over", c.reply)
	}

	// Abandoned (the connection ended without a release): the next run
	// takes it over and says whose it was.
	c.in.Close()
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	d := requestRunLock(t, l, "d", RunLockOptions{Lease: 200 * time.Millisecond})
	if !d.reply.Locked || d.reply.TookOver == nil || d.reply.TookOver.Run != "c" {
		t.Fatalf("after an abandoned run: %+v, want locked, taken over from run c", d.reply)
	}

	// Silent for the lease: given up.
	if err := d.wait(t); err != nil {
		t.Fatal(err)
	}
	if h := l.RunLockHolder(); h != nil {
		t.Errorf("after the lease RunLockHolder = %+v, want nil", h)
	}
}

// With Wait, a held lock is waited for and taken once it is released.
func TestRunLockWait(t *testing.T) {
	l := testLayout(t)
	a := requestRunLock(t, l, "a", RunLockOptions{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		a.send(t, "release")
	}()
	b := requestRunLock(t, l, "b", RunLockOptions{Wait: time.Minute})
	if !b.reply.Locked || b.reply.TookOver != nil {
		t.Fatalf("waiting run: %+v, want locked after the release", b.reply)
	}
	if err := a.wait(t); err != nil {
		t.Fatal(err)
	}
	b.send(t, "release")
	b.wait(t)
}

func init() {
	// The child half of TestRunLockSameRun: hold the run lock of run
	// "same" for a test in another process.
	spec := os.Getenv("DEPLOY_TEST_RUNLOCK_CHILD")
	if spec == "" {
		return
	}
	dirs := strings.Split(spec, "|")
	l := Layout{StateDir: dirs[0], RunDir: dirs[1]}
	if err := l.HoldRunLock(context.Background(), os.Stdin, os.Stdout, RunLockOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// A run whose connection dropped comes back while its old run-lock process
// still holds the lock (the host has not noticed the dead connection): the
// new request ends the old process and takes the lock.
func TestRunLockSameRun(t *testing.T) {
	l := testLayout(t)
	cmd := holdInChild(t, l, "same")
	again := requestRunLock(t, l, "same", RunLockOptions{})
	if !again.reply.Locked || again.reply.TookOver != nil {
		t.Fatalf("the same run again: %+v, want locked, nothing taken over", again.reply)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("the old holder ended with %v, want killed by SIGTERM", err)
	}
	again.send(t, "release")
	again.wait(t)
}

// holdInChild has another process hold the run lock for run, as a
// run-lock process on a host does, until it is killed.
func holdInChild(t *testing.T, l Layout, run string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "DEPLOY_TEST_RUNLOCK_CHILD="+l.StateDir+"|"+l.RunDir)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	h, _ := json.Marshal(&agentapi.RunHolder{Run: run, Machine: "laptop", Started: time.Now(),
		Process: &agentapi.RunProcess{Space: "boot/pid:[1]", PID: 4242, Start: 7}})
	fmt.Fprintf(stdin, "%s\n", h)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.Contains(line, `"locked":true`) {
		t.Fatalf("child: %q, %v; want locked", line, err)
	}
	return cmd
}

// A run whose operator found the holder's process ended on its machine
// asks to take the lock over (TakeOver): the agent ends the holder's
// run-lock process at once and says whose lock it took. A TakeOver that
// names another run than the holder changes nothing.
func TestRunLockTakeOver(t *testing.T) {
	l := testLayout(t)
	cmd := holdInChild(t, l, "dead")
	wrong := requestRunLockAs(t, l, &agentapi.RunHolder{Run: "new", TakeOver: "someone-else", Started: time.Now()}, RunLockOptions{})
	var held *RunLockHeldError
	if err := wrong.wait(t); !errors.As(err, &held) || wrong.reply.Locked || wrong.reply.Holder == nil || wrong.reply.Holder.Run != "dead" {
		t.Fatalf("take over of a run that does not hold the lock: %+v, %v; want refused, held by run dead", wrong.reply, err)
	}
	if p := wrong.reply.Holder.Process; p == nil || p.PID != 4242 || p.Start != 7 || p.Space != "boot/pid:[1]" {
		t.Errorf("the holder's process %+v, want as the holder recorded it", p)
	}
	c := requestRunLockAs(t, l, &agentapi.RunHolder{Run: "new", TakeOver: "dead", Started: time.Now()}, RunLockOptions{})
	if !c.reply.Locked || c.reply.TookOver == nil || c.reply.TookOver.Run != "dead" {
		t.Fatalf("take over: %+v, want locked, taken over from run dead", c.reply)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("the dead run's run-lock process ended with %v, want SIGTERM", err)
	}
	if rec := l.readRunHolder(); rec == nil || rec.Holder.Run != "new" || rec.Holder.TakeOver != "" || rec.Start == 0 {
		t.Errorf("holder record %+v: want run new, no take_over recorded, its process's start time", rec)
	}
	c.send(t, "release")
	c.wait(t)
}

// A holder record whose PID now names another process (the PID was
// reused) is not signalled.
func TestRunLockReusedPIDNotSignalled(t *testing.T) {
	l := testLayout(t)
	cmd := holdInChild(t, l, "dead")
	rec := l.readRunHolder()
	rec.Start++ // as if the PID had been reused since it was recorded
	data, _ := json.Marshal(rec)
	if err := os.WriteFile(l.RunHolderFile(), data, 0o600); err != nil {
		t.Fatal(err)
	}
	c := requestRunLockAs(t, l, &agentapi.RunHolder{Run: "new", TakeOver: "dead", Started: time.Now()}, RunLockOptions{Wait: 500 * time.Millisecond})
	var held *RunLockHeldError
	if err := c.wait(t); !errors.As(err, &held) || c.reply.Locked {
		t.Fatalf("take over of a holder whose PID names another process: %+v, %v; want refused", c.reply, err)
	}
	if cmd.ProcessState != nil || cmd.Process.Signal(syscall.Signal(0)) != nil {
		t.Error("the process that holds the lock was signalled")
	}
}

// A run that reboots the host keeps its run lock across the reboot with a
// lease: after the boot (the run directory emptied), another run is
// refused, naming the rebooting run, until that run takes the lock again
// (the lease is then gone) or the lease expires (the next run takes it
// over and says whose it was). Only the holder can take a lease.
func TestRunLockLeaseAcrossReboot(t *testing.T) {
	l := testLayout(t)
	a := requestRunLock(t, l, "A", RunLockOptions{})
	if !a.reply.Locked {
		t.Fatalf("A: %+v", a.reply)
	}
	if err := l.LeaseRunLock("B", time.Minute); err == nil {
		t.Errorf("LeaseRunLock by B, which does not hold the lock: no error")
	}
	if err := l.LeaseRunLock("A", time.Minute); err != nil {
		t.Fatal(err)
	}
	// The reboot: A's process ends, the run directory is emptied.
	a.in.Close()
	a.wait(t)
	if err := os.RemoveAll(l.withDefaults().RunDir); err != nil {
		t.Fatal(err)
	}
	if h := l.RunLockHolder(); h == nil || h.Run != "A" {
		t.Errorf("RunLockHolder() after the reboot = %+v, want A's lease", h)
	}
	b := requestRunLock(t, l, "B", RunLockOptions{})
	var held *RunLockHeldError
	if err := b.wait(t); b.reply.Locked || b.reply.Holder == nil || b.reply.Holder.Run != "A" || !errors.As(err, &held) || !strings.Contains(err.Error(), "kept across a reboot") {
		t.Fatalf("B after A's reboot: %+v, %v; want refused, held by A across the reboot", b.reply, err)
	}
	a = requestRunLock(t, l, "A", RunLockOptions{})
	if !a.reply.Locked || a.reply.TookOver != nil {
		t.Fatalf("A again: %+v, want locked", a.reply)
	}
	if _, err := os.Stat(l.runLeaseFile()); !os.IsNotExist(err) {
		t.Errorf("the lease is still there after A took the lock again: %v", err)
	}
	a.send(t, agentapi.LockRelease)
	a.wait(t)

	// An expired lease: the next run takes the lock over.
	a = requestRunLock(t, l, "A", RunLockOptions{})
	if err := l.LeaseRunLock("A", time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	a.in.Close()
	a.wait(t)
	os.RemoveAll(l.withDefaults().RunDir)
	b = requestRunLock(t, l, "B", RunLockOptions{})
	if !b.reply.Locked || b.reply.TookOver == nil || b.reply.TookOver.Run != "A" {
		t.Errorf("B after A's lease expired: %+v, want locked, taken over from A", b.reply)
	}
	b.send(t, agentapi.LockRelease)
	b.wait(t)
}
