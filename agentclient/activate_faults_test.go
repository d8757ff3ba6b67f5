package agentclient

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

func slowScript(seconds int) string {
	return fmt.Sprintf("  activation_script \"slow\" {\n    script = \"sleep %d\"\n  }\n", seconds)
}

// agentAt returns the agent executable of system on the host.
func agentAt(system string) string { return path.Join(system, "agent", agentapi.AgentBin) }

// waitPhase waits until the host's last activation is in phase.
func (f *fixture) waitPhase(phase string) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := f.h.Run(context.Background(), `grep -o '"phase": "[a-z-]*"' /run/deploy/state.json`)
		if strings.Contains(out, `"`+phase+`"`) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("activation never reached phase %q (state: %s)", phase, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The SSH connection cut in the middle of an activation: the activation
// completes on the target, and the operator reconnects and reports the
// real outcome.
func TestActivateConnectionCut(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.mustActivate(f.build(svc("a", "1", "1")))
	gen2 := f.build(svc("a", "2", "1") + file("/etc/app/x", "2\n") + slowScript(4))
	var once sync.Once
	restored := make(chan struct{})
	hook := func(format string, args ...any) {
		if strings.Contains(fmt.Sprintf(format, args...), "activation script slow") {
			once.Do(func() {
				f.h.Cut()
				go func() {
					time.Sleep(6 * time.Second) // beyond the 3 s keepalive verdict
					f.h.Restore()
					close(restored)
				}()
			})
		}
	}
	res, err := f.activate(gen2, ActivateOptions{ConfirmTimeout: 40 * time.Second, Logf: hook})
	<-restored
	if err != nil {
		t.Fatalf("Activate across a cut = %v, want success", err)
	}
	if !res.Reconnected || res.Generation != 2 || res.Outcome != "done" {
		t.Fatalf("Activate = %+v, want generation 2 done after a reconnect", res)
	}
	if got := f.h.Succeed("cat /etc/app/x"); got != "2\n" {
		t.Fatalf("/etc/app/x = %q", got)
	}
	f.wantStatus(2, 2)
}

// runAgent runs the agent of system on the host with stdin; it returns
// stdout+stderr and the exit status.
func (f *fixture) runAgent(user, stdin, system string, args ...string) (string, int) {
	f.t.Helper()
	cmd := fmt.Sprintf("printf '%%s\\n' %q | %s %s", stdin, agentAt(system), strings.Join(args, " "))
	if user != "" {
		cmd = fmt.Sprintf("printf '%%s\\n' %q | runuser -u %s -- %s %s", stdin, user, agentAt(system), strings.Join(args, " "))
	}
	out, err := f.h.Run(context.Background(), cmd+" 2>&1; echo \"exit=$?\"")
	if err != nil {
		f.t.Fatalf("%s: %v", cmd, err)
	}
	i := strings.LastIndex(out, "exit=")
	var code int
	fmt.Sscan(out[i+5:], &code)
	return out[:i], code
}

// A confirmation sent early (before the agent waits) is not lost; a stale
// confirmation from an earlier run never confirms; a non-root local user
// cannot confirm, nor take the lock.
func TestActivateConfirmation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	gen1 := f.build(svc("a", "1", "1"))
	f.mustActivate(gen1)
	const tok1, tok2 = "0123456789abcdef-first-token", "fedcba9876543210-second-token"

	t.Run("early", func(t *testing.T) {
		f.t = t
		gen2 := f.build(svc("a", "2", "1") + slowScript(3))
		f.h.Succeed(fmt.Sprintf("(printf '%%s\\n' %q | %s activate --confirm-timeout 5s %s >/tmp/act2.out 2>&1 &)", tok1, agentAt(gen2), gen2))
		f.waitPhase("applying") // the slow activation script runs: nobody waits yet
		out, code := f.runAgent("", tok1, gen2, "confirm", "2")
		if code != 0 || !strings.Contains(out, `"outcome":"done"`) {
			t.Fatalf("early confirm: exit %d, output %s", code, out)
		}
		f.wantStatus(2, 2)
	})

	t.Run("stale and non-root", func(t *testing.T) {
		f.t = t
		f.h.Succeed("useradd -m mallory")
		gen3 := f.build(svc("a", "3", "1") + slowScript(2))
		f.h.Succeed(fmt.Sprintf("(printf '%%s\\n' %q | %s activate --confirm-timeout 4s %s >/tmp/act3.out 2>&1; echo \"exit=$?\" >>/tmp/act3.out) >/dev/null 2>&1 &", tok2, agentAt(gen3), gen3))
		f.waitPhase("applying")
		// The earlier run's token (and its confirmation file, replayed into
		// this activation's slot) do not confirm generation 3.
		if out, code := f.runAgent("", tok1, gen3, "confirm", "3"); code == 0 {
			t.Fatalf("confirm with the earlier token succeeded: %s", out)
		}
		f.h.Succeed(fmt.Sprintf(`id=$(sed -n 's/.*"id": "\([0-9]*\)".*/\1/p' /run/deploy/state.json | head -1); printf '3 %%s\n' %s > /run/deploy/confirm/$id`,
			activation.HashToken([]byte(tok1))))
		// A local user with the right token cannot confirm, read the
		// state or take the lock.
		if out, code := f.runAgent("mallory", tok2, gen3, "confirm", "3"); code == 0 {
			t.Fatalf("mallory confirmed: %s", out)
		}
		f.h.Fail("runuser -u mallory -- cat /run/deploy/state.json")
		f.h.Fail("runuser -u mallory -- flock -n /run/deploy/lock true")
		// Nobody confirmed: generation 3 rolls back.
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(f.h.Succeed("cat /tmp/act3.out"), "exit=") {
			if time.Now().After(deadline) {
				t.Fatal("activation of generation 3 did not end")
			}
			time.Sleep(200 * time.Millisecond)
		}
		out := f.h.Succeed("cat /tmp/act3.out")
		if !strings.Contains(out, `"outcome":"awaiting-confirmation"`) {
			t.Fatalf("activate output: %s", out)
		}
		// The front returns when the agent waits; wait for the rollback.
		deadline = time.Now().Add(30 * time.Second)
		for f.status().Current != 2 || f.status().Pending != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("status %+v: generation 3 was not rolled back", f.status())
			}
			time.Sleep(200 * time.Millisecond)
		}
		f.wantStatus(2, 2, 3)
	})

	// The operator's "no": only the activation's token rejects it, and a
	// rejection rolls the host back at once, with the check named (the
	// confirmation timeout, 10 minutes, never comes into it).
	t.Run("reject", func(t *testing.T) {
		f.t = t
		f.h.Succeed("id mallory >/dev/null 2>&1 || useradd -m mallory")
		const tok3 = "0123456789abcdef-third-token"
		const reason = `metric gate "error-ratio": query "q" returned 0.2, above max 0.05`
		gen4 := f.build(svc("a", "4", "1"))
		f.h.Succeed(fmt.Sprintf("(printf '%%s\\n' %q | %s activate --confirm-timeout 10m %s >/tmp/act4.out 2>&1 &)", tok3, agentAt(gen4), gen4))
		f.waitPhase("awaiting-confirmation")
		reject := func(user, tok string) (string, int) {
			t.Helper()
			run := agentAt(gen4)
			if user != "" {
				run = "runuser -u " + user + " -- " + run
			}
			out, err := f.h.Run(context.Background(), fmt.Sprintf("printf '%%s\\n' %q %q | %s confirm --reject error-ratio 4 2>&1; echo \"exit=$?\"", tok, reason, run))
			if err != nil {
				t.Fatal(err)
			}
			i := strings.LastIndex(out, "exit=")
			var code int
			fmt.Sscan(out[i+5:], &code)
			return out[:i], code
		}
		if out, code := reject("", tok1); code == 0 {
			t.Fatalf("a reject with another token succeeded: %s", out)
		}
		if out, code := reject("mallory", tok3); code == 0 {
			t.Fatalf("mallory rejected: %s", out)
		}
		if st := f.status(); st.Pending != 4 {
			t.Fatalf("status %+v after the refused rejections: want generation 4 still pending", st)
		}
		out, code := reject("", tok3)
		if code != 3 || !strings.Contains(out, `"outcome":"rolled-back"`) || !strings.Contains(out, `"check":"error-ratio"`) ||
			!strings.Contains(out, "the operator's health check failed: metric gate") {
			t.Fatalf("reject: exit %d, output %s; want exit 3, rolled back by the check error-ratio", code, out)
		}
		f.wantStatus(2, 2, 3, 4)
	})
}

