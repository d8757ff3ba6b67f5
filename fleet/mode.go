package fleet

import "fmt"

// Mode is what a deployment does on each host.
type Mode string

// The modes.
const (
	ModeSwitch      Mode = "switch"       // activate now, make it the boot default once confirmed
	ModeBoot        Mode = "boot"         // make it the boot default only
	ModeTest        Mode = "test"         // activate now, never the boot default
	ModeDryActivate Mode = "dry-activate" // show what activation would do
	ModeBuild       Mode = "build"        // build only; no host is contacted
	ModePush        Mode = "push"         // build and copy; nothing is activated
)

// ParseMode checks a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeSwitch, ModeBoot, ModeTest, ModeDryActivate, ModeBuild, ModePush:
		return m, nil
	}
	return "", fmt.Errorf("mode %q: want switch, boot, test, dry-activate, build or push", s)
}

// Activates reports whether the mode runs the agent's activate.
func (m Mode) Activates() bool {
	return m == ModeSwitch || m == ModeBoot || m == ModeTest || m == ModeDryActivate
}
