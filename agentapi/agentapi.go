// Package agentapi is the whole contract between the operator (package
// agentclient), pull mode (package pull) and the agent (cmd/deploy-agent,
// package activation), as package manifest is for the system manifest:
// every side imports it and nothing else of the others. It holds
//
//   - the documents the agent prints: the result line of an activation,
//     `status --json`, `generations --json`, `gc --json`, `drift --json`,
//     `health --json`, the run lock's replies, pull mode's documents;
//   - the verbs and their command lines ([ActivateCmd], [RollbackCmd],
//     [ConfirmCmd], [RunLockCmd], ...), and [Command], the one rule for
//     which agent on a host runs a command;
//   - the agent's exit codes ([ExitOK] ... [ExitNoAgent]);
//   - the run lock's conversation ([WriteRunHolder], [ReadLockReply], ...);
//   - the agent's layout on a host ([DefaultStateDir], [DefaultRunDir],
//     [AgentBin], [GenerationLink], ...).
//
// It uses the standard library only.
//
// # Versioning
//
// Every document carries [Version] in its "v" field. Adding an optional
// field keeps the version; changing or removing a field, or what a value
// means, increments it. An operator reads documents of its own version and
// older ones, and refuses newer ones with a [*VersionError] that says to
// upgrade deploy, so it never acts on an answer it does not understand.
// Agents from before versioning print no "v" (read as 0), and their
// `generations --json` is a bare array; [DecodeGenerations] accepts both.
//
// # Outcomes and phases
//
// An activation moves through [Phase] values (recorded in the agent's
// state.json and shown by status) and ends in one of the final ones, which
// are also its [Outcome] on the result line.
package agentapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Version is the version of every document of this package.
const Version = 1

// Phase is a step of an activation.
type Phase string

// The phases of an activation. The first five are in progress; the rest
// are final and double as outcomes.
const (
	PhaseStarting     Phase = "starting"
	PhaseApplying     Phase = "applying"
	PhaseChecking     Phase = "checking"
	PhaseAwaiting     Phase = "awaiting-confirmation"
	PhaseRollingBack  Phase = "rolling-back"
	PhaseDone         Phase = "done"
	PhaseRolledBack   Phase = "rolled-back"
	PhaseFailed       Phase = "failed"
	PhaseLockHeld     Phase = "lock-held"
	PhaseDryActivated Phase = "dry-activated"
)

// InProgress reports whether an activation in phase p is still running.
func (p Phase) InProgress() bool {
	switch p {
	case PhaseStarting, PhaseApplying, PhaseChecking, PhaseAwaiting, PhaseRollingBack:
		return true
	}
	return false
}

// Final reports whether p ends an activation.
func (p Phase) Final() bool {
	switch p {
	case PhaseDone, PhaseRolledBack, PhaseFailed, PhaseLockHeld, PhaseDryActivated:
		return true
	}
	return false
}

// Outcome is how an activation ended, or that it awaits confirmation: the
// "outcome" of a [Result].
type Outcome = Phase

// The outcomes of an activation.
const (
	OutcomeDone       = PhaseDone         // applied (and confirmed, when a confirmation was asked)
	OutcomeAwaiting   = PhaseAwaiting     // applied; the operator must confirm
	OutcomeRolledBack = PhaseRolledBack   // failed or not confirmed; the previous generation runs again
	OutcomeFailed     = PhaseFailed       // failed and could not be rolled back
	OutcomeLockHeld   = PhaseLockHeld     // another activation holds the host's lock
	OutcomeDry        = PhaseDryActivated // dry-activate: nothing changed
)

// Result is the last line an activation prints on stdout (activate,
// rollback, confirm), and the content of its result file on the host.
type Result struct {
	V          int     `json:"v"`
	ID         string  `json:"activation"`
	Generation int     `json:"generation,omitempty"`
	Outcome    Outcome `json:"outcome"`
	Message    string  `json:"message,omitempty"`
	Log        string  `json:"log,omitempty"`
	// Holder names the lock holder when Outcome is lock-held.
	Holder *Holder `json:"holder,omitempty"`
	// Check names the health check that failed, when the activation
	// rolled back (or failed) because of one.
	Check string `json:"check,omitempty"`
	// Warnings are what the operator must know although the activation
	// went on (secrets on swappable memory, say).
	Warnings []string `json:"warnings,omitempty"`
}

