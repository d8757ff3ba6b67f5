package activation

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
)

// trialHost is a host's state directory with generations 1 and 2 (and
// 3), generation 1 running and the boot default, and generation 1's
// agent a script that knows boot-guard.
type trialHost struct {
	t    *testing.T
	l    Layout
	w    *Worker
	sys  map[int]string
	boot int // reboots asked for
}

func newTrialHost(t *testing.T) *trialHost {
	t.Helper()
	dir := t.TempDir()
	l := Layout{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), UnitDir: filepath.Join(dir, "units")}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	h := &trialHost{t: t, l: l, w: &Worker{Layout: l, Logf: t.Logf}, sys: map[int]string{}}
	for n, c := range map[int]string{1: "0", 2: "1", 3: "2"} {
		sys := "/var/lib/deploy/store/" + strings.Repeat(c, 32) + "-system-web1"
		h.sys[n] = sys
		if _, err := l.createGeneration(n, sys, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	// Generation 1's agent knows boot-guard (`boot-guard -h` exits 0).
	agent := filepath.Join(l.StateDir, "store", filepath.Base(h.sys[1]), "agent", "bin", "deploy-agent")
	if err := os.MkdirAll(filepath.Dir(agent), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agent, []byte("#!/bin/sh\n[ \"$1\" = boot-guard ] && exit 0\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h.run(1)
	if err := l.setBootDefault(1); err != nil {
		t.Fatal(err)
	}
	return h
}

// run makes generation n the running one.
func (h *trialHost) run(n int) {
	h.t.Helper()
	if err := h.l.setCurrent(h.sys[n]); err != nil {
		h.t.Fatal(err)
	}
	if err := h.l.writeState(&State{Current: n, CurrentSystem: h.sys[n]}); err != nil {
		h.t.Fatal(err)
	}
}

// arm is a boot-mode activation of generation n concluding: the trial
// armed, then the boot default moved.
func (h *trialHost) arm(n, attempts int, timeout time.Duration) {
	h.t.Helper()
	if err := h.w.armTrial(context.Background(), n, h.sys[n], &Request{BootAttempts: attempts, BootTimeout: timeout}); err != nil {
		h.t.Fatal(err)
	}
	if err := h.l.setBootDefault(n); err != nil {
		h.t.Fatal(err)
	}
}

// guard is deploy-boot-guard.service of boot id; failed names the units
// that failed in that boot.
func (h *trialHost) guard(id string, failed ...string) *BootGuard {
	return &BootGuard{Layout: h.l, Logf: h.t.Logf, BootID: id, Poll: time.Millisecond,
		Reboot:     func(context.Context) error { h.boot++; return nil },
		UnitFailed: func(_ context.Context, unit string) bool { return strings.Contains(strings.Join(failed, " "), unit) },
	}
}

func (h *trialHost) trial() *BootTrial {
	h.t.Helper()
	tr, err := h.l.ReadBootTrial()
	if err != nil {
		h.t.Fatal(err)
	}
	return tr
}

func (h *trialHost) bootDefault() int {
	h.t.Helper()
	n, err := h.l.BootGeneration()
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// wantFallback checks that the trial of generation gen fell back to
// generation 1 after attempts boots, for reason.
func (h *trialHost) wantFallback(gen, attempts int, reason string) {
	h.t.Helper()
	if tr := h.trial(); tr != nil {
		h.t.Errorf("trial still pending after the fallback: %+v", tr)
	}
	if got := h.bootDefault(); got != 1 {
		h.t.Errorf("boot default %d after the fallback, want 1", got)
	}
	rb, err := h.l.ReadBootRollback()
	if err != nil || rb == nil {
		h.t.Fatalf("ReadBootRollback() = %v, %v; want the fallback", rb, err)
	}
	want := "rolled back after " + strconv.Itoa(attempts) + " failed boots of generation " + strconv.Itoa(gen) + ": " + reason
	if rb.Generation != gen || rb.Previous != 1 || rb.Attempts != attempts || !strings.HasPrefix(rb.Message(), want) {
		h.t.Errorf("fallback %+v (%q), want generation %d to 1 after %d boots: %q", rb, rb.Message(), gen, attempts, want)
	}
	g, err := h.l.Generation(gen)
	if err != nil {
		h.t.Fatal(err)
	}
	if !g.Failed || g.FailedReason != rb.Message() {
		h.t.Errorf("generation %d: failed %v (%q), want failed with %q", gen, g.Failed, g.FailedReason, rb.Message())
	}
}

// The trial's life: armed by a boot-mode activation (the fallback's agent
// counts), each boot counted once before the trial's code runs (a guard
// started again in the same boot counts nothing), a boot that is not
// confirmed in time or whose boot unit failed is a failed attempt and a
// reboot, and the last failed attempt makes generation 1 the boot default
// again before the reboot, recording why.
func TestBootTrialFallsBackAfterAttempts(t *testing.T) {
	h := newTrialHost(t)
	h.arm(2, 2, 20*time.Millisecond)
	tr := h.trial()
	if tr == nil || tr.Generation != 2 || tr.Previous != 1 || tr.PreviousSystem != h.sys[1] || tr.MaxAttempts != 2 || len(tr.Attempts) != 0 {
		t.Fatalf("armed trial %+v, want generation 2 falling back to 1 after 2 attempts", tr)
	}
	if n, ok := h.l.bootGuardGeneration(); !ok || n != 1 {
		t.Errorf("boot-guard names generation %d (%v), want 1: its agent knows boot-guard", n, ok)
	}

	// Boot 1: counted before anything else, once.
	g := h.guard("b1")
	if got, reboot, err := g.Count(); err != nil || got == nil || reboot || len(got.Attempts) != 1 {
		t.Fatalf("Count() in boot 1 = %+v, %v, %v; want attempt 1", got, reboot, err)
	}
	if got, _, _ := g.Count(); got == nil || len(got.Attempts) != 1 || len(h.trial().Attempts) != 1 {
		t.Fatalf("Count() again in boot 1: %+v, want attempt 1 still", h.trial())
	}
	if err := h.l.WriteMetrics(); err != nil {
		t.Fatal(err)
	}
	wantSamples(t, parseTextfile(t, h.l), "in the trial's first boot", map[string]float64{
		"deploy_boot_trial_generation":   2,
		"deploy_boot_trial_attempts":     1,
		"deploy_boot_trial_max_attempts": 2,
	})
	// No confirmation within the timeout: a failed attempt, a reboot.
	if err := g.watch(context.Background(), h.trial()); err != nil {
		t.Fatal(err)
	}
	if tr := h.trial(); h.boot != 1 || tr == nil || !strings.HasPrefix(tr.Attempts[0].Failure, "not confirmed within") || h.bootDefault() != 2 {
		t.Fatalf("after boot 1's timeout: reboots %d, trial %+v, boot default %d; want 1 reboot, attempt 1 failed, still 2", h.boot, tr, h.bootDefault())
	}

	// Boot 2: the trial's boot unit fails: the last attempt: fallback
	// first, then the reboot.
	g = h.guard("b2", BootUnitName)
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.boot != 2 {
		t.Errorf("reboots %d, want 2", h.boot)
	}
	h.wantFallback(2, 2, BootUnitName+" failed")

	// Boot 3 boots generation 1: nothing to count.
	if got, reboot, err := h.guard("b3").Count(); got != nil || reboot || err != nil {
		t.Errorf("Count() after the fallback = %+v, %v, %v; want nothing", got, reboot, err)
	}
}

// A boot that ends before anything decided it (a crash, a power cut, a
// hang ended by a reset) is counted as failed by the next boot's guard;
// when it was the last attempt, that guard falls back before the trial's
// code runs and reboots into generation 1.
func TestBootTrialCrashedBootsCount(t *testing.T) {
	h := newTrialHost(t)
	h.arm(2, 2, time.Hour)
	for _, id := range []string{"b1", "b2"} {
		if got, reboot, err := h.guard(id).Count(); err != nil || got == nil || reboot {
			t.Fatalf("Count() in %s = %+v, %v, %v", id, got, reboot, err)
		}
	}
	if tr := h.trial(); len(tr.Attempts) != 2 || !strings.Contains(tr.Attempts[0].Failure, "ended before it confirmed") || tr.Attempts[1].Failure != "" {
		t.Fatalf("after two boots: %+v", tr.Attempts)
	}
	got, reboot, err := h.guard("b3").Count()
	if err != nil || got != nil || !reboot {
		t.Fatalf("Count() in boot 3 = %+v, %v, %v; want the fallback and a reboot", got, reboot, err)
	}
	h.wantFallback(2, 2, "the boot ended before it confirmed")
	// The textfile (written by the next boot's boot unit) shows the
	// fallback; no trial is pending.
	if err := h.l.WriteMetrics(); err != nil {
		t.Fatal(err)
	}
	samples := parseTextfile(t, h.l)
	wantSamples(t, samples, "after the fallback", map[string]float64{
		"deploy_last_boot_fallback_generation": 2,
		"deploy_last_boot_fallback_previous":   1,
		"deploy_last_boot_fallback_attempts":   2,
	})
	if _, ok := samples["deploy_boot_trial_generation"]; ok {
		t.Errorf("the textfile shows a pending trial after the fallback")
	}
}

// A healthy boot confirms the trial: the record goes, the guard stops
// watching without a reboot, and a later health report changes nothing.
// An unhealthy one is the attempt's failure, which the guard acts on.
func TestBootTrialConfirm(t *testing.T) {
	h := newTrialHost(t)
	h.arm(2, 3, time.Hour)
	g := h.guard("b1")
	tr, _, err := g.Count()
	if err != nil || tr == nil {
		t.Fatal(err)
	}
	if err := h.l.recordBootHealth(tr.ID, "b1", &Health{Message: "units not running: web.service: failed"}, t.Logf); err != nil {
		t.Fatal(err)
	}
	if err := g.watch(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	if cur := h.trial(); h.boot != 1 || cur == nil || cur.Attempts[0].Failure != "not healthy: units not running: web.service: failed" {
		t.Fatalf("unhealthy boot 1: reboots %d, trial %+v", h.boot, cur)
	}
	g = h.guard("b2")
	if tr, _, err = g.Count(); err != nil || tr == nil || len(tr.Attempts) != 2 {
		t.Fatalf("boot 2: %+v %v", tr, err)
	}
	if err := h.l.recordBootHealth(tr.ID, "b2", &Health{Healthy: true}, t.Logf); err != nil {
		t.Fatal(err)
	}
	if err := g.watch(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	if cur := h.trial(); cur != nil || h.boot != 1 || h.bootDefault() != 2 {
		t.Errorf("after a healthy boot 2: trial %+v, reboots %d, boot default %d; want none, 1, 2", cur, h.boot, h.bootDefault())
	}
	if rb, _ := h.l.ReadBootRollback(); rb != nil {
		t.Errorf("a confirmed trial recorded a fallback: %+v", rb)
	}
	// A mode switch activation clears a trial never booted.
	h.arm(3, 3, time.Hour)
	if err := h.l.clearTrial(); err != nil || h.trial() != nil {
		t.Errorf("clearTrial: %v, trial %+v", err, h.trial())
	}
}

// Power cuts: between recording the trial and moving the boot default
// (the record names a generation that is not the boot default: dropped at
// boot, the old generation boots), and between moving the boot default
// back and removing the record (the same). In the middle of a fallback
// (recorded and marked failed, the boot default not moved yet), the next
// boot falls back again.
func TestBootTrialPowerCuts(t *testing.T) {
	t.Run("armed, boot default not moved", func(t *testing.T) {
		h := newTrialHost(t)
		if err := h.w.armTrial(context.Background(), 2, h.sys[2], &Request{}); err != nil {
			t.Fatal(err)
		}
		if tr := h.trial(); tr.MaxAttempts != agentapi.DefaultBootAttempts || tr.Timeout != agentapi.DefaultBootTimeout {
			t.Errorf("defaults: %+v", tr)
		}
		if got, reboot, err := h.guard("b1").Count(); got != nil || reboot || err != nil || h.trial() != nil || h.bootDefault() != 1 {
			t.Errorf("Count() = %+v, %v, %v; trial %+v; want it dropped, generation 1 booted", got, reboot, err, h.trial())
		}
	})
	t.Run("fallback, record left", func(t *testing.T) {
		h := newTrialHost(t)
		h.arm(2, 1, time.Hour)
		tr, _, _ := h.guard("b1").Count()
		if err := h.l.setBootDefault(1); err != nil {
			t.Fatal(err)
		}
		if got, reboot, err := h.guard("b2").Count(); got != nil || reboot || err != nil || h.trial() != nil {
			t.Errorf("Count() = %+v, %v, %v after a cut with the record of %s left", got, reboot, err, tr.ID)
		}
	})
	t.Run("fallback, boot default not moved", func(t *testing.T) {
		h := newTrialHost(t)
		h.arm(2, 1, time.Hour)
		tr, _, _ := h.guard("b1").Count()
		tr.Attempts[0].Failure = "not healthy: x"
		if err := writeJSON(h.l.bootTrialFile(), tr); err != nil {
			t.Fatal(err)
		}
		if err := h.l.markFailed(2, "rolled back after 1 failed boots of generation 2: not healthy: x", time.Now()); err != nil {
			t.Fatal(err)
		}
		if got, reboot, err := h.guard("b2").Count(); got != nil || !reboot || err != nil {
			t.Errorf("Count() = %+v, %v, %v; want the fallback again and a reboot", got, reboot, err)
		}
		h.wantFallback(2, 1, "not healthy: x")
	})
}

// The fallback is the last generation that ran, not an unconfirmed
// trial that runs; an agent that predates boot-guard does not count;
// a trial's fallback survives gc.
func TestBootTrialArm(t *testing.T) {
	h := newTrialHost(t)
	h.arm(2, 3, time.Hour)
	h.guard("b1").Count()
	h.run(2) // the trial boots and runs, not yet confirmed
	h.arm(3, 3, time.Hour)
	tr := h.trial()
	if tr.Generation != 3 || tr.Previous != 1 {
		t.Errorf("trial of 3 while 2 is an unconfirmed trial: %+v, want it to fall back to 1", tr)
	}
	if removed, err := h.l.RemoveOldGenerations(1); err != nil || len(removed) != 0 {
		t.Errorf("RemoveOldGenerations(1) = %v, %v; want generation 1 (the fallback, the guard's) and 2 (running) kept", removed, err)
	}
	// Generation 3 runs (confirmed), and 2's agent (none here) does not
	// know boot-guard: 2's trial is counted by its own agent.
	h2 := newTrialHost(t)
	h2.run(3)
	h2.arm(2, 3, time.Hour)
	if tr := h2.trial(); tr.Previous != 3 {
		t.Errorf("trial: %+v, want previous 3", tr)
	}
	if n, _ := h2.l.bootGuardGeneration(); n != 2 {
		t.Errorf("boot-guard names %d, want 2: generation 3's agent does not know boot-guard", n)
	}
	// Nothing to fall back to: no trial.
	h2.arm(3, 3, time.Hour)
	if tr := h2.trial(); tr != nil {
		t.Errorf("trial of the running generation: %+v", tr)
	}
}

// An activation cancelled because the host shuts down is not rolled back
// by the worker (the next boot re-applies the boot default): the
// generation is marked failed and the result says that the reboot ended
// it, naming the generation the host boots. Cancelled otherwise, it rolls
// back as before (here: the previous generation's agent is a stand-in
// that exits 2, so the rollback fails).
func TestShutdownInterruptsActivation(t *testing.T) {
	for _, stopping := range []bool{true, false} {
		h := newTrialHost(t)
		h.w.Stopping = func() bool { return stopping }
		st := &State{Current: 2, CurrentSystem: h.sys[2], Activation: &ActivationState{}}
		st.Activation.ID, st.Activation.Generation, st.Activation.Previous, st.Activation.Mode = "5", 2, 1, ModeSwitch
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		res := &Result{}
		h.w.rollback(ctx, res, st, h.sys[1], context.Canceled)
		g, _ := h.l.Generation(2)
		want := "generation 2: interrupted by a reboot of the host before it was confirmed; the host boots generation 1 again"
		switch {
		case stopping && (res.Outcome != OutcomeRolledBack || res.Message != want || !g.Failed):
			t.Errorf("shutting down: %s %q, generation 2 failed %v; want rolled back: %q", res.Outcome, res.Message, g.Failed, want)
		case !stopping && (res.Outcome != OutcomeFailed || !strings.Contains(res.Message, "the rollback failed too")):
			t.Errorf("not shutting down: %s %q; want the rollback tried (and failed)", res.Outcome, res.Message)
		}
	}
}
