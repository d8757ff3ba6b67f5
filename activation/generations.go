package activation

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/atomicfile"
)

// Generation is one numbered system of a host: the link
// profiles/system-N-link to its store path, and its metadata in
// profiles/system-N.json (the same fields, but for Current and Boot, which
// [Layout.Generations] fills in).
type Generation = agentapi.Generation

func (l Layout) genLink(n int) string {
	return filepath.Join(l.ProfilesDir(), fmt.Sprintf("system-%d-link", n))
}

func (l Layout) genMeta(n int) string {
	return filepath.Join(l.ProfilesDir(), fmt.Sprintf("system-%d.json", n))
}

// parseGenLink returns N for "system-N-link".
func parseGenLink(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "system-")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "-link")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

// Generations lists every generation, oldest first, with the current and
// boot-default markers set.
func (l Layout) Generations() ([]*Generation, error) {
	entries, err := os.ReadDir(l.ProfilesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("generations: %w", err)
	}
	cur, _ := l.CurrentGeneration()
	boot, _ := l.BootGeneration()
	var gens []*Generation
	for _, e := range entries {
		n, ok := parseGenLink(e.Name())
		if !ok {
			continue
		}
		g, err := l.Generation(n)
		if err != nil {
			return nil, err
		}
		g.Current = n == cur
		g.Boot = n == boot
		gens = append(gens, g)
	}
	slices.SortFunc(gens, func(a, b *Generation) int { return a.Number - b.Number })
	l.markRevoked(gens)
	return gens, nil
}

// Generation reads generation n.
func (l Layout) Generation(n int) (*Generation, error) {
	target, err := os.Readlink(l.genLink(n))
	if err != nil {
		return nil, fmt.Errorf("generation %d: %w", n, err)
	}
	g := &Generation{}
	data, err := os.ReadFile(l.genMeta(n))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("generation %d: %w", n, err)
	default:
		if err := json.Unmarshal(data, g); err != nil {
			return nil, fmt.Errorf("generation %d: metadata %q: %w", n, l.genMeta(n), err)
		}
	}
	g.Number, g.System = n, target
	return g, nil
}

// saveGeneration writes g's metadata atomically.
func (l Layout) saveGeneration(g *Generation) error {
	c := *g
	c.Current, c.Boot, c.RevokedSecrets = false, false, nil
	data, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(l.genMeta(g.Number), append(data, '\n'), 0o644)
}

// planGeneration returns the generation an activation of system uses: the
// newest generation when it already is system and did not fail (a redeploy
// of the same system adds no generation), else a new number (exists
// false), which [Layout.createGeneration] makes.
func (l Layout) planGeneration(system string) (n int, exists bool, err error) {
	gens, err := l.Generations()
	if err != nil {
		return 0, false, err
	}
	if len(gens) == 0 {
		return 1, false, nil
	}
	last := gens[len(gens)-1]
	if last.System == system && !last.Failed {
		return last.Number, true, nil
	}
	return last.Number + 1, false, nil
}

// createGeneration creates generation n for system: its metadata, then its
// link.
func (l Layout) createGeneration(n int, system string, meta map[string]string, now time.Time) (*Generation, error) {
	g := &Generation{Number: n, System: system, Time: now.UTC(), Meta: meta,
		Operator: meta["operator"], GitRev: meta["git_rev"], Message: meta["message"], AgentAPI: agentapi.Version}
	if err := l.saveGeneration(g); err != nil {
		return nil, err
	}
	if err := symlinkAtomic(system, l.genLink(n)); err != nil {
		return nil, err
	}
	return g, nil
}

// IncompatibleError is a generation created by an agent newer than this
// one: this agent refuses to activate it.
type IncompatibleError struct {
	Generation int
	AgentAPI   int    // the generation's
	Agent      string // the generation's own agent executable
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("generation %d was created by a deploy-agent of API version %d, newer than this one (%d): refusing to activate it (nothing was changed); its own agent can: %s rollback --to %d",
		e.Generation, e.AgentAPI, agentapi.Version, e.Agent, e.Generation)
}

// CheckCompatible returns an *[IncompatibleError] when generation n was
// created by a newer agent than this one, and an error when its manifest
// is one this agent cannot read.
func (l Layout) CheckCompatible(n int) error {
	g, err := l.Generation(n)
	if err != nil {
		return err
	}
	if g.AgentAPI > agentapi.Version {
		return &IncompatibleError{Generation: n, AgentAPI: g.AgentAPI, Agent: filepath.Join(l.genLink(n), "agent", "bin", "deploy-agent")}
	}
	return nil
}

