package activation

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/manifest"
)

// Phases of an activation, as recorded in state.json (see
// [agentapi.Phase]).
const (
	PhaseStarting     = agentapi.PhaseStarting
	PhaseApplying     = agentapi.PhaseApplying
	PhaseChecking     = agentapi.PhaseChecking
	PhaseAwaiting     = agentapi.PhaseAwaiting
	PhaseRollingBack  = agentapi.PhaseRollingBack
	PhaseDone         = agentapi.PhaseDone
	PhaseRolledBack   = agentapi.PhaseRolledBack
	PhaseFailed       = agentapi.PhaseFailed
	PhaseLockHeld     = agentapi.PhaseLockHeld
	PhaseDryActivated = agentapi.PhaseDryActivated
)

// State is /run/deploy/state.json: what runs and what the last activation
// is doing. It is written atomically by the activation holding the lock.
type State struct {
	// Current is the running generation (0: none, or not known since
	// boot) and CurrentSystem its store path.
	Current       int    `json:"current"`
	CurrentSystem string `json:"current_system,omitempty"`
	// Activation is the last activation since boot, running or finished.
	Activation *ActivationState `json:"activation,omitempty"`
}

// ActivationState describes one activation in state.json: what status
// shows ([agentapi.Activation]) and the hash of its confirmation token.
type ActivationState struct {
	agentapi.Activation
	// TokenHash is the hex SHA-256 of the confirmation token.
	TokenHash string `json:"token_hash,omitempty"`
	// RollbackBegun says the activation began rolling back to Previous
	// (it stays set whatever the rollback's outcome): the metrics count
	// its result as a rollback.
	RollbackBegun bool `json:"rollback_begun,omitempty"`
}

