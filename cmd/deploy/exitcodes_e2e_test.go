package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// hostCommandFleet writes a fleet of nw's hosts with a role (a file, a
// service, a health check that fails while /run/fail-health exists on the
// host, and one that holds the activation while /run/hold exists until
// /run/release does), a deployment "prod" of them, and a host "ghost" whose
// address is h1's with a port nothing listens on: unreachable at once.
func hostCommandFleet(t *testing.T, fl *e2e.Fleet, greeting string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `deployment "prod" {
  hosts           = [%s]
  confirm_timeout = "15s"
}

role "web" {
  file "/etc/web/greeting" {
    content = "%s\n"
  }
  service "web" {
    exec_start       = "/bin/sleep infinity"
    restart_triggers = [%q]
  }
  health_check "ok" {
    command = ["/bin/sh", "-c", "test ! -e /run/fail-health"]
    timeout = "3s"
  }
  health_check "hold" {
    command = ["/bin/sh", "-c", "test ! -e /run/hold || test -e /run/release"]
    timeout = "2m"
  }
}

host "ghost" {
  address  = %q
  port     = 9
  host_key = %q
  roles    = [role.web]
}
`, fl.Names(), greeting, greeting, fl.Hosts[0].Addr().String(), fl.Hosts[0].HostKeyLine())
	for _, h := range fl.Hosts {
		b.WriteString("\n" + e2e.HostBlock(h, "  roles    = [role.web]\n"))
	}
	fl.Write(t, "fleet.hcl", b.String())
}

// TestRunLocksAndExitCodesE2E runs the scenarios of host commands over
// the run lock and the exit codes, each on fresh hosts of its own in one
// network booted together.
func TestRunLocksAndExitCodesE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 5)
	t.Run("run-lock", func(t *testing.T) { runLockE2E(t, nw, nw.Hosts[:3]) })
	t.Run("exit-codes", func(t *testing.T) { exitCodesE2E(t, nw, nw.Hosts[3:]) })
}

