package activation

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/declarative/deploy/agentapi"
)

// Default locations on a target.
const (
	DefaultStateDir = agentapi.DefaultStateDir
	DefaultRunDir   = agentapi.DefaultRunDir
	DefaultUnitDir  = "/etc/systemd/system"
)

// Layout says where the agent keeps its state. Its zero value means the
// defaults ([DefaultStateDir], [DefaultRunDir], [DefaultUnitDir]).
type Layout struct {
	// StateDir holds store, db, profiles (generations), log and the
	// record of what is applied; it survives reboots.
	StateDir string
	// RunDir (mode 0711: traversable, not listable, so that non-root
	// services reach their secrets under RunDir/secrets) holds
	// current-system, state.json and the lock (0600), confirmations and
	// requests (0700 directories) and secrets; it is a tmpfs, emptied by a
	// reboot.
	RunDir string
	// UnitDir is where unit files are linked (/etc/systemd/system).
	UnitDir string
}

func (l Layout) withDefaults() Layout {
	if l.StateDir == "" {
		l.StateDir = DefaultStateDir
	}
	if l.RunDir == "" {
		l.RunDir = DefaultRunDir
	}
	if l.UnitDir == "" {
		l.UnitDir = DefaultUnitDir
	}
	return l
}

// ProfilesDir is where generation links live (the store's GC roots).
func (l Layout) ProfilesDir() string { return filepath.Join(l.withDefaults().StateDir, "profiles") }

// LogDir holds one log (and one result) per activation, mode 0700.
func (l Layout) LogDir() string { return filepath.Join(l.withDefaults().StateDir, "log") }

// CurrentSystem is the link to the running system.
func (l Layout) CurrentSystem() string {
	return filepath.Join(l.withDefaults().RunDir, "current-system")
}

// BootDefault is the link to the generation a boot re-applies.
func (l Layout) BootDefault() string { return filepath.Join(l.ProfilesDir(), "system") }

// StateFile is the machine-readable state of the current activation.
func (l Layout) StateFile() string { return filepath.Join(l.withDefaults().RunDir, "state.json") }

// LockFile is the activation lock.
func (l Layout) LockFile() string { return filepath.Join(l.withDefaults().RunDir, "lock") }

// AppliedFile records what is applied to the machine (it survives
// reboots): the system last applied, whether that completed, and the one
// before it.
func (l Layout) AppliedFile() string { return filepath.Join(l.withDefaults().StateDir, "applied.json") }

// confirmDir holds confirmations, one file per activation.
func (l Layout) confirmDir() string { return filepath.Join(l.withDefaults().RunDir, "confirm") }

// requestDir holds activation requests handed to detached workers.
func (l Layout) requestDir() string { return filepath.Join(l.withDefaults().RunDir, "requests") }

// Init creates the agent's directories with their modes, owned by the
// caller (root): RunDir 0711, the log, confirmation and request
// directories 0700.
func (l Layout) Init() error {
	l = l.withDefaults()
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{l.StateDir, 0o755},
		{l.ProfilesDir(), 0o755},
		{l.LogDir(), 0o700},
		{l.RunDir, 0o711},
		{l.confirmDir(), 0o700},
		{l.requestDir(), 0o700},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("init %q: %w", d.path, err)
		}
		// MkdirAll keeps an existing directory's mode; make sure the
		// directories that are not world-listable (0711, 0700) are as
		// private as they should be even if someone loosened them.
		if d.mode&0o077 != 0o055 {
			fi, err := os.Lstat(d.path)
			if err != nil {
				return fmt.Errorf("init %q: %w", d.path, err)
			}
			if !fi.IsDir() {
				return fmt.Errorf("init %q: not a directory", d.path)
			}
			if err := os.Chmod(d.path, d.mode); err != nil {
				return fmt.Errorf("init %q: %w", d.path, err)
			}
		}
	}
	return nil
}