// Two concurrent activations: the second fails at once, naming the
// holder.
func TestActivateConcurrent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	gen1 := f.build(svc("a", "1", "1") + slowScript(1))
	gen2 := f.build(svc("a", "2", "1"))
	first := make(chan error, 1)
	go func() {
		_, err := f.activate(gen1, ActivateOptions{Meta: map[string]string{"git_rev": "first-rev"}, ConfirmTimeout: 20 * time.Second})
		first <- err
	}()
	f.waitPhase("applying")
	_, err := f.activateOn(connect(t, f.cfg, target(f.h)), gen2, ActivateOptions{})
	var lh *LockHeldError
	if !errors.As(err, &lh) || !strings.Contains(lh.Holder, "pid") || !strings.Contains(lh.Holder, "first-rev") {
		t.Fatalf("second Activate = %v, want a LockHeldError naming the holder's pid and git rev", err)
	}
	select {
	case err := <-first:
		t.Fatalf("the first activation ended (%v) before the second was refused: not 'at once'", err)
	default:
	}
	if err := <-first; err != nil {
		t.Fatalf("first Activate: %v", err)
	}
	f.wantStatus(1, 1)
}

// A crash (power cut) during an activation, then boot: the host runs the
// old generation completely, never a mix, and status says so.
func TestActivateCrash(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	gen1 := f.build(svc("a", "1", "1") + file("/etc/app/a.conf", "v1\n"))
	f.mustActivate(gen1)
	gen2 := f.build(svc("a", "2", "1") + svc("x", "1", "1") + file("/etc/app/a.conf", "v2\n") + slowScript(30))
	// The operator side of this activation loses its host; it must not
	// outlive the test.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		f.clientOn(f.client).Activate(ctx, gen2, ActivateOptions{ConfirmTimeout: 30 * time.Second})
	}()
	// Crash once the new files and units are in place.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(f.h.Succeed("cat /var/lib/deploy/log/activate-2.log 2>/dev/null || true"), "activation script slow") {
		if time.Now().After(deadline) {
			t.Fatal("the activation never reached its activation script")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if f.h.Succeed("cat /etc/app/a.conf") != "v2\n" || !f.active("x.service") {
		t.Fatal("generation 2 was not half applied when the crash came: the test proves nothing")
	}
	f.h.Crash()
	f.h.Boot()
	f.h.WaitForUnit("multi-user.target")
	if out := f.h.Succeed("systemctl is-active deploy-boot.service"); strings.TrimSpace(out) != "active" {
		t.Fatalf("deploy-boot.service: %s", out)
	}
	if got := f.h.Succeed("cat /etc/app/a.conf"); got != "v1\n" {
		t.Errorf("a.conf = %q after the crash, want generation 1's", got)
	}
	f.h.Fail("test -e /etc/systemd/system/x.service")
	if f.active("x.service") {
		t.Error("x.service (generation 2 only) runs after the crash")
	}
	want := strings.TrimSpace(f.h.Succeed(fmt.Sprintf("readlink %s/units/a.service", gen1)))
	if got := strings.TrimSpace(f.h.Succeed("readlink /etc/systemd/system/a.service")); got != want {
		t.Errorf("a.service links to %s, want generation 1's %s", got, want)
	}
	if !f.active("a.service") {
		t.Error("a.service not active after the crash")
	}
	f.wantStatus(1, 1, 2)
	if cur := strings.TrimSpace(f.h.Succeed("readlink /run/deploy/current-system")); cur != gen1 {
		t.Errorf("current-system = %s, want %s", cur, gen1)
	}
}