// exitCodesE2E runs every host command against two real hosts and checks the
// exact exit code of each row of docs/cli.md's table that the command can
// end with (the local rows, 1 and 2, are in testdata/script/deploy_cli).
func exitCodesE2E(t *testing.T, nw *vmtest.Network, hosts []*vmtest.Host) {
	h1 := hosts[0].With(t)
	fl := e2e.NewFleet(t, nw, hosts...)
	hostCommandFleet(t, fl, "one")
	fleetDir := fl.Dir
	agent := e2e.Agent(t)
	r := cli.New(t, nw, fl)
	run := func(want int, args ...string) string {
		t.Helper()
		return r.Run(t, args...).Want(t, want).Output()
	}
	ssh := []string{"--identity", fl.Key, "--ssh-config", "none"}
	cmd := func(name string, extra ...string) []string {
		out := []string{name}
		if name == "" {
			out = nil
		}
		out = append(out, ssh...)
		if name == "" || name == "diff" {
			out = append(out, "--agent", agent)
		}
		return append(out, extra...)
	}
	prod, ghost := fleetDir+"#prod", fleetDir+"#ghost"

	// 0: everything succeeds.
	run(0, cmd("", prod)...)
	hostCommandFleet(t, fl, "two")
	run(0, cmd("", prod)...)
	run(0, cmd("generations", prod)...)
	run(0, cmd("status", prod)...)
	run(0, cmd("status", "--drift", prod)...)
	run(0, cmd("verify", prod)...)
	run(0, cmd("diff", fl.Target(h1.Name()))...)
	run(0, cmd("exec", prod, "--", "true")...)
	run(0, cmd("gc", "--keep", "5", prod)...)
	tree := t.TempDir()
	os.WriteFile(filepath.Join(tree, "f"), []byte("copied\n"), 0o644)
	added := strings.TrimSpace(run(0, "store", "add", tree))
	run(0, append(cmd("copy", "--to", h1.Addr().String(), "--host-key", h1.HostKeyLine(), "--agent", agent), added)...)
	if got := h1.Succeed("cat " + added + "/f"); got != "copied\n" {
		t.Errorf("deploy copy: %q on %s", got, h1.Name())
	}

	if out := run(0, "keyscan", h1.Addr().String()); !strings.Contains(out, strings.Fields(h1.HostKeyLine())[1]) {
		t.Errorf("keyscan %s: %s; want its host key", h1.Addr(), out)
	}

	// 6: the command fails on a host.
	if out := run(6, cmd("exec", prod, "--", "sh", "-c", "test $(hostname) = "+hosts[1].Name())...); !strings.Contains(out, "command-failed: "+h1.Name()) {
		t.Errorf("exec failing on %s: output does not name it:\n%s", h1.Name(), out)
	}

	// 4: an unreachable host, for every command.
	for _, args := range [][]string{
		cmd("", ghost), cmd("rollback", ghost), cmd("generations", ghost), cmd("status", ghost),
		cmd("verify", ghost), cmd("reboot", ghost),
		cmd("gc", ghost), cmd("exec", ghost, "--", "true"), cmd("diff", ghost),
		append(cmd("copy", "--to", h1.Addr().String()+":9", "--host-key", h1.HostKeyLine()), "/var/lib/deploy/store/00000000000000000000000000000000-x"),
		{"keyscan", h1.Addr().String() + ":9"},
	} {
		run(4, args...)
	}
	// The fleet table names the host that did not answer.
	// (Host names of two characters: the column is as wide as "ghost".)
	if out := run(4, cmd("status", fl.Target(h1.Name()+",ghost"))...); !strings.Contains(out, "ghost  no") || !strings.Contains(out, h1.Name()+"     yes") {
		t.Errorf("status of %s and the unreachable ghost: want %[1]s reachable and ghost not:\n%s", h1.Name(), out)
	}

	// 5: another run holds h1's run lock (here a run-lock process started
	// on the host by hand), for every command that takes it; the holder
	// is named. Read-only commands are not held up.
	lockCtx, stopLock := context.WithCancel(context.Background())
	holder := h1With(t, h1, lockCtx)
	one := fl.Target(h1.Name())
	for _, args := range [][]string{cmd("", prod), cmd("rollback", one), cmd("gc", one), cmd("reboot", one)} {
		if out := run(5, args...); !strings.Contains(out, "other-operator") {
			t.Errorf("deploy %v with %s's run lock held: the holder is not named:\n%s", args, h1.Name(), out)
		}
	}
	if out := run(0, cmd("status", prod)...); !strings.Contains(out, "other-operator") {
		t.Errorf("status does not show %s's run lock holder:\n%s", h1.Name(), out)
	}
	stopLock()
	holder.Wait()

	// 3: a rollback whose target generation fails its health check now
	// rolls back to where it was.
	h1.Succeed("touch /run/fail-health")
	run(3, cmd("rollback", "--to", "1", one)...)
	if got := h1.Succeed("cat /etc/web/greeting"); got != "two\n" {
		t.Fatalf("%s after the failed rollback: greeting %q, want two", h1.Name(), got)
	}
	h1.Succeed("rm /run/fail-health")
	run(0, cmd("rollback", "--to", "1", one)...)
	if got := h1.Succeed("cat /etc/web/greeting"); got != "one\n" {
		t.Fatalf("%s after the rollback: greeting %q, want one", h1.Name(), got)
	}
}

// h1With starts a run-lock process on h and holds the lock for a made-up
// run of "other-operator" until ctx ends.
func h1With(t *testing.T, h *vmtest.Host, ctx context.Context) *exec.Cmd {
	t.Helper()
	c, err := h.Command(ctx, "/run/deploy/current-system/agent/bin/deploy-agent", "run-lock")
	if err != nil {
		t.Fatal(err)
	}
	in, _ := c.StdinPipe()
	out, _ := c.StdoutPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	holder, _ := json.Marshal(&agentapi.RunHolder{Run: "other", Operator: "other-operator", Command: "deploy", Started: time.Now()})
	fmt.Fprintf(in, "%s\n", holder)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.Contains(line, `"locked":true`) {
		t.Fatalf("run-lock on %s: %q %v", h.Name(), line, err)
	}
	return c
}

