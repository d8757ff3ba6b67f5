package fleet

import (
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/mesh"
)

// EventSchemaVersion is the version of the [Event] JSON schema (the "v"
// field of every --json line). Fields are only ever added within a version.
const EventSchemaVersion = 1

// Phase is a step of a host's deployment.
type Phase string

// The phases of a deploy, in order, then those of the other host
// commands.
const (
	PhaseEval     Phase = "eval"
	PhaseBuild    Phase = "build"
	PhaseLock     Phase = "lock" // the run lock
	PhaseCopy     Phase = "copy"
	PhaseActivate Phase = "activate"
	PhaseConfirm  Phase = "confirm"
	PhaseRollback Phase = "rollback"

	PhaseStatus      Phase = "status"
	PhaseGenerations Phase = "generations"
	PhaseGC          Phase = "gc"
	PhaseExec        Phase = "exec"
	PhaseDiff        Phase = "diff"
	// PhaseVerify compares a host with its current generation (deploy
	// verify, and a deploy's look before it overwrites); PhaseReboot
	// reboots a host and waits until it runs its boot default healthily.
	PhaseVerify Phase = "verify"
	PhaseReboot Phase = "reboot"

	// Pull mode: writing a host's release to the channel, and the host
	// acting on it (publish --wait, status --channel).
	PhasePublish Phase = "publish"
	PhasePull    Phase = "pull"
)

// Result is how a host's deployment ended.
type Result string

// The results.
const (
	ResultOK          Result = "ok"          // at the new generation (or pushed, in push mode)
	ResultUnchanged   Result = "unchanged"   // already ran this system; nothing activated
	ResultRolledBack  Result = "rolled-back" // back on its previous generation
	ResultFailed      Result = "failed"      // failed; see the phase and error
	ResultUnreachable Result = "unreachable" // could not be reached, or the copy failed
	ResultLocked      Result = "locked"      // another deployment holds the host's lock
	ResultSkipped     Result = "skipped"     // not attempted (an earlier batch failed)
	ResultPlanned     Result = "planned"     // --dry-run: what would happen
	// ResultCommandFailed is a host command that failed on the host:
	// exec's command exited non-zero, or the agent failed a gc or query.
	ResultCommandFailed Result = "command-failed"
	// ResultRefused is a host in pull mode that refused its release: the
	// closure failed verification, or the document did (a key it does not
	// trust, say).
	ResultRefused Result = "refused"
	// ResultDrifted is a host whose live state differs from its current
	// generation (deploy verify).
	ResultDrifted Result = "drifted"
)