// rollback --to N restores generation N with its units, and survives a
// reboot; gc --keep keeps the current and boot generations.
func TestRollbackToAndGC(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	gen1 := f.build(svc("a", "1", "1") + file("/etc/app/v", "1\n"))
	gen2 := f.build(svc("a", "2", "1") + svc("b", "1", "1") + file("/etc/app/v", "2\n"))
	gen3 := f.build(svc("b", "2", "1") + file("/etc/app/v", "3\n"))
	for _, g := range []string{gen1, gen2, gen3} {
		f.mustActivate(g)
	}
	check := func(when string) {
		t.Helper()
		if got := f.h.Succeed("cat /etc/app/v"); got != "1\n" {
			t.Errorf("%s: /etc/app/v = %q, want generation 1's", when, got)
		}
		if !f.active("a.service") || f.active("b.service") {
			t.Errorf("%s: a active %v (want true), b active %v (want false)", when, f.active("a.service"), f.active("b.service"))
		}
		f.wantStatus(1, 1)
	}
	out, code := f.runAgent("", "unused", gen3, "rollback", "--to", "1")
	if code != 0 {
		t.Fatalf("rollback --to 1: exit %d: %s", code, out)
	}
	check("after rollback --to 1")
	rolledBack := map[string]float64{
		"deploy_current_generation":                    1,
		"deploy_last_activation_generation":            1,
		"deploy_last_activation_success":               1,
		"deploy_last_activation_outcome{outcome=done}": 1,
		"deploy_last_rollback_generation":              1,
		"deploy_last_rollback_success":                 1,
		"deploy_last_rollback_outcome{outcome=done}":   1,
	}
	f.wantMetrics(t, "after rollback --to 1", rolledBack)
	f.h.Reboot()
	f.h.WaitForUnit("multi-user.target")
	check("after a reboot")
	f.wantMetrics(t, "after a reboot", rolledBack)

	out, code = f.runAgent("", "unused", gen1, "gc", "--keep", "1")
	if code != 0 {
		t.Fatalf("gc: exit %d: %s", code, out)
	}
	t.Logf("gc: %s", out)
	// Generation 3 is the newest, 1 the current and boot one: 2 goes.
	f.h.Fail("test -e /var/lib/deploy/profiles/system-2-link")
	f.h.Fail("test -e " + gen2)
	f.h.Succeed("test -e " + gen1 + " && test -e " + gen3)
	check("after gc")
}
