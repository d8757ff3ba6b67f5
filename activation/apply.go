package activation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/secrets"
)

// Options tunes [Apply].
type Options struct {
	// Layout is where the agent's state is (zero value: the defaults).
	Layout Layout
	// System is the store path of the system being applied; it is
	// recorded in StateDir/applied.json.
	System string
	// Generation is the generation number being applied (for secrets and
	// the record).
	Generation int
	// RealPath maps a logical store path to where it is on this disk
	// (nil: the same path).
	RealPath func(storePath string) string
	// Force allows replacing unmanaged files and symlinks even where the
	// manifest does not say force.
	Force bool
	// Boot applies at boot time, before the services start: unit jobs are
	// queued (systemctl --no-block) rather than waited for, every unit with
	// Start is started, and nothing waits for units to settle.
	Boot bool
	// UnitSettle is how long started and restarted units are watched for
	// failing (crash loops, failed state) before the phase counts as done
	// (default 2s).
	UnitSettle time.Duration
	// Identities are the private keys secrets are decrypted with (default:
	// the secrets package's).
	Identities []string
	// Logf receives a line per step; nil discards them.
	Logf func(format string, args ...any)
	// Warnf receives what the operator must be told about (it is logged
	// too); nil: logged only.
	Warnf func(format string, args ...any)
}

func (o *Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

func (o *Options) warnf(format string, args ...any) {
	o.logf("warning: "+format, args...)
	if o.Warnf != nil {
		o.Warnf(format, args...)
	}
}

func (o *Options) real(p string) string {
	if o.RealPath == nil {
		return p
	}
	return o.RealPath(p)
}

// StepError is a failed step of [Apply].
type StepError struct {
	Step string // "users", "files", "units", ...
	Err  error
}

func (e *StepError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// Apply makes the machine match next, given that it matches prev (nil: a
// first activation; see [Layout.MachineManifest]). It applies, in order:
// the roots of the OCI images it runs (realized once per digest under
// [Layout.ImagesDir]), groups and users, directories, files and symlinks, secrets, sysctls, the
// firewall, units (stop removed; install; one daemon-reload; start new,
// restart changed, reload reload-only changes), hostname and time zone,
// then activation scripts. Health checks are separate ([CheckHealth]).
//
// Progress is recorded in StateDir/applied.json before anything changes,
// so that an interrupted application is known and the next one (a
// rollback, or the boot unit) treats everything prev or next manage as
// managed. Apply returns a *[StepError] naming the failed step.
func Apply(ctx context.Context, prev, next *manifest.Manifest, opts Options) error {
	if next == nil {
		return errors.New("apply: no manifest")
	}
	if prev == nil {
		prev = &manifest.Manifest{}
	}
	if opts.UnitSettle == 0 {
		opts.UnitSettle = 2 * time.Second
	}
	l := opts.Layout
	// Revoked secret versions: recorded on the host first, then no
	// revoked version is installed. A secret whose version is revoked
	// keeps the machine's version, or fails the application here, before
	// anything changed.
	plan, err := l.planSecrets(prev, next, opts.Generation, opts.RealPath)
	if err != nil {
		return &StepError{"secrets", err}
	}
	for _, k := range plan.Kept {
		opts.warnf("%s", k)
	}
	next = withKeptSources(next, plan.sources())
	rec, err := l.readApplied()
	if err != nil {
		return &StepError{"record", err}
	}
	if rec.Owned == nil && rec.Complete && rec.System != "" {
		// Written by an agent that did not record ownership yet: a
		// completed generation wrote all of its files and symlinks.
		for _, f := range prev.Files {
			rec.Owned = append(rec.Owned, f.Path)
		}
		for _, l := range prev.Symlinks {
			rec.Owned = append(rec.Owned, l.Path)
		}
		slices.Sort(rec.Owned)
		rec.Owned = slices.Compact(rec.Owned)
	}
	if rec.System != "" {
		if rec.Complete {
			rec.Previous = []string{rec.System}
		} else {
			rec.Previous = append(rec.Previous, rec.System)
		}
		rec.Previous = compact(rec.Previous)
	}
	rec.System, rec.Generation, rec.Complete, rec.Phase, rec.Done = opts.System, opts.Generation, false, "start", nil
	rec.KeptSecrets = plan.sources()
	if err := l.writeApplied(rec); err != nil {
		return &StepError{"record", err}
	}
	a := &applier{prev: prev, next: next, opts: &opts, rec: rec, l: l, revoked: plan.Revoked}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"images", a.images},
		{"users", a.accounts},
		{"directories", a.directories},
		{"files", a.files},
		{"secrets", a.secrets},
		{"sysctls", a.sysctls},
		{"firewall", a.firewall},
		{"units", a.units},
		{"host", a.hostBasics},
		{"activation scripts", a.scripts},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return &StepError{s.name, err}
		}
		if err := a.progress(s.name, ""); err != nil {
			return &StepError{"record", err}
		}
		if err := s.fn(ctx); err != nil {
			return &StepError{s.name, err}
		}
	}
	rec.Complete, rec.Previous, rec.Phase, rec.Done = true, nil, "complete", nil
	if err := l.writeApplied(rec); err != nil {
		return &StepError{"record", err}
	}
	return nil
}