// Holder describes the process holding the host's activation lock.
type Holder struct {
	PID        int       `json:"pid"`
	User       string    `json:"user,omitempty"`
	Started    time.Time `json:"started"`
	GitRev     string    `json:"git_rev,omitempty"`
	Activation string    `json:"activation,omitempty"`
	System     string    `json:"system,omitempty"`
}

// String describes h for an operator.
func (h *Holder) String() string {
	if h == nil {
		return "another process (it did not record itself yet)"
	}
	s := fmt.Sprintf("pid %d", h.PID)
	if h.User != "" {
		s += fmt.Sprintf(" (user %q)", h.User)
	}
	s += " since " + h.Started.UTC().Format(time.RFC3339)
	if h.GitRev != "" {
		s += fmt.Sprintf(", git rev %q", h.GitRev)
	}
	if h.Activation != "" {
		s += fmt.Sprintf(", activation %s", h.Activation)
	}
	return s
}

// Generation is one numbered system of a host, as `generations --json`
// lists it.
type Generation struct {
	Number int    `json:"number"`
	System string `json:"system"`
	// Time is when the generation was created.
	Time time.Time `json:"time"`
	// Operator is who activated it (the --meta operator=, else the SSH
	// user running the agent).
	Operator string `json:"operator,omitempty"`
	// GitRev is the fleet repository's commit.
	GitRev string `json:"git_rev,omitempty"`
	// Message is a free-form description.
	Message string `json:"message,omitempty"`
	// Meta holds every --meta key=value given at activation.
	Meta map[string]string `json:"meta,omitempty"`
	// Failed is set when the generation was rolled back or failed to
	// apply; FailedReason says why and FailedTime when. Failed
	// generations are kept.
	Failed       bool      `json:"failed,omitempty"`
	FailedReason string    `json:"failed_reason,omitempty"`
	FailedTime   time.Time `json:"failed_time,omitzero"`
	// Confirmed is when the generation was confirmed (or activated
	// without a confirmation timeout).
	Confirmed time.Time `json:"confirmed,omitzero"`
	// Current and Boot mark the running system and the boot default.
	Current bool `json:"current,omitempty"`
	Boot    bool `json:"boot,omitempty"`
	// AgentAPI is the agent API version ([Version]) of the agent that
	// created the generation, which is the generation's own agent; 0 for
	// generations created before it was recorded. An operator or agent
	// that understands less refuses to roll back to it (it would run, or
	// apply, what it does not understand).
	AgentAPI int `json:"agent_api,omitempty"`
	// RevokedSecrets are the generation's secrets whose version this
	// host has recorded as revoked, by name (filled in by the agent that
	// answers, like Current and Boot): activating the generation keeps
	// the running version of each, or is refused when there is none.
	RevokedSecrets []string `json:"revoked_secrets,omitempty"`
}

// Marks are the generation's marks for a table: current, boot, failed,
// revoked (it holds a revoked secret version).
func (g *Generation) Marks() []string {
	var marks []string
	if g.Current {
		marks = append(marks, "current")
	}
	if g.Boot {
		marks = append(marks, "boot")
	}
	if g.Failed {
		marks = append(marks, "failed")
	}
	if len(g.RevokedSecrets) > 0 {
		marks = append(marks, "revoked")
	}
	return marks
}

// Note is the generation's message, with why it failed when it did and
// which of its secrets are revoked.
func (g *Generation) Note() string {
	note := g.Message
	if g.Failed && g.FailedReason != "" {
		note += " [" + g.FailedReason + "]"
	}
	if len(g.RevokedSecrets) > 0 {
		note += " [revoked secret versions: " + strings.Join(g.RevokedSecrets, ", ") + "]"
	}
	return strings.TrimSpace(note)
}

// Generations is what `generations --json` prints.
type Generations struct {
	V           int           `json:"v"`
	Generations []*Generation `json:"generations"`
}

