package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// childEnv selects what TestChild does in a child test binary.
const childEnv = "VMTEST_CHILD"

// TestChild is the workload of TestNoLeftovers, run in child processes of
// the test binary. VMTEST_CHILD=suite boots two hosts, talks to them and
// crashes one; VMTEST_CHILD=hang boots one host and blocks until killed.
func TestChild(t *testing.T) {
	mode := os.Getenv(childEnv)
	switch mode {
	case "":
		t.Skip("run by TestNoLeftovers in a child process")
	case "hang":
		nw := Start(t, 1)
		fmt.Printf("VMTEST-READY %s\n", nw.RunID())
		time.Sleep(10 * time.Minute)
		t.Fatal("hang child was not killed")
	case "suite":
		nw := Start(t, 2)
		for _, h := range nw.Hosts {
			if got := strings.TrimSpace(h.Succeed("systemctl is-system-running")); got != "running" {
				t.Errorf("%s: is-system-running = %q", h.Name(), got)
			}
			sshRun(t, h, "true")
		}
		nw.Hosts[0].Succeed("timeout 10 bash -c '</dev/tcp/h2/22'")
		nw.Hosts[1].Crash()
	default:
		t.Fatalf("%s=%q: want suite or hang", childEnv, mode)
	}
}

var statePattern = regexp.MustCompile(`(?m)^State:\s*(.*)$`)

var runIDPattern = regexp.MustCompile(`vmtest: run ([0-9a-f]{12}): state in`)

// child is one run of the test binary with TestChild.
type child struct {
	cmd  *exec.Cmd
	out  strings.Builder // everything it printed
	mu   sync.Mutex
	done chan struct{}
}

// startChild runs the test binary with TestChild in mode, or with the whole
// self-test TestHosts for mode "hosts".
func startChild(t *testing.T, mode string) *child {
	t.Helper()
	c := &child{done: make(chan struct{})}
	run := "-test.run=^TestChild$"
	if mode == "hosts" {
		run = "-test.run=^TestHosts$"
	}
	c.cmd = exec.Command(os.Args[0], run, "-test.v", "-test.count=1", "-test.timeout=5m")
	c.cmd.Env = append(os.Environ(), childEnv+"="+mode)
	pr, pw := io.Pipe()
	c.cmd.Stdout, c.cmd.Stderr = pw, pw
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.cmd.Wait()
		pw.Close()
	}()
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			c.mu.Lock()
			c.out.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *child) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// wait waits for the child to exit and fails t unless it passed.
func (c *child) wait(t *testing.T) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(5 * time.Minute):
		c.cmd.Process.Kill()
		<-c.done
		t.Fatalf("child %v did not finish in 5 minutes; its output:\n%s", c.cmd.Args, c.output())
	}
	if !c.cmd.ProcessState.Success() || strings.Contains(c.output(), "--- FAIL") || !strings.Contains(c.output(), "--- PASS: Test") {
		t.Fatalf("child failed: %v\n%s", c.cmd.ProcessState, c.output())
	}
}

// waitFor waits until the child printed a line matching re.
func (c *child) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(c.output()); m != nil {
			return m
		}
		select {
		case <-c.done:
			t.Fatalf("child exited before printing %q:\n%s", re, c.output())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("child did not print %q:\n%s", re, c.output())
	return nil
}

func (c *child) runIDs() []string {
	var ids []string
	for _, m := range runIDPattern.FindAllStringSubmatch(c.output(), -1) {
		ids = append(ids, m[1])
	}
	return ids
}

