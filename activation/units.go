package activation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/manifest"
)

// Units are installed as symlinks /etc/systemd/system/NAME → the unit
// file's store path, and enabled by links TARGET.wants/NAME →
// /etc/systemd/system/NAME. Which units the agent owns is the previous
// manifest's unit list; a unit file in the way that no generation installed
// is never replaced.

func (a *applier) unitPath(name string) string {
	return filepath.Join(a.l.withDefaults().UnitDir, name)
}

func (a *applier) wantsLink(target, name string) string {
	return filepath.Join(a.l.withDefaults().UnitDir, target+".wants", name)
}

func (a *applier) systemctl(ctx context.Context, args ...string) error {
	if a.opts.Boot {
		args = append([]string{"--no-block"}, args...)
	}
	return run(ctx, a.opts, "systemctl", args...)
}

// stop stops a unit. A unit systemd does not know is already stopped: that
// is the case when the generation that introduced it failed before its
// units were linked, and the rollback stops what that generation listed.
func (a *applier) stop(ctx context.Context, name string) error {
	err := a.systemctl(ctx, "stop", name)
	if err == nil {
		return nil
	}
	if st, serr := output(ctx, "systemctl", "show", "--property=LoadState", "--value", name); serr == nil && strings.TrimSpace(st) == "not-found" {
		a.opts.logf("%s is not loaded: nothing to stop", name)
		return nil
	}
	return err
}