func compact(s []string) []string {
	var out []string
	for _, x := range s {
		if x != "" && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

type applier struct {
	prev, next *manifest.Manifest
	opts       *Options
	rec        *applied
	l          Layout
	revoked    []string
}

// progress records the phase and, inside it, one more thing done.
func (a *applier) progress(phase, done string) error {
	if a.rec.Phase != phase {
		a.rec.Phase, a.rec.Done = phase, nil
	}
	if done != "" {
		a.rec.Done = append(a.rec.Done, done)
	}
	return a.l.writeApplied(a.rec)
}

func (a *applier) secrets(ctx context.Context) error {
	if len(a.next.Secrets) == 0 && len(a.prev.Secrets) == 0 {
		return nil
	}
	return secrets.Install(ctx, secrets.InstallOptions{
		RunDir:     a.l.withDefaults().RunDir,
		Generation: a.opts.Generation,
		Secrets:    a.next.Secrets,
		RealPath:   a.opts.real,
		Identities: a.opts.Identities,
		AllowTmpfs: a.next.SecretsAllowTmpfs,
		Revoked:    a.revoked,
		Logf:       a.opts.Logf,
		Warnf:      a.opts.Warnf,
	})
}

func (a *applier) sysctls(ctx context.Context) error {
	for _, s := range a.next.Sysctls {
		if sysctlIs(s) {
			continue
		}
		if s.Boot && !a.opts.Boot {
			a.opts.logf("sysctl %s = %s is set at the next boot", s.Key, s.Value)
			continue
		}
		p := sysctlPath(s.Key)
		if err := os.WriteFile(p, []byte(s.Value+"\n"), 0o644); err != nil {
			return fmt.Errorf("sysctl %q = %q: %w", s.Key, s.Value, err)
		}
		a.opts.logf("sysctl %s = %s", s.Key, s.Value)
	}
	return nil
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// sysctlIs reports whether the kernel has s's value now (whitespace aside).
func sysctlIs(s manifest.Sysctl) bool {
	cur, err := os.ReadFile(sysctlPath(s.Key))
	return err == nil && strings.Join(strings.Fields(string(cur)), " ") == strings.Join(strings.Fields(s.Value), " ")
}

func (a *applier) firewall(ctx context.Context) error {
	if f := a.next.Firewall; f != nil {
		if a.prev.Firewall != nil && *a.prev.Firewall == *f && !a.opts.Boot {
			// The same ruleset: reloaded only when the table drifted
			// from it (at boot always: the kernel forgot it).
			want, werr := firewallWant(ctx, a.opts.real(f.Ruleset), f.Table)
			got, gerr := firewallLive(ctx, f.Table)
			if werr == nil && gerr == nil && want == got {
				return nil
			}
			var why []string
			firewallDrift(f.Table, want, werr, got, gerr, func(_, _, problem, _, detail string) {
				why = append(why, strings.TrimSpace(problem+" "+detail))
			})
			a.opts.logf("firewall: table %s drifted from the ruleset (%s): reloading it", f.Table, strings.Join(why, "; "))
		}
		if err := run(ctx, a.opts, "nft", "-f", a.opts.real(f.Ruleset)); err != nil {
			return fmt.Errorf("loading %q: %w", f.Ruleset, err)
		}
		a.opts.logf("firewall: loaded table %s", f.Table)
		return nil
	}
	if f := a.prev.Firewall; f != nil {
		args := append([]string{"delete", "table"}, strings.Fields(f.Table)...)
		if err := run(ctx, a.opts, "nft", args...); err != nil {
			// A table that is already gone (after a reboot) is fine.
			if out, lerr := output(ctx, "nft", "list", "tables"); lerr == nil && !strings.Contains(out, "table "+f.Table) {
				return nil
			}
			return fmt.Errorf("deleting table %q: %w", f.Table, err)
		}
		a.opts.logf("firewall: deleted table %s", f.Table)
	}
	return nil
}

func (a *applier) hostBasics(ctx context.Context) error {
	if h := a.next.Hostname; h != "" {
		// The static name and the kernel's, each set when it differs.
		if cur, err := os.ReadFile("/etc/hostname"); err != nil || strings.TrimSpace(string(cur)) != h {
			if err := atomicfile.Write("/etc/hostname", []byte(h+"\n"), 0o644); err != nil {
				return err
			}
			a.opts.logf("hostname %s in /etc/hostname", h)
		}
		if cur, _ := os.Hostname(); cur != h {
			if err := syscall.Sethostname([]byte(h)); err != nil {
				return fmt.Errorf("set hostname %q: %w", h, err)
			}
			a.opts.logf("hostname %s (it was %s)", h, cur)
		}
	}
	if z := a.next.Timezone; z != "" {
		zone := filepath.Join("/usr/share/zoneinfo", z)
		if _, err := os.Stat(zone); err != nil {
			return fmt.Errorf("time zone %q: %w", z, err)
		}
		if cur, _ := os.Readlink("/etc/localtime"); cur != zone {
			if err := symlinkAtomic(zone, "/etc/localtime"); err != nil {
				return err
			}
			if err := atomicfile.Write("/etc/timezone", []byte(z+"\n"), 0o644); err != nil {
				return err
			}
			a.opts.logf("time zone %s", z)
		}
	}
	return nil
}

// scripts runs the activation scripts, After entries first, ties by name.
func (a *applier) scripts(ctx context.Context) error {
	order, err := scriptOrder(a.next.ActivationScripts)
	if err != nil {
		return err
	}
	for _, s := range order {
		a.opts.logf("activation script %s", s.Name)
		cmd := exec.CommandContext(ctx, a.opts.real(s.Source))
		cmd.Env = append(os.Environ(), fmt.Sprintf("DEPLOY_GENERATION=%d", a.opts.Generation), "DEPLOY_SYSTEM="+a.opts.System)
		if a.opts.Boot {
			cmd.Env = append(cmd.Env, "DEPLOY_BOOT=1")
		}
		w := &lineWriter{logf: a.opts.logf, prefix: s.Name + ": "}
		cmd.Stdout, cmd.Stderr = w, w
		err := cmd.Run()
		w.flush()
		if err != nil {
			return fmt.Errorf("activation script %q: %w", s.Name, err)
		}
		if err := a.progress("activation scripts", s.Name); err != nil {
			return err
		}
	}
	return nil
}

func scriptOrder(scripts []manifest.ActivationScript) ([]manifest.ActivationScript, error) {
	byName := map[string]manifest.ActivationScript{}
	var names []string
	for _, s := range scripts {
		byName[s.Name] = s
		names = append(names, s.Name)
	}
	slices.Sort(names)
	var out []manifest.ActivationScript
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("activation scripts: cycle through %q", n)
		case 2:
			return nil
		}
		s, ok := byName[n]
		if !ok {
			return fmt.Errorf("activation scripts: unknown script %q in after", n)
		}
		state[n] = 1
		after := slices.Clone(s.After)
		slices.Sort(after)
		for _, d := range after {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[n] = 2
		out = append(out, s)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// run runs a command, logging nothing on success and its output on failure.
func run(ctx context.Context, opts *Options, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg != "" {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

func output(ctx context.Context, name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	err := cmd.Run()
	return out.String(), err
}

// lineWriter turns a stream into log lines.
type lineWriter struct {
	logf   func(string, ...any)
	prefix string
	buf    []byte
	last   string // the last line, without the prefix
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.logf("%s%s", w.prefix, w.buf[:i])
		w.last = string(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.logf("%s%s", w.prefix, w.buf)
		w.last = string(w.buf)
		w.buf = nil
	}
}
