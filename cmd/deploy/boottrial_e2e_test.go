package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// bootTrialFleet writes a one-host fleet: a service that refuses to start
// where /etc/web-broken exists, its health check, and body in the host
// block (the deployment counts 1 boot attempt, the host may say more).
func bootTrialFleet(t *testing.T, fl *e2e.Fleet, h *vmtest.Host, body string) {
	t.Helper()
	fl.Write(t, "fleet.hcl", fmt.Sprintf(`deployment "prod" {
  hosts           = [%s]
  canary          = 0
  confirm_timeout = "20s"
  boot_attempts   = 1
  boot_timeout    = "3m"
}

role "web" {
  service "web" {
    exec_start = "/bin/sh -c 'test ! -e /etc/web-broken || exit 1; touch /run/web-ready; exec /bin/sleep infinity'"
    restart    = "no"
  }
  health_check "ready" {
    command = ["/bin/sh", "-c", "test -e /run/web-ready"]
    timeout = "10s"
  }
}

%s`, fl.Names(), e2e.HostBlock(h, "  role \"web\" {\n  }\n"+body)))
}

// hostBootState reads what the operator reads after a reboot: the boot
// id, the pending trial and the last fallback.
func hostBootState(t *testing.T, h *vmtest.Host) *agentapi.BootState {
	t.Helper()
	st := &agentapi.BootState{}
	cmd := agentapi.BootStateCmd("")
	if err := json.Unmarshal([]byte(h.Succeed(cmd[2])), st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestBootTrialE2E is issue 31's boot counting on a vmtest host that
// really reboots: a generation activated for boot whose health fails
// after the reboot (its service does not start) is booted boot_attempts
// times (the host's 2, over the deployment's 1), then the host makes the
// previous generation the boot default and boots it by itself, and
// deploy --mode boot --reboot reports the host rolled back (exit 3),
// naming the attempts and the reason. Then a generation whose boot unit
// fails (an activation script that fails at boot: the trial's agent does
// not bring it up) falls back after the deployment's 1 attempt, and
// deploy reboot reports that; so does one whose agent does not start at
// all (counted and given up by the previous generation's agent). A good
// generation then boots as a trial and confirms, while another run is
// refused the host's run lock, kept by the rebooting run's lease.
func TestBootTrialE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h1 := nw.Hosts[0]
	fl := e2e.NewFleet(t, nw)
	r := cli.New(t, nw, fl)
	target := fl.Target("prod")
	bootTrialFleet(t, fl, h1, "  boot_attempts = 2\n")
	fl.Commit(t, "first")
	r.JSON(t, "", target).Want(t, 0)
	gen1 := strings.TrimSpace(h1.Succeed("readlink /var/lib/deploy/profiles/system"))
	if gen1 != "system-1-link" {
		t.Fatalf("after the first deploy the boot default is %q", gen1)
	}
	// wantGeneration1 checks that h1 runs and boots generation 1, healthy.
	wantGeneration1 := func(t *testing.T) {
		t.Helper()
		if got := strings.TrimSpace(h1.Succeed("readlink /var/lib/deploy/profiles/system")); got != "system-1-link" {
			t.Errorf("boot default %q, want system-1-link", got)
		}
		if got := h1.Succeed("readlink -f /run/deploy/current-system"); got != h1.Succeed("readlink -f /var/lib/deploy/profiles/system-1-link") {
			t.Errorf("h1 runs %q, not generation 1", got)
		}
		h1.Succeed("test ! -e /etc/web-broken; test ! -e /var/lib/deploy/boot-trial.json")
		h1.WaitForUnit("web.service")
	}

	t.Run("health fails after the reboot", func(t *testing.T) {
		bootTrialFleet(t, fl, h1, "  boot_attempts = 2\n  file \"/etc/web-broken\" {\n    content = \"x\"\n  }\n")
		fl.Commit(t, "broken after a reboot")
		before := bootID(h1)
		res := r.JSON(t, "", target, "--mode", "boot", "--reboot").Want(t, ExitRolledBack)
		want := "rolled back after 2 failed boots of generation 2: not healthy: "
		if r := res.Results()["h1"]; r.Result != fleet.ResultRolledBack || r.Phase != fleet.PhaseReboot || !strings.Contains(r.Error, want) {
			t.Errorf("deploy --mode boot --reboot: h1 %+v, want rolled back in the reboot phase: %q", r, want)
		}
		if r := res.Results()["h1"]; r.Health == nil || !r.Health.Healthy || r.Health.Current != 1 {
			t.Errorf("h1's health after the fallback: %+v, want healthy at generation 1", r.Health)
		}
		if bootID(h1) == before {
			t.Errorf("h1 did not reboot")
		}
		wantGeneration1(t)
		st := hostBootState(t, h1)
		if rb := st.Rollback; st.Trial != nil || rb == nil || rb.Generation != 2 || rb.Previous != 1 || rb.Attempts != 2 || !strings.Contains(rb.Reason, "web.service") && !strings.Contains(rb.Reason, `"ready"`) {
			t.Errorf("boot state after the fallback: trial %+v, rollback %+v; want 2 failed attempts of generation 2 naming web.service or its check", st.Trial, st.Rollback)
		}
		if log := logOf(res.Events, "h1"); !strings.Contains(log, "generation 2 boots as a trial: after 2 boots") || !strings.Contains(log, want) {
			t.Errorf("deploy's log of h1 does not announce the trial and its fallback:\n%s", log)
		}
		if prom := h1.Succeed("cat /var/lib/deploy/metrics/deploy.prom"); !strings.Contains(prom, "\ndeploy_last_boot_fallback_attempts 2\n") ||
			!strings.Contains(prom, "\ndeploy_last_boot_fallback_generation 2\n") || strings.Contains(prom, "deploy_boot_trial_generation") {
			t.Errorf("h1's textfile does not show the fallback:\n%s", prom)
		}
		out := r.Text(t, "generations", fl.Target("h1")).Want(t, 0).Output()
		if !strings.Contains(out, "failed") || !strings.Contains(out, want) {
			t.Errorf("generations does not show generation 2 failed with %q:\n%s", want, out)
		}
		out = r.Text(t, "status", fl.Target("h1")).Want(t, 0).Output()
		if !strings.Contains(out, want) {
			t.Errorf("status does not report the fallback %q:\n%s", want, out)
		}
	})

	t.Run("boot unit fails", func(t *testing.T) {
		bootTrialFleet(t, fl, h1, "  activation_script \"boot-breaks\" {\n    script = \"test -z \\\"$DEPLOY_BOOT\\\"\"\n  }\n")
		fl.Commit(t, "its boot unit fails")
		r.JSON(t, "", target, "--mode", "boot").Want(t, 0)
		res := r.JSON(t, "reboot", target).Want(t, ExitRolledBack)
		// The guard sees the boot unit failed, or the trial's own
		// confirmation (whose health looks at that unit too) says so
		// first: either way the reason names the unit.
		want := "rolled back after 1 failed boots of generation 3: "
		if r := res.Results()["h1"]; r.Result != fleet.ResultRolledBack || r.Phase != fleet.PhaseReboot || !strings.Contains(r.Error, want) || !strings.Contains(r.Error, "deploy-boot.service failed") {
			t.Errorf("deploy reboot: h1 %+v, want rolled back: %q naming deploy-boot.service", r, want)
		}
		wantGeneration1(t)
		if st := hostBootState(t, h1); st.Rollback == nil || st.Rollback.Generation != 3 || st.Rollback.Attempts != 1 {
			t.Errorf("boot state: %+v", st.Rollback)
		}
	})

	// The trial's agent does not even start: every generation here has
	// the same agent store path, so the test gives generation 4's system
	// an agent that exits 1 (as a trial built with a broken agent would
	// have), after its boot-mode activation. Neither its boot unit nor its
	// confirmation runs; generation 1's agent counts and falls back.
	t.Run("the trial's agent does not start", func(t *testing.T) {
		bootTrialFleet(t, fl, h1, "  file \"/etc/web-v4\" {\n    content = \"x\"\n  }\n")
		fl.Commit(t, "its agent is broken")
		r.JSON(t, "", target, "--mode", "boot").Want(t, 0)
		h1.Succeed(`set -e; mkdir -p /var/lib/broken-agent/bin; printf '#!/bin/sh\nexit 1\n' >/var/lib/broken-agent/bin/deploy-agent
chmod 0755 /var/lib/broken-agent/bin/deploy-agent; sys=$(readlink -f /var/lib/deploy/profiles/system-4-link)
test "$(readlink -f /var/lib/deploy/profiles/system)" = "$sys"; rm "$sys/agent"; ln -s /var/lib/broken-agent "$sys/agent"`)
		res := r.JSON(t, "reboot", target).Want(t, ExitRolledBack)
		want := "rolled back after 1 failed boots of generation 4: deploy-boot.service failed: generation 4's agent did not bring it up"
		if r := res.Results()["h1"]; r.Result != fleet.ResultRolledBack || r.Phase != fleet.PhaseReboot || !strings.Contains(r.Error, want) {
			t.Errorf("deploy reboot: h1 %+v, want rolled back: %q", r, want)
		}
		wantGeneration1(t)
		h1.Succeed("test ! -e /etc/web-v4")
	})

	// A good generation, whose health check waits for /run/go: its trial
	// boot stays unconfirmed until the test creates it. Meanwhile the host
	// has rebooted (the run lock under /run is gone with the old boot), and
	// the rebooting run's lease keeps the lock its own: another run is
	// refused (exit 5). Then the trial confirms, the run takes its lock
	// again and ends ok, and the lock is free.
	t.Run("a good generation confirms; the run lock stays with the rebooting run", func(t *testing.T) {
		bootTrialFleet(t, fl, h1, "  file \"/etc/web-good\" {\n    content = \"x\"\n  }\n  health_check \"go\" {\n    command = [\"/bin/sh\", \"-c\", \"test -e /run/go\"]\n    timeout = \"5m\"\n  }\n")
		fl.Commit(t, "good")
		before := bootID(h1)
		run := r.Start(t, "", target, "--mode", "boot", "--reboot")
		for {
			// The trial's boot is up (startup over, sshd running) and its
			// confirmation waits for /run/go.
			out, err := h1.Run(t.Context(), "cat /proc/sys/kernel/random/boot_id; systemctl is-active -q ssh.service deploy-boot-confirm.service && test -e /var/lib/deploy/boot-trial.json && echo trial")
			if err == nil && !strings.HasPrefix(out, before) && strings.Contains(out, "trial") {
				break
			}
			select {
			case <-run.Done():
				t.Fatalf("deploy ended before the trial's boot was up:\n%s", run.Wait(t).Stderr)
			case <-time.After(200 * time.Millisecond):
			}
		}
		gc := r.JSON(t, "gc", target).Want(t, ExitLocked)
		if r := gc.Results()["h1"]; r.Result != fleet.ResultLocked || !strings.Contains(gc.Output(), "deploy") {
			t.Errorf("gc while h1 reboots for another run: h1 %+v, want locked by that deploy run:\n%s", r, gc.Output())
		}
		h1.Succeed("touch /run/go")
		res := run.Wait(t).Want(t, 0)
		if r := res.Results()["h1"]; r.Result != fleet.ResultOK || r.Generation != 5 {
			t.Errorf("deploy --mode boot --reboot: h1 %+v, want ok at generation 5", r)
		}
		if log := logOf(res.Events, "h1"); !strings.Contains(log, "generation 5 boots as a trial: after 1 boots") || !strings.Contains(log, "generation 5 confirmed its boot") ||
			!strings.Contains(log, "the run lock stays this run's across the reboot") {
			t.Errorf("deploy's log of h1 does not say the trial confirmed, with the run lock kept:\n%s", log)
		}
		h1.Succeed("test -e /etc/web-good; test ! -e /var/lib/deploy/boot-trial.json; test ! -e /var/lib/deploy/run-lease.json")
		if got := strings.TrimSpace(h1.Succeed("readlink /var/lib/deploy/profiles/system")); got != "system-5-link" {
			t.Errorf("boot default %q, want system-5-link", got)
		}
		r.JSON(t, "gc", target).Want(t, 0)
	})
}

// logOf is host's log lines among events.
func logOf(events []fleet.Event, host string) string {
	var b strings.Builder
	for _, ev := range events {
		if ev.Type == fleet.EventLog && ev.Host == host {
			b.WriteString(ev.Message + "\n")
		}
	}
	return b.String()
}

// TestRebootDuringActivationE2E: a host that reboots while an activation
// checks its health comes back on its boot default, the generation it ran
// before; deploy reports it as what it is, rolled back by the reboot and
// running generation 1 (exit 3), not as a failure of unknown outcome.
func TestRebootDuringActivationE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h1 := nw.Hosts[0]
	fl := e2e.NewFleet(t, nw)
	r := cli.New(t, nw, fl)
	target := fl.Target("prod")
	bootTrialFleet(t, fl, h1, "")
	fl.Commit(t, "first")
	r.JSON(t, "", target).Want(t, 0)

	// Generation 2's health check waits (up to 5m) for a file that never
	// comes: the activation stays in its checking phase.
	bootTrialFleet(t, fl, h1, "  file \"/etc/web-v2\" {\n    content = \"x\"\n  }\n  health_check \"waits\" {\n    command = [\"/bin/sh\", \"-c\", \"test -e /run/never\"]\n    timeout = \"5m\"\n  }\n")
	fl.Commit(t, "second")
	run := r.Start(t, "", target)
	for {
		if out, err := h1.Run(t.Context(), "cat /run/deploy/state.json"); err == nil && strings.Contains(out, `"checking"`) {
			break
		}
		select {
		case <-run.Done():
			t.Fatalf("deploy ended before the activation checked its health:\n%s", run.Wait(t).Stderr)
		case <-time.After(200 * time.Millisecond):
		}
	}
	h1.Reboot()
	res := run.Wait(t).Want(t, ExitRolledBack)
	// The worker, stopped by the shutdown, says so ("the host boots
	// generation 1 again"), or, when the operator's session ended first,
	// the operator finds the activation forgotten after the boot ("the
	// host runs generation 1").
	want := "interrupted by a reboot of the host before it was confirmed; the host "
	if r := res.Results()["h1"]; r.Result != fleet.ResultRolledBack || r.Phase != fleet.PhaseActivate || !strings.Contains(r.Error, want) || !strings.Contains(r.Error, "generation 1") {
		t.Errorf("deploy: h1 %+v, want rolled back in the activate phase: %q ... generation 1", r, want)
	}
	h1.Succeed("test ! -e /etc/web-v2")
	if got := strings.TrimSpace(h1.Succeed("readlink /var/lib/deploy/profiles/system")); got != "system-1-link" {
		t.Errorf("boot default %q, want system-1-link", got)
	}
	h1.WaitForUnit("web.service")
}
