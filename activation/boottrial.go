package activation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/atomicfile"
)

// Boot counting (docs/activation.md, "Boot counting").
//
// A generation that an activation in mode boot makes the boot default is a
// trial: STATE/boot-trial.json records it, the generation it falls back to
// and its boots. Three actors share that record under the flock of
// STATE/boot-trial.lock:
//
//   - the arming activation (the trial's own agent, [Worker.armTrial]),
//     which writes the record and points profiles/boot-guard at the
//     fallback generation before the boot default moves;
//   - deploy-boot-guard.service, run early at boot by the agent of the
//     generation profiles/boot-guard names (not the trial's:
//     [BootGuard]), which counts the boot durably before the trial's own
//     boot unit runs, then waits for the boot's confirmation and reboots
//     when it does not come, falling back after the last attempt;
//   - deploy-boot-confirm.service, run by the trial's agent once startup
//     is over ([Layout.ConfirmBoot]): the boot default's health, as
//     deploy reboot waits for it; healthy clears the trial, unhealthy
//     records the failure for the guard.

// BootTrial is a pending trial's record (see [agentapi.BootTrial]).
type BootTrial = agentapi.BootTrial

// BootRollback is a trial that fell back (see [agentapi.BootRollback]).
type BootRollback = agentapi.BootRollback

// Units of boot counting.
const (
	BootGuardUnitName   = "deploy-boot-guard.service"
	BootConfirmUnitName = "deploy-boot-confirm.service"
)

func (l Layout) bootTrialFile() string { return agentapi.BootTrialFile(l.withDefaults().StateDir) }
func (l Layout) bootRollbackFile() string {
	return agentapi.BootRollbackFile(l.withDefaults().StateDir)
}
func (l Layout) bootGuardLink() string { return agentapi.BootGuardProfile(l.withDefaults().StateDir) }
func (l Layout) bootTrialLock() string {
	return filepath.Join(l.withDefaults().StateDir, "boot-trial.lock")
}

// ReadBootTrial reads the pending trial; nil when there is none.
func (l Layout) ReadBootTrial() (*BootTrial, error) {
	t := &BootTrial{}
	if ok, err := readJSON(l.bootTrialFile(), t); !ok {
		return nil, err
	}
	return t, nil
}

// ReadBootRollback reads the last trial that fell back; nil when none did.
func (l Layout) ReadBootRollback() (*BootRollback, error) {
	r := &BootRollback{}
	if ok, err := readJSON(l.bootRollbackFile(), r); !ok {
		return nil, err
	}
	return r, nil
}

func readJSON(p string, v any) (bool, error) {
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("%q: %w", p, err)
	}
	return true, nil
}

// writeJSON writes v as one line, temp + fsync + rename + directory
// fsync. The boot-counting records hold no secret: mode 0644, so that an
// operator's plain cat reads them ([agentapi.BootStateCmd]).
func writeJSON(p string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(p, append(data, '\n'), 0o644)
}

func (l Layout) removeBootTrial() error {
	if err := os.Remove(l.bootTrialFile()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(l.bootTrialFile()))
}