// Activation describes one activation, running or finished.
type Activation struct {
	// ID names the activation: its log is log/activate-ID.log and its
	// transient unit deploy-activate-ID.
	ID         string `json:"id"`
	Generation int    `json:"generation"`
	System     string `json:"system"`
	Mode       string `json:"mode"`
	// Previous is the generation running before (0: none).
	Previous int    `json:"previous"`
	Phase    Phase  `json:"phase"`
	Message  string `json:"message,omitempty"`
	// PID, User and Started describe the worker; GitRev comes from
	// --meta git_rev.
	PID     int       `json:"pid"`
	User    string    `json:"user,omitempty"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	GitRev  string    `json:"git_rev,omitempty"`
	// Deadline is when an unconfirmed activation rolls back.
	Deadline time.Time `json:"deadline,omitzero"`
	// Log is the activation's log file.
	Log string `json:"log,omitempty"`
	// Warnings are the activation's warnings so far (see Result).
	Warnings []string `json:"warnings,omitempty"`
}

// Status is what `status --json` prints.
type Status struct {
	V int `json:"v"`
	// Current is the running generation (0: none) and CurrentSystem its
	// store path.
	Current       int    `json:"current"`
	CurrentSystem string `json:"current_system,omitempty"`
	// Boot is the boot default (0: none).
	Boot       int    `json:"boot"`
	BootSystem string `json:"boot_system,omitempty"`
	// Pending is the generation of an activation in progress (applying,
	// checking or awaiting confirmation), 0 when none.
	Pending int `json:"pending,omitempty"`
	// Failed lists generations marked failed.
	Failed []int `json:"failed"`
	// Activation is the last activation since boot.
	Activation *Activation `json:"activation,omitempty"`
	// Lock names the activation lock's holder when it is held.
	Lock *Holder `json:"lock,omitempty"`
	// RunLock names the run lock's holder when a deploy run holds it.
	RunLock *RunHolder `json:"run_lock,omitempty"`
	// Consistent is false while an application is incomplete (in progress,
	// or interrupted and not yet repaired by a rollback or the boot unit).
	Consistent bool `json:"consistent"`
	// Pushed are the systems copied to the host and not activated since
	// (deploy --mode push, deploy copy, or a copy whose activation did not
	// happen), newest first: GC roots until they are activated or expire.
	Pushed []Pushed `json:"pushed,omitempty"`
	// CurrentTime and CurrentGitRev are when the running generation was
	// created and from which fleet commit.
	CurrentTime   time.Time `json:"current_time,omitzero"`
	CurrentGitRev string    `json:"current_git_rev,omitempty"`
	// BootID is the kernel's boot id (see [Health]).
	BootID string `json:"boot_id,omitempty"`
	// BootTrial is the pending trial of the boot default (boot counting),
	// BootRollback the last trial that fell back to its previous
	// generation.
	BootTrial    *BootTrial    `json:"boot_trial,omitempty"`
	BootRollback *BootRollback `json:"boot_rollback,omitempty"`
	// RebootRequired is set when the running generation is not the boot
	// default (one activated with --mode boot waits for a reboot), with
	// RebootReason saying so.
	RebootRequired bool   `json:"reboot_required,omitempty"`
	RebootReason   string `json:"reboot_reason,omitempty"`
	// KeptSecrets are the running generation's secrets whose own version
	// is revoked, so the version the machine ran before was kept, by
	// name.
	KeptSecrets []string `json:"kept_secrets,omitempty"`
	// RevokedSecrets is how many secret versions the host has recorded as
	// revoked.
	RevokedSecrets int `json:"revoked_secrets,omitempty"`
	// Drift is the host's drift from its current generation, with
	// `status --drift` (store paths checked for presence only).
	Drift *Drift `json:"drift,omitempty"`
}

// Pushed is a pushed system kept as a GC root since Time (its last push).
type Pushed struct {
	System string    `json:"system"`
	Time   time.Time `json:"time"`
}

// GCResult is what `gc --json` prints.
type GCResult struct {
	V int `json:"v"`
	// Generations are the numbers of the generations removed.
	Generations []int `json:"generations"`
	// Paths and Bytes count the store paths deleted and their NAR bytes.
	Paths int   `json:"paths"`
	Bytes int64 `json:"bytes"`
	// Pushed are the pushed systems whose roots were removed (expired,
	// beyond the count kept, or dropped); their paths were then collected
	// unless something else needs them.
	Pushed []string `json:"pushed,omitempty"`
	// Images are the manifest digests of the realized image roots removed
	// (no remaining generation runs them).
	Images []string `json:"images,omitempty"`
}

// RunHolder describes a deploy run that holds (or held) a host's run lock:
// the operator's run, not a process on the host.
type RunHolder struct {
	// Run identifies the run (random, per run).
	Run      string    `json:"run"`
	Operator string    `json:"operator,omitempty"`
	Machine  string    `json:"machine,omitempty"` // the operator's host name
	GitRev   string    `json:"git_rev,omitempty"`
	Command  string    `json:"command,omitempty"` // deploy, rollback, gc
	Hosts    []string  `json:"hosts,omitempty"`   // every host of the run
	Started  time.Time `json:"started"`
	// Process is the operator's process that runs the run (nil from an
	// older deploy, or where it cannot be named): a later run that finds
	// it ended, in the same process table, takes the lock over at once
	// instead of waiting for the lease.
	Process *RunProcess `json:"process,omitempty"`
	// TakeOver, in a request only (never recorded), names the run holding
	// the lock whose Process the requesting run found ended: the agent
	// ends that run's run-lock process and takes the lock.
	TakeOver string `json:"take_over,omitempty"`
}

// RunProcess names an operator's process for [RunHolder.Process]: the
// process table (the kernel's boot id and the PID namespace), the PID and
// its start time in clock ticks since boot, so that a reused PID is told
// apart.
type RunProcess struct {
	Space string `json:"space"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// String describes h for an operator.
func (h *RunHolder) String() string {
	if h == nil {
		return "another run"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s run %s", orUnknown(h.Command, "a"), h.Run)
	if h.Operator != "" || h.Machine != "" {
		fmt.Fprintf(&b, " by %s@%s", orUnknown(h.Operator, "?"), orUnknown(h.Machine, "?"))
	}
	if h.GitRev != "" {
		fmt.Fprintf(&b, " at commit %s", h.GitRev)
	}
	fmt.Fprintf(&b, " since %s", h.Started.UTC().Format(time.RFC3339))
	if len(h.Hosts) > 0 {
		fmt.Fprintf(&b, " (hosts %s)", strings.Join(h.Hosts, ", "))
	}
	return b.String()
}

func orUnknown(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// LockReply is the run lock's answer (`deploy-agent run-lock`), one JSON
// line: whether the lock was taken, and who holds it when it was not, or
// whose lock was taken over when its run ended without releasing it.
type LockReply struct {
	V      int        `json:"v"`
	Locked bool       `json:"locked"`
	Holder *RunHolder `json:"holder,omitempty"`
	// TookOver is the run whose lock was left behind (its run crashed or
	// lost its connection) and is now ours.
	TookOver *RunHolder `json:"took_over,omitempty"`
	// Drift is the host compared with its current generation, when the
	// request asked for it ([RunLockCmd.Drift]) and the lock was taken;
	// DriftError says why it could not be compared.
	Drift      *Drift `json:"drift,omitempty"`
	DriftError string `json:"drift_error,omitempty"`
	// Running is what the host runs and boots, when the lock was taken
	// (nil from an agent older than this field): with a drift that found
	// nothing, an operator whose system is both needs no transfer session
	// to call the host unchanged. Neither changes while the lock is held.
	Running *RunningSystems `json:"running,omitempty"`
}

// RunningSystems are a host's current and boot-default systems, as store
// paths ("" for none), as the transfer's hello reports them too.
type RunningSystems struct {
	Current     string `json:"current,omitempty"`
	BootDefault string `json:"boot_default,omitempty"`
}

// VersionError is a document newer than this operator understands.
type VersionError struct {
	What string // "status", "generations", ...
	Got  int
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("the host's deploy-agent answered %s in agent API version %d; this deploy understands up to %d: upgrade deploy", e.What, e.Got, Version)
}

// Decode reads one document (what names it in errors) into v, whose "v"
// field it checks: a version above [Version] is a *[VersionError].
func Decode(what string, data []byte, v any) error {
	var head struct {
		V int `json:"v"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return fmt.Errorf("%s: the agent's answer: %w", what, err)
	}
	if head.V > Version {
		return &VersionError{What: what, Got: head.V}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: the agent's answer: %w", what, err)
	}
	return nil
}

// DecodeGenerations reads `generations --json`: the versioned document, or
// the bare array agents printed before versioning.
func DecodeGenerations(data []byte) ([]*Generation, error) {
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '[' {
		var gens []*Generation
		if err := json.Unmarshal(t, &gens); err != nil {
			return nil, fmt.Errorf("generations: the agent's answer: %w", err)
		}
		return gens, nil
	}
	var doc Generations
	if err := Decode("generations", data, &doc); err != nil {
		return nil, err
	}
	return doc.Generations, nil
}

// ParseResult finds the result line in an activation's stdout (the last
// line that is a [Result] with an outcome); nil when there is none, as when
// the connection dropped first. A result of a newer version is a
// *[VersionError].
func ParseResult(stdout []byte) (*Result, error) {
	lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		r := &Result{}
		if json.Unmarshal([]byte(lines[i]), r) != nil || r.Outcome == "" {
			continue
		}
		if r.V > Version {
			return nil, &VersionError{What: "the activation's result", Got: r.V}
		}
		return r, nil
	}
	return nil, nil
}