// TestNoLeftovers runs the harness in child processes: the self-test
// TestHosts twice in a row and two at once, then a small suite beside a live
// run that must survive its sweep, and one after a run killed with SIGKILL,
// whose leftovers the next run's sweep must remove. Afterwards no namespace,
// mount, cgroup, process or state directory of any of those runs may remain.
func TestNoLeftovers(t *testing.T) {
	requireAvailable(t)
	if os.Getenv(childEnv) != "" {
		t.Skip("not inside a child")
	}
	// Build the image first, so children do not all wait for it.
	nw := Start(t, 1)
	cacheDir := nw.cfg.cacheDir
	cg := nw.run.cg.mounts
	nw.close()
	before := netnsInodes()

	var ids []string
	for range 2 { // twice in a row
		c := startChild(t, "hosts")
		c.wait(t)
		ids = append(ids, c.runIDs()...)
	}
	a, b := startChild(t, "hosts"), startChild(t, "hosts") // two at once
	a.wait(t)
	b.wait(t)
	ids = append(ids, a.runIDs()...)
	ids = append(ids, b.runIDs()...)

	// A live run survives another run's sweep.
	hang := startChild(t, "hang")
	hangID := hang.waitFor(t, regexp.MustCompile(`VMTEST-READY ([0-9a-f]{12})`))[1]
	ids = append(ids, hangID)
	hangCg := cgroup{mounts: cg, rel: cgroupRoot + "/" + hangID}
	c := startChild(t, "suite")
	c.wait(t)
	ids = append(ids, c.runIDs()...)
	if pop, err := hangCg.populated(); err != nil || !pop {
		t.Fatalf("live run %s lost its processes to another run's sweep (populated %v, %v)", hangID, pop, err)
	}
	if strings.Contains(c.output(), "swept stale run "+hangID) {
		t.Fatalf("a run swept the live run %s:\n%s", hangID, c.output())
	}

	// A killed run leaves its hosts behind; the next run sweeps them. (A
	// suite running concurrently in another process may sweep them first.)
	hang.cmd.Process.Signal(syscall.SIGKILL)
	<-hang.done
	pop, err := hangCg.populated()
	if err != nil {
		t.Fatal(err)
	}
	if !pop {
		t.Logf("killed run %s: already swept by a concurrent run", hangID)
	}
	d := startChild(t, "suite")
	d.wait(t)
	ids = append(ids, d.runIDs()...)
	switch {
	case strings.Contains(d.output(), "swept stale run "+hangID):
		t.Logf("the run after killed run %s swept it", hangID)
	case pop:
		if _, err := os.Stat(filepath.Join(runsDir(cacheDir), hangID)); err == nil {
			t.Errorf("the run after killed run %s did not sweep it:\n%s", hangID, d.output())
		}
	}
	t.Logf("child runs: %q; the killed one was %s", ids, hangID)
	if len(ids) != 7 {
		t.Fatalf("got run ids %q from 7 child runs", ids)
	}
	// Processes killed with their cgroup may stay zombies for a moment,
	// until the init process they were orphaned to reaps them.
	problems := leftovers(cacheDir, cg, ids, before)
	for deadline := time.Now().Add(10 * time.Second); len(problems) > 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		problems = leftovers(cacheDir, cg, ids, before)
	}
	for _, problem := range problems {
		t.Error(problem)
	}
}

// leftovers lists what remains of the given runs.
func leftovers(cacheDir string, cg cgroupMounts, ids []string, before map[string]bool) []string {
	var problems []string
	for _, id := range ids {
		dir := filepath.Join(runsDir(cacheDir), id)
		if _, err := os.Stat(dir); err == nil {
			problems = append(problems, fmt.Sprintf("run %s: state directory %s remains", id, dir))
		}
		for _, root := range []string{cg.v2, cg.v1systemd} {
			if root == "" {
				continue
			}
			p := filepath.Join(root, cgroupRoot, id)
			if _, err := os.Stat(p); err == nil {
				problems = append(problems, fmt.Sprintf("run %s: cgroup %s remains", id, p))
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cgroups, _ := os.ReadFile(p + "/cgroup")
		cmdline, _ := os.ReadFile(p + "/cmdline")
		mounts, _ := os.ReadFile(p + "/mountinfo")
		for _, id := range ids {
			if strings.Contains(string(cgroups), cgroupRoot+"/"+id) || strings.Contains(string(cmdline), "/runs/"+id+"/") {
				state := "state unknown"
				status, _ := os.ReadFile(p + "/status")
				if m := statePattern.FindSubmatch(status); m != nil {
					state = string(m[1])
				}
				problems = append(problems, fmt.Sprintf("run %s: process %s remains (%s): %q", id, filepath.Base(p), state, strings.ReplaceAll(string(cmdline), "\x00", " ")))
			}
			if strings.Contains(string(mounts), "/runs/"+id+"/") {
				problems = append(problems, fmt.Sprintf("run %s: a mount remains in the mount namespace of process %s", id, filepath.Base(p)))
			}
		}
	}
	// Namespaces live only as long as a process, a descriptor or a bind
	// mount holds them. New ones held by a process are reported above when
	// the process belongs to a run; held by a mount, they are reported here.
	for ns := range netnsInodes() {
		if !before[ns] && strings.HasPrefix(ns, "mount:") {
			problems = append(problems, fmt.Sprintf("network namespace %s is held by a bind mount", ns))
		}
	}
	return problems
}

// netnsInodes returns the network namespaces held by processes ("net:[N]")
// and by nsfs mounts ("mount:net:[N]").
func netnsInodes() map[string]bool {
	set := map[string]bool{}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if l, err := os.Readlink(p + "/ns/net"); err == nil {
			set[l] = true
		}
		f, err := os.Open(p + "/mountinfo")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.Contains(sc.Text(), " - nsfs ") {
				for _, fld := range strings.Fields(sc.Text()) {
					if strings.HasPrefix(fld, "net:[") {
						set["mount:"+fld] = true
					}
				}
			}
		}
		f.Close()
	}
	return set
}