// lockBootTrial takes the trial's flock (waiting): the record's readers
// and writers modify it one at a time.
func (l Layout) lockBootTrial() (func(), error) {
	if err := os.MkdirAll(l.withDefaults().StateDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(l.bootTrialLock(), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("boot trial lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("boot trial lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// bootGuardGeneration is the generation profiles/boot-guard names.
func (l Layout) bootGuardGeneration() (int, bool) {
	t, err := os.Readlink(l.bootGuardLink())
	if err != nil {
		return 0, false
	}
	return parseGenLink(filepath.Base(t))
}

// agentKnows reports whether the agent executable exe knows verb (`VERB
// -h` exits 0 for every verb an agent knows).
func agentKnows(ctx context.Context, exe, verb string) bool {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return exec.CommandContext(cctx, exe, verb, "-h").Run() == nil
}

// armTrial makes generation gen, which is about to become the boot
// default by an activation in mode boot, a trial: it records the trial
// (attempts and the time each boot has to confirm from req, else the
// defaults) and the generation it falls back to: the running one, or,
// when that is itself an unconfirmed trial, that trial's fallback. It
// points profiles/boot-guard at the fallback generation when that
// generation's agent knows boot-guard, else (an agent from before boot
// counting) at gen itself. Called before the boot default moves: a power
// cut in between leaves a record the guard drops (the boot default is not
// its generation). Without a generation to fall back to (or when gen runs
// already) there is no trial.
func (w *Worker) armTrial(ctx context.Context, gen int, system string, req *Request) error {
	l := w.Layout
	unlock, err := l.lockBootTrial()
	if err != nil {
		return err
	}
	defer unlock()
	prev, _ := l.CurrentGeneration()
	st, _ := l.ReadState()
	prevSystem := ""
	if st != nil {
		prevSystem = st.CurrentSystem
	}
	if old, _ := l.ReadBootTrial(); old != nil && old.Generation == prev && prev != 0 {
		prev, prevSystem = old.Previous, old.PreviousSystem
	}
	if prev == 0 || prev == gen {
		w.logf("generation %d: no trial (no other generation to fall back to)", gen)
		return l.removeBootTrial()
	}
	t := &BootTrial{V: agentapi.Version, Generation: gen, System: system, Previous: prev, PreviousSystem: prevSystem,
		MaxAttempts: req.BootAttempts, Timeout: req.BootTimeout, Created: time.Now().UTC(), Attempts: []BootAttempt{}}
	t.ID = strconv.Itoa(gen) + "-" + t.Created.Format("20060102T150405.000000000Z")
	if t.MaxAttempts <= 0 {
		t.MaxAttempts = agentapi.DefaultBootAttempts
	}
	if t.Timeout <= 0 {
		t.Timeout = agentapi.DefaultBootTimeout
	}
	guard := prev
	if exe := agentapi.SystemAgent(w.store().RealPath(prevSystem)); !agentKnows(ctx, exe, agentapi.VerbBootGuard) {
		w.logf("generation %d's agent predates boot counting: generation %d's own agent counts its boots", prev, gen)
		guard = gen
	}
	if err := symlinkAtomic(filepath.Base(l.genLink(guard)), l.bootGuardLink()); err != nil {
		return err
	}
	if err := writeJSON(l.bootTrialFile(), t); err != nil {
		return err
	}
	w.logf("generation %d is a trial: %d boots may fail to confirm within %v each before generation %d is booted again", gen, t.MaxAttempts, t.Timeout, prev)
	return nil
}

// clearTrial drops a pending trial: the boot default moved to a
// generation that runs (mode switch, a rollback).
func (l Layout) clearTrial() error {
	unlock, err := l.lockBootTrial()
	if err != nil {
		return err
	}
	defer unlock()
	return l.removeBootTrial()
}

// BootAttempt is one boot of a trial.
type BootAttempt = agentapi.BootAttempt

// BootGuard is what deploy-boot-guard.service runs (deploy-agent
// boot-guard), with the agent of the generation profiles/boot-guard
// names, before deploy-boot.service runs the trial's. Its zero value
// uses the default layout and the real system.
type BootGuard struct {
	Layout Layout
	Logf   func(format string, args ...any)
	// Ready is called once the boot is counted (sd_notify READY=1: the
	// trial's boot unit waits for it).
	Ready func()
	// Reboot reboots the host (default: systemctl reboot).
	Reboot func(ctx context.Context) error
	// UnitFailed reports whether a unit failed (default: systemctl).
	UnitFailed func(ctx context.Context, unit string) bool
	// BootID is this boot's id (default: the kernel's).
	BootID string
	// Poll is how often the record and the units are looked at (1s).
	Poll time.Duration
}

func (g *BootGuard) logf(format string, args ...any) {
	if g.Logf != nil {
		g.Logf(format, args...)
	}
}

// Run counts this boot of the pending trial, durably, then (when the
// trial goes on in this boot) waits for its confirmation: a boot that
// does not confirm within the trial's timeout, whose deploy-boot.service
// or deploy-boot-confirm.service failed, or that deploy-boot-confirm
// found unhealthy, is a failed attempt; the host reboots, and after the
// last attempt it first makes the fallback generation the boot default
// again. A trial whose attempts are used up when a boot begins (the last
// one ended by a crash, a power cut or a reboot before it was decided)
// falls back at once, and the host reboots into the fallback.
func (g *BootGuard) Run(ctx context.Context) error {
	t, reboot, err := g.Count()
	if g.Ready != nil {
		g.Ready()
	}
	if err != nil {
		return err
	}
	if reboot {
		return g.reboot(ctx)
	}
	if t == nil {
		return nil
	}
	return g.watch(ctx, t)
}

func (g *BootGuard) bootID() string {
	if g.BootID != "" {
		return g.BootID
	}
	return BootID()
}

// Count is the boot-time step of [BootGuard.Run]: it returns the trial
// that goes on in this boot (nil: none), or says to reboot because the
// trial fell back.
func (g *BootGuard) Count() (*BootTrial, bool, error) {
	l := g.Layout
	unlock, err := l.lockBootTrial()
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	t, err := l.ReadBootTrial()
	if err != nil || t == nil {
		return nil, false, err
	}
	boot, err := l.BootGeneration()
	if err != nil {
		return nil, false, err
	}
	if boot != t.Generation {
		g.logf("the boot default is generation %d, not the trial's %d: dropping the trial", boot, t.Generation)
		return nil, false, l.removeBootTrial()
	}
	id := g.bootID()
	n := len(t.Attempts)
	if n > 0 && t.Attempts[n-1].BootID == id {
		// The guard started again in the same boot (it died): the boot
		// is counted already.
		g.logf("boot %d of generation %d's trial was counted already", n, t.Generation)
		return t, false, nil
	}
	if n > 0 && t.Attempts[n-1].Failure == "" {
		t.Attempts[n-1].Failure = "the boot ended before it confirmed (a crash, a power loss or a reboot)"
	}
	if n >= t.MaxAttempts {
		if err := l.fallBack(t, t.Attempts[n-1].Failure, id, g.logf); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	}
	t.Attempts = append(t.Attempts, BootAttempt{BootID: id, Started: time.Now().UTC()})
	if err := writeJSON(l.bootTrialFile(), t); err != nil {
		return nil, false, fmt.Errorf("counting the boot: %w", err)
	}
	g.logf("boot attempt %d of %d of generation %d (falls back to generation %d)", n+1, t.MaxAttempts, t.Generation, t.Previous)
	return t, false, nil
}

// fallBack ends trial t: generation t.Previous is the boot default again.
// Each step is durable before the next, so that a power cut anywhere
// leaves the trial to be decided again (the record stays until the boot
// default has moved) or the fallback booted: the rollback record, the
// trial generation marked failed, the boot default, the trial's record
// removed.
func (l Layout) fallBack(t *BootTrial, reason, bootID string, logf func(string, ...any)) error {
	rb := &BootRollback{V: agentapi.Version, Trial: t.ID, Generation: t.Generation, Previous: t.Previous,
		Attempts: len(t.Attempts), Reason: reason, Time: time.Now().UTC(), BootID: bootID}
	if err := writeJSON(l.bootRollbackFile(), rb); err != nil {
		return fmt.Errorf("recording the fallback: %w", err)
	}
	if err := l.markFailed(t.Generation, rb.Message(), rb.Time); err != nil {
		logf("marking generation %d failed: %v", t.Generation, err)
	}
	if err := l.setBootDefault(t.Previous); err != nil {
		return fmt.Errorf("making generation %d the boot default again: %w", t.Previous, err)
	}
	if err := l.removeBootTrial(); err != nil {
		return err
	}
	logf("%s: generation %d is the boot default again", rb.Message(), t.Previous)
	return nil
}

// watch waits for the confirmation of this boot of t (see Run).
func (g *BootGuard) watch(ctx context.Context, t *BootTrial) error {
	poll := g.Poll
	if poll <= 0 {
		poll = time.Second
	}
	deadline := time.Now().Add(t.Timeout)
	attempt := len(t.Attempts)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
		failure := ""
		switch {
		case g.unitFailed(ctx, BootUnitName):
			failure = fmt.Sprintf("%s failed: generation %d's agent did not bring it up", BootUnitName, t.Generation)
		case g.unitFailed(ctx, BootConfirmUnitName):
			failure = fmt.Sprintf("%s failed: generation %d's agent did not confirm the boot", BootConfirmUnitName, t.Generation)
		case !time.Now().Before(deadline):
			failure = fmt.Sprintf("not confirmed within %v of the boot", t.Timeout)
		}
		done, reboot, err := g.decide(t.ID, attempt, failure)
		if err != nil {
			return err
		}
		if reboot {
			return g.reboot(ctx)
		}
		if done {
			return nil
		}
	}
}

// decide looks at the trial's record under its lock: done when the
// trial was confirmed or replaced; else the recorded failure of this
// attempt (deploy-boot-confirm's), or failure, fails it: the attempt's
// failure is recorded and, when it was the last attempt, the trial falls
// back; either way the host reboots.
func (g *BootGuard) decide(id string, attempt int, failure string) (done, reboot bool, err error) {
	l := g.Layout
	unlock, err := l.lockBootTrial()
	if err != nil {
		return false, false, err
	}
	defer unlock()
	t, err := l.ReadBootTrial()
	if err != nil {
		return false, false, err
	}
	if t == nil || t.ID != id || len(t.Attempts) != attempt {
		g.logf("the trial's boot attempt %d is decided", attempt)
		return true, false, nil
	}
	a := &t.Attempts[attempt-1]
	if a.Failure == "" {
		a.Failure = failure
	}
	if a.Failure == "" {
		return false, false, nil
	}
	g.logf("boot attempt %d of %d of generation %d failed: %s", attempt, t.MaxAttempts, t.Generation, a.Failure)
	if attempt >= t.MaxAttempts {
		return false, true, l.fallBack(t, a.Failure, g.bootID(), g.logf)
	}
	if err := writeJSON(l.bootTrialFile(), t); err != nil {
		return false, false, err
	}
	return false, true, nil
}

func (g *BootGuard) unitFailed(ctx context.Context, unit string) bool {
	if g.UnitFailed != nil {
		return g.UnitFailed(ctx, unit)
	}
	st, err := unitStates(ctx, []string{unit})
	return err == nil && st[unit].active == "failed"
}

func (g *BootGuard) reboot(ctx context.Context) error {
	g.logf("rebooting")
	if g.Reboot != nil {
		return g.Reboot(ctx)
	}
	out, err := exec.CommandContext(ctx, "systemctl", "--no-block", "reboot").CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl reboot: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ConfirmBoot is what deploy-boot-confirm.service runs (deploy-agent
// boot-confirm) with the trial's own agent once startup is over: when the
// boot default is a pending trial, it waits for the trial's health as a
// rolling reboot does ([Layout.Health], up to the trial's timeout); a
// healthy host confirms the trial (its record is removed), an unhealthy
// one records the failure of this boot for the guard, which reboots. The
// health is returned (nil: no trial to confirm).
func (l Layout) ConfirmBoot(ctx context.Context, logf func(string, ...any)) (*Health, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	t, err := l.ReadBootTrial()
	if err != nil || t == nil {
		return nil, err
	}
	if boot, err := l.BootGeneration(); err != nil || boot != t.Generation {
		return nil, err
	}
	h, err := l.Health(ctx, t.Timeout, logf)
	if err != nil {
		h = &Health{V: agentapi.Version, Message: err.Error()}
	}
	err = l.recordBootHealth(t.ID, BootID(), h, logf)
	// The textfile stops showing a confirmed trial (a view: its failure
	// is logged, nothing else).
	if merr := l.WriteMetrics(); merr != nil {
		logf("%v", merr)
	}
	return h, err
}

// recordBootHealth decides trial id's boot bootID by its health h: healthy
// confirms the trial (its record is removed), unhealthy is the failure of
// the boot's attempt, unless the guard decided the attempt already.
func (l Layout) recordBootHealth(id, bootID string, h *Health, logf func(string, ...any)) error {
	unlock, err := l.lockBootTrial()
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := l.ReadBootTrial()
	if err != nil || cur == nil || cur.ID != id {
		return err
	}
	n := len(cur.Attempts)
	counted := n > 0 && cur.Attempts[n-1].BootID == bootID
	if counted && cur.Attempts[n-1].Failure != "" {
		logf("boot attempt %d failed already: %s", n, cur.Attempts[n-1].Failure)
		return nil
	}
	if h.Healthy {
		if err := l.removeBootTrial(); err != nil {
			return err
		}
		logf("generation %d confirmed by boot attempt %d of %d", cur.Generation, n, cur.MaxAttempts)
		return nil
	}
	if !counted {
		logf("this boot was not counted (%s did not run): not healthy: %s", BootGuardUnitName, h.Message)
		return nil
	}
	cur.Attempts[n-1].Failure = "not healthy: " + h.Message
	logf("boot attempt %d of %d of generation %d is not healthy: %s", n, cur.MaxAttempts, cur.Generation, h.Message)
	return writeJSON(l.bootTrialFile(), cur)
}

// bootGuardUnit runs the agent profiles/boot-guard names, before the boot
// default's own boot unit, only while a trial is pending. Type=notify:
// deploy-boot.service starts once the boot is counted; the process then
// stays to watch for the confirmation (Restart: a guard that dies in the
// same boot counts nothing twice).
const bootGuardUnit = `# Installed by deploy-agent. Counts the boots of a trial generation.
[Unit]
Description=deploy: count the boots of a trial generation, fall back after too many
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=` + BootUnitName + ` sysinit.target shutdown.target
Conflicts=shutdown.target
ConditionPathExists=%[1]s/boot-trial.json

[Service]
Type=notify
NotifyAccess=main
ExecStart=%[1]s/profiles/boot-guard/agent/bin/deploy-agent boot-guard --state-dir %[1]s --run-dir %[2]s
Restart=on-failure
RestartSec=1
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
`

// bootConfirmUnit runs the boot default's agent once startup is over
// (Type=exec: startup does not wait for it, so its wait for startup's end
// cannot deadlock).
const bootConfirmUnit = `# Installed by deploy-agent. Confirms a trial generation's boot.
[Unit]
Description=deploy: confirm a boot of a trial generation
After=multi-user.target
ConditionPathExists=%[1]s/boot-trial.json

[Service]
Type=exec
ExecStart=%[1]s/profiles/system/agent/bin/deploy-agent boot-confirm --state-dir %[1]s --run-dir %[2]s
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
`

// installUnit writes unit file name with data (when it differs) and links
// it into target's wants.
func (l Layout) installUnit(name, data, target string) error {
	l = l.withDefaults()
	p := filepath.Join(l.UnitDir, name)
	if cur, err := os.ReadFile(p); err != nil || string(cur) != data {
		if err := atomicfile.Write(p, []byte(data), 0o644); err != nil {
			return err
		}
	}
	link := filepath.Join(l.UnitDir, target+".wants", name)
	if t, err := os.Readlink(link); err == nil && t == p {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	return symlinkAtomic(p, link)
}

// trialStatus adds the pending trial and the last fallback to s.
func (l Layout) trialStatus(s *agentapi.Status) {
	s.BootTrial, _ = l.ReadBootTrial()
	s.BootRollback, _ = l.ReadBootRollback()
}