// Event is one line of the event stream that the terminal view, the plain
// log and --json all render. See docs/events.md for the schema.
type Event struct {
	V    int       `json:"v"`
	Time time.Time `json:"time"`
	Type string    `json:"event"`
	// Command is the run's command (deploy, build, rollback, status, ...)
	// on run.start and run.done.
	Command string `json:"command,omitempty"`
	Host    string `json:"host,omitempty"`
	Phase   Phase  `json:"phase,omitempty"`
	// State of a phase: "started", "done", "failed", "skipped".
	State string   `json:"state,omitempty"`
	Batch int      `json:"batch,omitempty"`
	Hosts []string `json:"hosts,omitempty"`
	// Batches of run.start: host names per batch.
	Batches [][]string `json:"batches,omitempty"`
	Mode    Mode       `json:"mode,omitempty"`
	// DryRun marks the run.start of a deploy --dry-run: nothing is
	// copied or activated, a copy phase only finds what would be sent.
	DryRun  bool   `json:"dry_run,omitempty"`
	Message string `json:"message,omitempty"`
	// Copy progress, in NAR bytes; Path is the path being sent or just
	// confirmed.
	Path      string `json:"path,omitempty"`
	Sent      int64  `json:"sent,omitempty"`
	Confirmed int64  `json:"confirmed,omitempty"`
	Total     int64  `json:"total,omitempty"`
	// Results.
	Result     Result `json:"result,omitempty"`
	System     string `json:"system,omitempty"`
	Generation int    `json:"generation,omitempty"`
	Error      string `json:"error,omitempty"`
	// Check names the health check (or metric gate) whose failure rolled
	// the host back (host.result of an activation).
	Check   string   `json:"check,omitempty"`
	LogTail []string `json:"log_tail,omitempty"`
	// Plan (dry run): paths and bytes to copy, unit changes. A copy's
	// done also has Paths, the paths in the closure.
	Paths     int `json:"paths,omitempty"`
	CopyPaths int `json:"copy_paths,omitempty"`
	// A copy's done: paths and NAR bytes the host fetched from the
	// binary cache (copy_paths and total are what was sent).
	FetchedPaths int      `json:"fetched_paths,omitempty"`
	FetchedBytes int64    `json:"fetched_bytes,omitempty"`
	Start        []string `json:"units_start,omitempty"`
	Restart      []string `json:"units_restart,omitempty"`
	Reload       []string `json:"units_reload,omitempty"`
	Stop         []string `json:"units_stop,omitempty"`
	Files        []string `json:"files_changed,omitempty"`
	// Repair (dry run of a drifted host): the drift items the deploy
	// repairs by re-applying the system, one line each.
	Repair []string `json:"repair,omitempty"`
	// Summary of run.done: host names by result.
	Summary map[Result][]string `json:"summary,omitempty"`
	// Run locks: the run holding a host's lock (locked), or the run whose
	// abandoned lock this run took over.
	Holder   *agentapi.RunHolder `json:"holder,omitempty"`
	TookOver *agentapi.RunHolder `json:"took_over,omitempty"`
	// Results of the host commands.
	Generations []*agentapi.Generation `json:"generations,omitempty"` // generations
	Status      *agentapi.Status       `json:"status,omitempty"`      // status
	GC          *agentapi.GCResult     `json:"gc,omitempty"`          // gc
	Diff        *manifest.Difference   `json:"diff,omitempty"`        // diff
	Drift       *agentapi.Drift        `json:"drift,omitempty"`       // verify, and a deploy's host.warning of drift
	Health      *agentapi.Health       `json:"health,omitempty"`      // reboot
	// Exec: Stream ("stdout" or "stderr") of a host.output line in
	// Message; ExitStatus of the command on host.result.
	Stream     string `json:"stream,omitempty"`
	ExitStatus *int   `json:"exit_status,omitempty"`
	// Pull mode: the channel and the release's serial (channel.publish,
	// and the host events of publish and status --channel), and a host's
	// status document.
	Channel    string               `json:"channel,omitempty"`
	Serial     int64                `json:"serial,omitempty"`
	PullStatus *agentapi.PullStatus `json:"pull_status,omitempty"`
	// SSH of run.done: per host, the SSH connections the run made and
	// the sessions it opened on them (every host the run contacted).
	SSH map[string]mesh.HostCounts `json:"ssh,omitempty"`
}

// Event types.
const (
	EventRunStart   = "run.start"   // Hosts, Batches, Mode, DryRun
	EventBatchStart = "batch.start" // Batch, Hosts
	EventPhase      = "host.phase"  // Host, Phase, State (+ Error)
	EventProgress   = "host.progress"
	EventLog        = "host.log"     // Host, Phase, Message: a line of the target's log
	EventWarning    = "host.warning" // Host, Phase, Message: what the operator must know (secrets on swappable memory)
	EventResult     = "host.result"  // Host, Result, Phase (where it ended), System, Generation, Error, Check, LogTail
	EventPlan       = "host.plan"    // Host + the plan fields (dry run)
	EventRollback   = "run.rollback"
	EventHalt       = "run.halt"        // Hosts (those that failed before the first batch), Message: the rollout stops before any host changes
	EventOutput     = "host.output"     // Host, Stream, Message: a line of exec's output
	EventCachePush  = "cache.push"      // State, Message (the cache), Paths, CopyPaths, Total, Error
	EventPublish    = "channel.publish" // Channel, Serial, Batches (the waves), State, Message
	EventRunDone    = "run.done"        // Summary, SSH
)

// emitter hands events to a sink one at a time, stamped with the schema
// version and the time: the one emitter of a session and its runner.
type emitter struct{ mu sync.Mutex }

func (e *emitter) emit(sink func(Event), ev Event) {
	if sink == nil {
		return
	}
	ev.V = EventSchemaVersion
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sink(ev)
}