// RollbackTarget is the generation a rollback activates: generation to,
// or with to 0 the newest generation before the current one that did not
// fail. It refuses a generation this agent cannot activate
// ([Layout.CheckCompatible]), before anything is allocated or changed.
func (l Layout) RollbackTarget(to int) (*Generation, error) {
	gens, err := l.Generations()
	if err != nil {
		return nil, err
	}
	cur, _ := l.CurrentGeneration()
	var target *Generation
	for _, g := range gens {
		switch {
		case to > 0 && g.Number == to:
			target = g
		case to == 0 && (cur == 0 || g.Number < cur) && !g.Failed:
			target = g
		}
	}
	if target == nil {
		if to > 0 {
			return nil, fmt.Errorf("rollback: no generation %d", to)
		}
		return nil, errors.New("rollback: no earlier generation that did not fail")
	}
	// The worker checks again, under the lock.
	if err := l.CheckCompatible(target.Number); err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	return target, nil
}

// markFailed marks generation n failed with reason.
func (l Layout) markFailed(n int, reason string, now time.Time) error {
	g, err := l.Generation(n)
	if err != nil {
		return err
	}
	g.Failed, g.FailedReason, g.FailedTime = true, reason, now.UTC()
	return l.saveGeneration(g)
}

// markConfirmed records that generation n was confirmed (and clears an
// earlier failure mark: it runs now).
func (l Layout) markConfirmed(n int, now time.Time) error {
	g, err := l.Generation(n)
	if err != nil {
		return err
	}
	g.Confirmed, g.Failed, g.FailedReason, g.FailedTime = now.UTC(), false, "", time.Time{}
	return l.saveGeneration(g)
}

// setBootDefault points profiles/system at generation n.
func (l Layout) setBootDefault(n int) error {
	return symlinkAtomic(filepath.Base(l.genLink(n)), l.BootDefault())
}

// setCurrent points /run/deploy/current-system at system ("" removes it).
func (l Layout) setCurrent(system string) error {
	if system == "" {
		err := os.Remove(l.CurrentSystem())
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %q: %w", l.CurrentSystem(), err)
		}
		return nil
	}
	return symlinkAtomic(system, l.CurrentSystem())
}

// CurrentSystem returns the running system's store path, "" when none.
func (l Layout) currentSystem() string {
	t, err := os.Readlink(l.CurrentSystem())
	if err != nil {
		return ""
	}
	return t
}

// CurrentGeneration returns the number of the running generation: the
// generation recorded in state.json as current, or 0 when nothing runs.
func (l Layout) CurrentGeneration() (int, error) {
	st, err := l.ReadState()
	if err != nil {
		return 0, err
	}
	if st.Current == 0 || l.currentSystem() == "" {
		return 0, nil
	}
	return st.Current, nil
}

// BootGeneration returns the boot default's number, 0 when there is none.
func (l Layout) BootGeneration() (int, error) {
	t, err := os.Readlink(l.BootDefault())
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("boot default: %w", err)
	}
	n, ok := parseGenLink(filepath.Base(t))
	if !ok {
		return 0, fmt.Errorf("boot default %q points at %q, not a generation", l.BootDefault(), t)
	}
	return n, nil
}

// symlinkAtomic makes link point at target: a temporary link in the same
// directory renamed over link (rename(2) is atomic), then a directory fsync.
func symlinkAtomic(target, link string) error {
	dir := filepath.Dir(link)
	tmp := filepath.Join(dir, fmt.Sprintf(".tmp-%s-%d", filepath.Base(link), os.Getpid()))
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("link %q: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("link %q: %w", link, err)
	}
	return atomicfile.SyncDir(dir)
}

// RemoveOldGenerations deletes the links and metadata of every generation
// but the newest keep, the running one and the boot default, and returns
// the numbers removed. The caller holds the lock.
func (l Layout) RemoveOldGenerations(keep int) ([]int, error) {
	gens, err := l.Generations()
	if err != nil {
		return nil, err
	}
	// A pending trial's fallback and the generation whose agent counts
	// its boots stay: the boot guard needs both.
	pinned := map[int]bool{}
	if t, err := l.ReadBootTrial(); err == nil && t != nil {
		pinned[t.Previous] = true
	}
	if n, ok := l.bootGuardGeneration(); ok {
		pinned[n] = true
	}
	var removed []int
	for i, g := range gens {
		if i >= len(gens)-keep || g.Current || g.Boot || pinned[g.Number] {
			continue
		}
		if err := os.Remove(l.genLink(g.Number)); err != nil {
			return removed, fmt.Errorf("remove generation %d: %w", g.Number, err)
		}
		os.Remove(l.genMeta(g.Number))
		removed = append(removed, g.Number)
	}
	return removed, atomicfile.SyncDir(l.ProfilesDir())
}
