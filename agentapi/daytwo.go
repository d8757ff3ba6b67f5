package agentapi

import (
	"fmt"
	"time"
)

// Drift is what `deploy-agent drift --json` prints (and `status --json
// --drift` embeds): how the host's live state differs from its current
// generation's manifest. No items means no drift.
type Drift struct {
	V int `json:"v"`
	// Generation and System are what the host was compared with (0 and
	// "": the host runs no generation, and nothing is compared).
	Generation int    `json:"generation"`
	System     string `json:"system,omitempty"`
	// Items are the differences, in the order of the manifest's kinds:
	// users, groups, directories, files, symlinks, secrets, sysctls,
	// firewall, units, hostname, store.
	Items []DriftItem `json:"items"`
	// StoreVerified is set when the current system's store paths were
	// rehashed; otherwise they were only checked to be present.
	StoreVerified bool `json:"store_verified,omitempty"`
}

// Drift item kinds.
const (
	DriftUser      = "user"
	DriftGroup     = "group"
	DriftDirectory = "directory"
	DriftFile      = "file"
	DriftSymlink   = "symlink"
	DriftSecret    = "secret"
	DriftSysctl    = "sysctl"
	DriftFirewall  = "firewall"
	DriftUnit      = "unit"
	DriftHostname  = "hostname"
	DriftStore     = "store"
)

// DriftItem is one difference between a host and its generation.
type DriftItem struct {
	// Kind is one of the Drift* kinds; Name the file's path, the unit's,
	// user's or group's name, the sysctl's key, the firewall's table
	// ("inet deploy"), the host name's place ("kernel", "/etc/hostname"),
	// or the store path.
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Problem says what differs: missing, unreadable, type, content,
	// owner, mode, target, uid, gid, group, home, shell, groups (a
	// user's supplementary groups), members (a group's), value (a sysctl,
	// the host name), rules (the firewall's), inactive, failed, masked,
	// unit-file, corrupt.
	Problem string `json:"problem"`
	// Want and Got are the generation's value and the live one, when
	// they say more than Problem (owners, modes, unit states).
	Want string `json:"want,omitempty"`
	Got  string `json:"got,omitempty"`
}

// String describes the item in one line: "file /etc/x: mode 0644, want
// 0600".
func (i DriftItem) String() string {
	s := fmt.Sprintf("%s %s: %s", i.Kind, i.Name, i.Problem)
	switch {
	case i.Got != "" && i.Want != "":
		s += fmt.Sprintf(" (is %s, want %s)", i.Got, i.Want)
	case i.Got != "":
		s += fmt.Sprintf(" (%s)", i.Got)
	}
	return s
}

// Health is what `deploy-agent health --json` prints: whether the host
// runs its boot-default generation as it should, after a reboot say.
type Health struct {
	V int `json:"v"`
	// BootID is the kernel's boot id (a container's own under
	// systemd-nspawn): it changes with every boot.
	BootID string `json:"boot_id,omitempty"`
	// SystemState is `systemctl is-system-running` once startup ended
	// (running, degraded, ...).
	SystemState string `json:"system_state,omitempty"`
	// Current and Boot are the running and the boot-default generation.
	Current int `json:"current"`
	Boot    int `json:"boot"`
	// Units are the boot default's units that should run and do not,
	// as "name: state".
	Units []string `json:"units,omitempty"`
	// Checks are the boot default's health checks, in order.
	Checks []CheckResult `json:"checks,omitempty"`
	// Healthy is set when the host runs its boot default, every unit
	// that should run is active and every health check passed.
	Healthy bool `json:"healthy"`
	// Message says why the host is not healthy.
	Message string `json:"message,omitempty"`
	// Elapsed is how long the agent waited and checked.
	Elapsed time.Duration `json:"elapsed_ns,omitempty"`
}

// CheckResult is one health check's outcome.
type CheckResult struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}