// runLockE2E: two deploys started together over overlapping hosts (of h1, h2
// and h3): one runs, the other is refused (exit 5) having copied nothing;
// with --wait-lock the second runs after the first. A run killed with
// SIGKILL leaves its lock to the next run, which takes it over and says so.
func runLockE2E(t *testing.T, nw *vmtest.Network, hosts []*vmtest.Host) {
	if names := e2e.QuotedNames(hosts); names != `"h1", "h2", "h3"` {
		t.Fatalf("runLockE2E needs h1, h2 and h3, got %s", names)
	}
	fl := e2e.NewFleet(t, nw, hosts...)
	hostCommandFleet(t, fl, "one")
	r := cli.New(t, nw, fl)
	a, b := fl.Target("h1,h2"), fl.Target("h2,h3")
	// start starts a deploy of target in the background.
	start := func(target string, extra ...string) *cli.Running {
		return r.Start(t, "", append(extra, target)...)
	}
	copied := func(events []fleet.Event) bool {
		for _, ev := range events {
			if ev.Phase == fleet.PhaseCopy || ev.Phase == fleet.PhaseActivate {
				return true
			}
		}
		return false
	}
	h2 := hosts[1].With(t)
	for round, greeting := range []string{"one", "two"} {
		// Whichever run gets the locks holds its activation of h2 until
		// the test releases it, so the two surely overlap.
		hostCommandFleet(t, fl, greeting)
		h2.Succeed("touch /run/hold")
		ca, cb := start(a), start(b)
		var first, second *cli.Result
		select {
		case <-ca.Done():
			first = ca.Wait(t)
			h2.Succeed("touch /run/release")
			second = cb.Wait(t)
		case <-cb.Done():
			first = cb.Wait(t)
			h2.Succeed("touch /run/release")
			second = ca.Wait(t)
		}
		h2.Succeed("rm -f /run/hold /run/release")
		if first.Code != ExitLocked || second.Code != 0 {
			t.Fatalf("round %d: the first run to end exited %d, the other %d; want %d (refused) and 0\n%s\n%s", round, first.Code, second.Code, ExitLocked, first.Stderr, second.Stderr)
		}
		if copied(first.Events) {
			t.Fatalf("round %d: the refused run copied or activated: %v", round, first.Events)
		}
		if r := first.Results()["h2"]; r.Result != fleet.ResultLocked || r.Holder == nil || r.Holder.Operator == "" || len(r.Holder.Hosts) != 2 {
			t.Errorf("round %d: the refused run's h2 %+v, want locked with the holder (operator, hosts) named", round, r)
		}
	}

	// --wait-lock: both run, one after the other.
	hostCommandFleet(t, fl, "three")
	ca, cb := start(a, "--wait-lock", "2m"), start(b, "--wait-lock", "2m")
	ca.Wait(t).Want(t, 0)
	cb.Wait(t).Want(t, 0)
	if got := h2.Succeed("cat /etc/web/greeting"); got != "three\n" {
		t.Fatalf("h2 after both runs: %q", got)
	}

	// SIGKILL once the run holds its locks: the next run takes them over.
	hostCommandFleet(t, fl, "four")
	killed := start(a)
	locked := killed.Until(func(events []fleet.Event) bool {
		n := 0
		for _, ev := range events {
			if ev.Type == fleet.EventPhase && ev.Phase == fleet.PhaseLock && ev.State == "done" {
				n++
			}
		}
		return n >= 2
	})
	killed.Kill()
	killed.Wait(t)
	if !locked {
		t.Fatal("the run ended before it held its locks")
	}
	// The hosts see the killed run's connections close and their run-lock
	// processes end; until then the lock is (rightly) held.
	for _, h := range hosts[:2] {
		h := h.With(t)
		// (The pattern does not match this script's own command line.)
		h.Succeed("for i in $(seq 300); do pgrep -f 'deploy-agent run-loc[k]' >/dev/null || exit 0; sleep 0.1; done; exit 1")
	}
	events := r.JSON(t, "", a).Want(t, 0).Events
	tookOver := map[string]bool{}
	for _, ev := range events {
		if ev.Type == fleet.EventLog && ev.Phase == fleet.PhaseLock && ev.TookOver != nil {
			tookOver[ev.Host] = true
		}
	}
	if !tookOver["h1"] || !tookOver["h2"] {
		t.Errorf("took over the locks of %v, want h1 and h2 (the killed run's)", tookOver)
	}
}
