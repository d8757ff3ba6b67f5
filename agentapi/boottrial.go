package agentapi

import (
	"fmt"
	"path"
	"time"
)

// Boot counting: a generation made the boot default for a boot (activate
// --mode boot) is a trial until a boot of it confirms (its units run and
// its health checks pass). The trial's record counts the boots; after
// MaxAttempts boots that did not confirm, the host makes Previous the boot
// default again and boots it, and records a [BootRollback].

// Defaults of a trial's settings (the fleet's boot_attempts and
// boot_timeout).
const (
	DefaultBootAttempts = 3
	DefaultBootTimeout  = 5 * time.Minute
)

// BootTrialFile is the trial's record, [BootTrial]: present only while a
// trial is pending.
func BootTrialFile(stateDir string) string { return path.Join(orState(stateDir), "boot-trial.json") }

// BootRollbackFile is the last [BootRollback]: kept until the next trial
// is armed.
func BootRollbackFile(stateDir string) string {
	return path.Join(orState(stateDir), "boot-rollback.json")
}

// BootGuardProfile is the link to the generation whose agent counts a
// trial's boots (deploy-boot-guard.service runs
// BootGuardProfile/agent/bin/deploy-agent boot-guard): the generation the
// trial falls back to when its agent knows the verb.
func BootGuardProfile(stateDir string) string { return path.Join(ProfilesDir(stateDir), "boot-guard") }

// BootTrial is the record of a pending trial (STATE/boot-trial.json).
type BootTrial struct {
	V int `json:"v"`
	// ID names the trial (a deploy reboot tells its trial's fallback from
	// an earlier one by it).
	ID string `json:"id"`
	// Generation is the trial generation (the boot default) and System
	// its store path.
	Generation int    `json:"generation"`
	System     string `json:"system"`
	// Previous is the generation it falls back to (0: none, the trial
	// is then only counted) and PreviousSystem that one's store path.
	Previous       int    `json:"previous"`
	PreviousSystem string `json:"previous_system,omitempty"`
	// MaxAttempts is how many boots may fail before the fallback.
	MaxAttempts int `json:"max_attempts"`
	// Timeout is how long each boot has to confirm.
	Timeout time.Duration `json:"timeout_ns"`
	// Created is when the trial was armed.
	Created time.Time `json:"created"`
	// Attempts are the boots of the trial so far, each recorded before
	// the trial's own code ran in it.
	Attempts []BootAttempt `json:"attempts"`
}

// BootAttempt is one boot of a trial.
type BootAttempt struct {
	BootID  string    `json:"boot_id"`
	Started time.Time `json:"started"`
	// Failure says why the boot did not confirm ("" while it may).
	Failure string `json:"failure,omitempty"`
}

// BootRollback is a trial that fell back (STATE/boot-rollback.json).
type BootRollback struct {
	V          int    `json:"v"`
	Trial      string `json:"trial"`
	Generation int    `json:"generation"`
	// Previous is the generation the host boots again.
	Previous int `json:"previous"`
	// Attempts is how many boots of Generation failed.
	Attempts int `json:"attempts"`
	// Reason is why the last of them failed.
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
	// BootID is the boot that decided the fallback; the host reboots
	// from it into Previous.
	BootID string `json:"boot_id,omitempty"`
}

// Message says what happened, as deploy reboot and status report it.
func (r *BootRollback) Message() string {
	return fmt.Sprintf("rolled back after %d failed boots of generation %d: %s", r.Attempts, r.Generation, r.Reason)
}

// BootState is what the operator reads after it rebooted a host
// ([BootStateCmd]): the host's boot id, its pending trial and its last
// fallback, read without any agent (the trial's may not run at all).
type BootState struct {
	BootID   string        `json:"boot_id"`
	Trial    *BootTrial    `json:"trial"`
	Rollback *BootRollback `json:"rollback"`
	// Boot is the boot default's store path ("" when none).
	Boot string `json:"boot"`
}

// BootStateCmd is a shell command line that prints the [BootState] of the
// host whose state directory is stateDir as one JSON document. It needs
// no agent: a trial whose agent does not start is still reported.
func BootStateCmd(stateDir string) []string {
	script := `printf '{"boot_id":"%s","boot":"%s","trial":' "$(cat /proc/sys/kernel/random/boot_id)" "$(readlink -f ` + shellQuote(BootProfile(stateDir)) + ` 2>/dev/null)"
cat ` + shellQuote(BootTrialFile(stateDir)) + ` 2>/dev/null || printf null
printf ',"rollback":'
cat ` + shellQuote(BootRollbackFile(stateDir)) + ` 2>/dev/null || printf null
printf '}\n'`
	return []string{"sh", "-c", script}
}
