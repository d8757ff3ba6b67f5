package activation

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// Health is what `deploy-agent health --json` prints.
type Health = agentapi.Health

// BootIDFile holds the kernel's boot id (systemd-nspawn gives each
// container boot its own).
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// BootID returns the boot id, "" when it cannot be read.
func BootID() string {
	b, err := os.ReadFile(BootIDFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Health waits up to wait for the machine to finish starting up (systemd's
// startup, then the boot default's units that should run: each must become
// active; one that fails ends the wait), then runs the boot default's
// health checks. The host is healthy when it runs its boot default, its
// deploy-boot.service did not fail, every such unit is active and every
// check passed; the checks are not run when a unit is not. It is what a
// rolling reboot waits for.
func (l Layout) Health(ctx context.Context, wait time.Duration, logf func(string, ...any)) (*Health, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	start := time.Now()
	h := &Health{V: agentapi.Version, BootID: BootID()}
	defer func() { h.Elapsed = time.Since(start) }()
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// --wait returns once startup is over: running, degraded, ...
	out, _ := exec.CommandContext(wctx, "systemctl", "is-system-running", "--wait").Output()
	h.SystemState = strings.TrimSpace(string(out))
	var err error
	if h.Boot, err = l.BootGeneration(); err != nil {
		return nil, err
	}
	if h.Current, err = l.CurrentGeneration(); err != nil {
		return nil, err
	}
	if h.Boot == 0 {
		h.Healthy, h.Message = true, "no generation is the boot default"
		return h, nil
	}
	var problems []string
	if h.Current != h.Boot {
		problems = append(problems, fmt.Sprintf("it runs generation %d, not its boot default %d", h.Current, h.Boot))
	}
	if st, err := unitStates(ctx, []string{BootUnitName}); err == nil && st[BootUnitName].active == "failed" {
		problems = append(problems, BootUnitName+" failed")
	}
	g, err := l.Generation(h.Boot)
	if err != nil {
		return nil, err
	}
	store := closure.NewTargetStore(l.withDefaults().StateDir)
	m, err := ReadManifest(g.System, store.RealPath)
	if err != nil {
		return nil, err
	}
	var want []string
	for _, u := range m.Units {
		if u.Start {
			want = append(want, u.Name)
		}
	}
	// Each unit to run must become active; one that failed (or is
	// masked) will not, so it ends the wait at once.
	for len(want) > 0 {
		states, err := unitStates(ctx, want)
		if err != nil {
			return nil, err
		}
		var pending []string
		var bad []string
		for _, name := range want {
			st := states[name]
			switch {
			case st.active == "active" || st.active == "reloading":
			case st.active == "failed" || st.sub == "auto-restart" || strings.HasPrefix(st.load, "masked") || st.load == "not-found":
				bad = append(bad, fmt.Sprintf("%s: %s (%s)", name, st, st.load))
			default:
				pending = append(pending, name)
			}
		}
		if len(bad) > 0 || len(pending) == 0 || wctx.Err() != nil {
			h.Units = append(h.Units, bad...)
			if wctx.Err() != nil {
				for _, name := range pending {
					h.Units = append(h.Units, fmt.Sprintf("%s: %s after %v", name, states[name], wait))
				}
			}
			break
		}
		select {
		case <-wctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	if len(h.Units) > 0 {
		problems = append(problems, "units not running: "+strings.Join(h.Units, "; "))
	}
	// With a unit down the host is not healthy whatever the checks say:
	// they are not run (a failing one would only wait out its timeout).
	for _, c := range m.HealthChecks {
		if len(h.Units) > 0 {
			h.Checks = append(h.Checks, agentapi.CheckResult{Name: c.Name, Error: "not run: a unit is not running"})
			continue
		}
		r := agentapi.CheckResult{Name: c.Name, OK: true}
		if err := CheckHealth(ctx, m.HealthChecks[len(h.Checks):len(h.Checks)+1], logf); err != nil {
			r.OK, r.Error = false, err.Error()
			problems = append(problems, err.Error())
		}
		h.Checks = append(h.Checks, r)
	}
	if len(problems) == 0 {
		h.Healthy = true
		return h, nil
	}
	h.Message = strings.Join(problems, "; ")
	return h, nil
}