// ReadState reads state.json; a missing file is the zero State.
func (l Layout) ReadState() (*State, error) {
	data, err := os.ReadFile(l.StateFile())
	if errors.Is(err, fs.ErrNotExist) {
		return &State{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	st := &State{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("state %q: %w", l.StateFile(), err)
	}
	return st, nil
}

func (l Layout) writeState(st *State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(l.StateFile(), append(data, '\n'), 0o600)
}

// applied is StateDir/applied.json: what this machine's files and units
// are, across reboots. While System's application is not Complete, the
// machine may be anywhere between Previous and System, so the next
// application treats everything either of them manages as managed.
type applied struct {
	System     string   `json:"system"`
	Generation int      `json:"generation"`
	Previous   []string `json:"previous,omitempty"`
	Complete   bool     `json:"complete"`
	// Phase and Done record progress inside an application (the unit
	// phase records each unit operation), for status and post-mortems.
	Phase string   `json:"phase,omitempty"`
	Done  []string `json:"done,omitempty"`
	// CreatedUsers and CreatedGroups are the accounts the agent created
	// (and so may remove when no generation declares them any more).
	CreatedUsers  []string `json:"created_users,omitempty"`
	CreatedGroups []string `json:"created_groups,omitempty"`
	// Owned are the files and symlinks deploy wrote (recorded before the
	// first write): only these are replaced without force or removed when
	// no generation wants them. A path a generation listed but never wrote
	// (it failed first, say on an unmanaged file) is not owned.
	Owned []string `json:"owned,omitempty"`
	// KeptSecrets are System's secrets installed from another ciphertext
	// than its manifest names (name → store path), because its own
	// version is revoked and the machine's was kept.
	KeptSecrets map[string]string `json:"kept_secrets,omitempty"`
	Updated     time.Time         `json:"updated"`
}

func (l Layout) readApplied() (*applied, error) {
	data, err := os.ReadFile(l.AppliedFile())
	if errors.Is(err, fs.ErrNotExist) {
		return &applied{Complete: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("applied state: %w", err)
	}
	a := &applied{}
	if err := json.Unmarshal(data, a); err != nil {
		return nil, fmt.Errorf("applied state %q: %w", l.AppliedFile(), err)
	}
	return a, nil
}

func (l Layout) writeApplied(a *applied) error {
	a.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(l.AppliedFile(), append(data, '\n'), 0o600)
}

// ReadManifest reads and parses system's manifest.json; realPath maps the
// logical store path to the disk (nil: identity).
func ReadManifest(system string, realPath func(string) string) (*manifest.Manifest, error) {
	return readManifest(system, realPath, manifest.Parse)
}

func readManifest(system string, realPath func(string) string, parse func([]byte) (*manifest.Manifest, error)) (*manifest.Manifest, error) {
	p := system + "/" + manifest.FileName
	if realPath != nil {
		p = realPath(system) + "/" + manifest.FileName
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	m, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("manifest of %q: %w", system, err)
	}
	return m, nil
}

// mergeManifests returns a manifest that manages everything a or b
// manages; for an entry in both, b's wins. It stands for a machine that may
// be anywhere between a and b (an interrupted application), so that
// applying a third manifest over it removes, stops or restarts whatever
// either left behind.
func mergeManifests(a, b *manifest.Manifest) *manifest.Manifest {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	m := *b
	m.Groups = mergeBy(a.Groups, b.Groups, func(x manifest.Group) string { return x.Name })
	m.Users = mergeBy(a.Users, b.Users, func(x manifest.User) string { return x.Name })
	m.Directories = mergeBy(a.Directories, b.Directories, func(x manifest.Directory) string { return x.Path })
	m.Files = mergeBy(a.Files, b.Files, func(x manifest.File) string { return x.Path })
	m.Symlinks = mergeBy(a.Symlinks, b.Symlinks, func(x manifest.Symlink) string { return x.Path })
	m.Secrets = mergeBy(a.Secrets, b.Secrets, func(x manifest.Secret) string { return x.Name })
	m.Sysctls = mergeBy(a.Sysctls, b.Sysctls, func(x manifest.Sysctl) string { return x.Key })
	m.Units = mergeBy(a.Units, b.Units, func(x manifest.Unit) string { return x.Name })
	// A firewall that differs between them may be either (or none): force
	// a reload (or the deletion of its table) by making it unlike any.
	switch {
	case a.Firewall == nil && b.Firewall == nil:
	case a.Firewall != nil && b.Firewall != nil && *a.Firewall == *b.Firewall:
	default:
		fw := a.Firewall
		if b.Firewall != nil {
			fw = b.Firewall
		}
		m.Firewall = &manifest.Firewall{Ruleset: "interrupted", Table: fw.Table}
	}
	// A unit in both with different definitions may run either, and a unit
	// only in a may have been stopped (and unlinked) by b's application:
	// force a restart against anything by giving it an impossible hash,
	// so that applying any manifest that has the unit (re)starts it.
	ua, ub := map[string]manifest.Unit{}, map[string]bool{}
	for _, u := range a.Units {
		ua[u.Name] = u
	}
	for _, u := range b.Units {
		ub[u.Name] = true
	}
	for i, u := range m.Units {
		if o, ok := ua[u.Name]; ok && (!ub[u.Name] || o.RestartHash != u.RestartHash || o.ReloadHash != u.ReloadHash) {
			m.Units[i].RestartHash = "interrupted"
		}
	}
	return &m
}

func mergeBy[T any](a, b []T, key func(T) string) []T {
	seen := map[string]bool{}
	out := slices.Clone(b)
	for _, x := range b {
		seen[key(x)] = true
	}
	for _, x := range a {
		if !seen[key(x)] {
			out = append(out, x)
		}
	}
	return out
}

// MachineManifest returns the manifest describing what the machine
// manages now: the last applied system's, merged with the systems before it
// while that application is incomplete (an interrupted activation or a
// crash). It returns nil when nothing was ever applied.
func (l Layout) MachineManifest(realPath func(string) string) (*manifest.Manifest, error) {
	a, err := l.readApplied()
	if err != nil {
		return nil, err
	}
	if a.System == "" {
		return nil, nil
	}
	var m *manifest.Manifest
	systems := []string{a.System}
	if !a.Complete {
		systems = append(slices.Clone(a.Previous), a.System)
	}
	for _, s := range systems {
		// Leniently: a newer agent may have applied a manifest with
		// fields this one does not know (see manifest.ParseLenient).
		sm, err := readManifest(s, realPath, manifest.ParseLenient)
		if err != nil {
			return nil, err
		}
		if s == a.System {
			sm = withKeptSources(sm, a.KeptSecrets)
		}
		m = mergeManifests(m, sm)
	}
	return m, nil
}