func (a *applier) units(ctx context.Context) error {
	d := manifest.Diff(a.prev, a.next).Units
	prevUnits := map[string]manifest.Unit{}
	for _, u := range a.prev.Units {
		prevUnits[u.Name] = u
	}
	nextUnits := map[string]manifest.Unit{}
	for _, u := range a.next.Units {
		nextUnits[u.Name] = u
	}
	if !d.Empty() {
		a.opts.logf("units: stop %v, start %v, restart %v, reload %v, update %v", d.Stop, d.Start, d.Restart, d.Reload, d.Updated)
	}

	// 1. Stop what goes away, then remove its files and links.
	for _, name := range d.Stop {
		if err := a.stop(ctx, name); err != nil {
			return err
		}
		a.opts.logf("stopped %s", name)
		if err := a.progress("units", "stop "+name); err != nil {
			return err
		}
	}
	changed := false
	for _, name := range d.Stop {
		for _, t := range prevUnits[name].WantedBy {
			if err := removeLink(a.wantsLink(t, name)); err != nil {
				return err
			}
		}
		if err := removeLink(a.unitPath(name)); err != nil {
			return err
		}
		changed = true
	}

	// 2. Install unit files and wants links.
	for _, u := range a.next.Units {
		target := a.opts.real(u.Source)
		p := a.unitPath(u.Name)
		cur, err := os.Readlink(p)
		_, owned := prevUnits[u.Name]
		switch {
		case err == nil && cur == target:
		case err != nil && !errors.Is(err, fs.ErrNotExist) && !owned:
			return &UnmanagedError{Path: p}
		case err == nil && !owned:
			return &UnmanagedError{Path: p}
		default:
			if err := symlinkAtomic(target, p); err != nil {
				return err
			}
			changed = true
		}
		for _, t := range u.WantedBy {
			l := a.wantsLink(t, u.Name)
			if cur, err := os.Readlink(l); err == nil && cur == p {
				continue
			}
			if err := os.MkdirAll(filepath.Dir(l), 0o755); err != nil {
				return err
			}
			if err := symlinkAtomic(p, l); err != nil {
				return err
			}
			changed = true
		}
		if o, ok := prevUnits[u.Name]; ok {
			for _, t := range o.WantedBy {
				if !slices.Contains(u.WantedBy, t) {
					if err := removeLink(a.wantsLink(t, u.Name)); err != nil {
						return err
					}
					changed = true
				}
			}
		}
	}

	// 3. One daemon-reload.
	if changed || a.opts.Boot {
		if err := run(ctx, a.opts, "systemctl", "daemon-reload"); err != nil {
			return err
		}
		a.opts.logf("daemon-reload")
		if err := a.progress("units", "daemon-reload"); err != nil {
			return err
		}
	}

	// 4. Unmask what the generation installs and someone masked (by hand,
	// or systemctl mask --runtime): the generation says it runs.
	if err := a.unmask(ctx); err != nil {
		return err
	}

	// 5. Start, restart, reload.
	var watch []string
	if a.opts.Boot {
		// At boot every unit to run is queued, whatever the diff says:
		// the boot transaction was computed from the links before this
		// application.
		for _, u := range a.next.Units {
			if u.Start {
				if err := a.systemctl(ctx, "start", u.Name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, name := range d.Start {
		if err := a.systemctl(ctx, "start", name); err != nil {
			return fmt.Errorf("starting %s: %w", name, err)
		}
		a.opts.logf("started %s", name)
		watch = append(watch, name)
		if err := a.progress("units", "start "+name); err != nil {
			return err
		}
	}
	for _, name := range d.Restart {
		verb := "restart"
		if !nextUnits[name].Start {
			verb = "try-restart" // only if running: something else starts it
		}
		if err := a.systemctl(ctx, verb, name); err != nil {
			return fmt.Errorf("restarting %s: %w", name, err)
		}
		a.opts.logf("restarted %s", name)
		if nextUnits[name].Start {
			watch = append(watch, name)
		}
		if err := a.progress("units", "restart "+name); err != nil {
			return err
		}
	}
	for _, name := range d.Reload {
		verb := "reload-or-restart"
		if !nextUnits[name].Start {
			verb = "try-reload-or-restart"
		}
		if err := a.systemctl(ctx, verb, name); err != nil {
			return fmt.Errorf("reloading %s: %w", name, err)
		}
		a.opts.logf("reloaded %s", name)
		if err := a.progress("units", "reload "+name); err != nil {
			return err
		}
	}
	for _, name := range d.Updated {
		if u := nextUnits[name]; u.Start && !prevUnits[name].Start {
			if err := a.systemctl(ctx, "start", name); err != nil {
				return fmt.Errorf("starting %s: %w", name, err)
			}
			a.opts.logf("started %s", name)
			watch = append(watch, name)
		}
	}
	// Units that should run and do not (stopped by hand, or failed since)
	// start again, so that a redeploy repairs drift.
	var idle []string
	for _, u := range a.next.Units {
		if u.Start && !slices.Contains(watch, u.Name) && !slices.Contains(d.Reload, u.Name) {
			idle = append(idle, u.Name)
		}
	}
	if len(idle) > 0 {
		states, err := unitStates(ctx, idle)
		if err != nil {
			return err
		}
		for _, name := range idle {
			st := states[name]
			switch {
			case st.active == "active" || st.active == "reloading" || st.active == "activating":
			case strings.HasPrefix(st.load, "masked"):
				a.opts.warnf("not starting %s: it is still masked after systemctl unmask (a mask in /etc/systemd/system.control or /run/systemd/system.control, say)", name)
			default:
				if err := a.systemctl(ctx, "start", name); err != nil {
					return fmt.Errorf("starting %s: %w", name, err)
				}
				a.opts.logf("started %s (it was %s)", name, st)
				watch = append(watch, name)
			}
		}
	}
	return a.settle(ctx, watch)
}

// unmask unmasks the generation's units that are masked, at runtime
// (/run/systemd/system) or for good (/etc/systemd/system): systemctl
// unmask removes only links to /dev/null, never the generation's unit
// links, and reloads systemd.
func (a *applier) unmask(ctx context.Context) error {
	var names []string
	for _, u := range a.next.Units {
		names = append(names, u.Name)
	}
	if len(names) == 0 {
		return nil
	}
	states, err := unitStates(ctx, names)
	if err != nil {
		return err
	}
	var masked []string
	for _, name := range names {
		if st := states[name]; strings.HasPrefix(st.load, "masked") || strings.HasPrefix(st.enabled, "masked") {
			masked = append(masked, name)
		}
	}
	if len(masked) == 0 {
		return nil
	}
	for _, scope := range [][]string{{"--runtime"}, nil} {
		args := append(append([]string{"unmask"}, scope...), "--")
		if err := run(ctx, a.opts, "systemctl", append(args, masked...)...); err != nil {
			return fmt.Errorf("unmasking %s: %w", strings.Join(masked, " "), err)
		}
	}
	a.opts.logf("unmasked %s", strings.Join(masked, " "))
	return a.progress("units", "unmask "+strings.Join(masked, " "))
}

// settle watches the units just started or restarted for UnitSettle and
// fails when one of them fails or is crash-looping. Looks are 250 ms apart
// at first and twice as far apart each time after (0, 0.25, 0.5, 1, 2 s
// for the default 2 s: five systemctl calls, not the eleven of a look
// every 200 ms), ending at the deadline. A unit that restarted between two
// looks is caught all the same: systemd counts its restarts (NRestarts),
// and a count above the first look's is a crash loop, whatever state the
// unit happens to be in when looked at (after an automatic restart its
// Result is success again and it may well be running).
func (a *applier) settle(ctx context.Context, units []string) error {
	if len(units) == 0 {
		return nil
	}
	deadline := time.Now().Add(a.opts.UnitSettle)
	w := &settleWatch{units: units}
	wait := 250 * time.Millisecond
	for {
		if err := w.look(ctx); err != nil {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(wait, left)):
		}
		wait *= 2
	}
}

// settleWatch is the settle loop's view of the units it watches: their
// restart counts at the first look.
type settleWatch struct {
	units    []string
	restarts []int // NRestarts at the first look; nil before it
}

// look returns an error naming the first of the units that is failed,
// restarting after a failure, whose last run did not succeed, or that
// restarted since the first look: one systemctl call for all of them.
func (w *settleWatch) look(ctx context.Context) error {
	props, err := showUnits(ctx, w.units, "ActiveState", "SubState", "Result", "NRestarts")
	if err != nil {
		return err
	}
	first := w.restarts == nil
	if first {
		w.restarts = make([]int, len(w.units))
	}
	for i, p := range props {
		if p["ActiveState"] == "failed" || p["SubState"] == "auto-restart" || (p["Result"] != "" && p["Result"] != "success") {
			return fmt.Errorf("unit %s failed (%s/%s, result %s)", w.units[i], p["ActiveState"], p["SubState"], p["Result"])
		}
		// NRestarts is empty for units other than services and on a
		// systemd older than 235: those are judged by their state alone.
		n, err := strconv.Atoi(p["NRestarts"])
		if err != nil {
			continue
		}
		switch {
		case first:
			w.restarts[i] = n
		case n > w.restarts[i]:
			return fmt.Errorf("unit %s failed: it restarted since it was started (NRestarts %d -> %d: a crash loop; now %s/%s)", w.units[i], w.restarts[i], n, p["ActiveState"], p["SubState"])
		}
	}
	return nil
}

func removeLink(p string) error {
	err := os.Remove(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %q: %w", p, err)
	}
	return nil
}
