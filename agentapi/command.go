package agentapi

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The agent's verbs: deploy-agent VERB [flags] [arguments].
const (
	VerbVersion     = "version"
	VerbVerify      = "verify"
	VerbReceive     = "receive"
	VerbInstallSelf = "install-self"
	VerbActivate    = "activate"
	VerbConfirm     = "confirm"
	VerbRollback    = "rollback"
	VerbStatus      = "status"
	VerbGenerations = "generations"
	VerbGC          = "gc"
	VerbBoot        = "boot"
	VerbApply       = "apply"
	VerbRunLock     = "run-lock"
	VerbPull        = "pull"
	VerbDrift       = "drift"
	VerbHealth      = "health"
	// Boot counting: run by deploy-boot-guard.service (the fallback
	// generation's agent) and deploy-boot-confirm.service (the trial's).
	VerbBootGuard   = "boot-guard"
	VerbBootConfirm = "boot-confirm"
	// VerbRunLease keeps a run's run lock across the reboot it orders.
	VerbRunLease = "run-lease"
	// The agent's own: the detached halves of an activation.
	VerbActivateWorker = "activate-worker"
	VerbWatchdog       = "watchdog"
)

// The command lines below are what the operator (and pull mode) run; the
// agent parses them with the same flag names. Each Args returns the verb
// and its arguments, without the executable (see [Command]).

// ActivateCmd is `activate`: System becomes a new generation in Mode
// (switch, boot, test, dry-activate), confirmed within ConfirmTimeout
// with the token on stdin (0: the health checks decide).
type ActivateCmd struct {
	StateDir       string
	RunDir         string // "": the agent's default
	Mode           string // "": switch
	ConfirmTimeout time.Duration
	Meta           map[string]string // recorded with the generation
	Force          bool              // replace unmanaged files
	// BootAttempts and BootTimeout set a boot-mode trial's attempts and
	// the time each boot has to confirm (0: the agent's defaults,
	// [DefaultBootAttempts], [DefaultBootTimeout]).
	BootAttempts int
	BootTimeout  time.Duration
	System       string
}

// Args implements the command line.
func (a ActivateCmd) Args() []string {
	mode := a.Mode
	if mode == "" {
		mode = "switch"
	}
	args := append(dirArgs(VerbActivate, a.StateDir, a.RunDir), "--mode", mode, "--confirm-timeout", a.ConfirmTimeout.String())
	args = append(args, metaArgs(a.Meta)...)
	if a.Force {
		args = append(args, "--force")
	}
	if a.BootAttempts > 0 {
		args = append(args, "--boot-attempts", strconv.Itoa(a.BootAttempts))
	}
	if a.BootTimeout > 0 {
		args = append(args, "--boot-timeout", a.BootTimeout.String())
	}
	return append(args, a.System)
}

// RollbackCmd is `rollback --to N`: generation To runs again, confirmed
// within ConfirmTimeout with the token on stdin (0: no confirmation).
type RollbackCmd struct {
	StateDir       string
	RunDir         string
	To             int
	ConfirmTimeout time.Duration
	Meta           map[string]string
}

// Args implements the command line.
func (r RollbackCmd) Args() []string {
	args := append(dirArgs(VerbRollback, r.StateDir, r.RunDir), "--to", strconv.Itoa(r.To), "--confirm-timeout", r.ConfirmTimeout.String())
	return append(args, metaArgs(r.Meta)...)
}

// ConfirmCmd is `confirm N` with the activation's token on stdin.
type ConfirmCmd struct {
	StateDir   string
	Generation int
	// Reject, when set, refuses the activation instead: the operator's
	// check of that name failed, and the reason follows the token on
	// stdin (one line). The host rolls back at once.
	Reject string
}

// Args implements the command line.
func (c ConfirmCmd) Args() []string {
	args := dirArgs(VerbConfirm, c.StateDir, "")
	if c.Reject != "" {
		args = append(args, "--reject", c.Reject)
	}
	return append(args, strconv.Itoa(c.Generation))
}

// RunLockCmd is `run-lock`: the run lock held for an operator's run (see
// [WriteRunHolder] for the conversation on stdin and stdout).
type RunLockCmd struct {
	StateDir string
	Wait     time.Duration // how long to wait for another run's lock
	Lease    time.Duration // how long the lock lasts without a line
	// Drift, once the lock is taken, compares the host with its current
	// generation (store paths checked for presence) and puts the result
	// in the reply ([LockReply.Drift]): a deploy's look at drift without
	// a session and an agent process of its own. An agent that predates
	// it exits [ExitUsage].
	Drift bool
}

// Args implements the command line.
func (r RunLockCmd) Args() []string {
	args := append(dirArgs(VerbRunLock, r.StateDir, ""), "--wait", r.Wait.String(), "--lease", r.Lease.String())
	if r.Drift {
		args = append(args, "--drift")
	}
	return args
}

// RunLeaseCmd is `run-lease --run RUN --for D`: run RUN, which holds the
// host's run lock, is about to reboot the host; the lock stays its own
// across the reboot (a lease in the state directory, [RunLease]) until
// the run takes it again or D has passed. An agent that predates it exits
// [ExitUsage].
type RunLeaseCmd struct {
	StateDir string
	Run      string
	For      time.Duration
}

// Args implements the command line.
func (r RunLeaseCmd) Args() []string {
	return append(dirArgs(VerbRunLease, r.StateDir, ""), "--run", r.Run, "--for", r.For.String())
}

// ReceiveCmd is `receive`: the transfer protocol's agent side.
type ReceiveCmd struct{ StateDir string }

// Args implements the command line.
func (r ReceiveCmd) Args() []string { return dirArgs(VerbReceive, r.StateDir, "") }

// InstallSelfCmd is `install-self NARHASH`: an uploaded agent binary checks
// its own hash and registers itself as an agent store path.
type InstallSelfCmd struct {
	StateDir string
	NarHash  string
}

// Args implements the command line.
func (i InstallSelfCmd) Args() []string {
	return append(dirArgs(VerbInstallSelf, i.StateDir, ""), i.NarHash)
}

// StatusCmd is `status --json`, with Drift `status --json --drift`.
type StatusCmd struct {
	StateDir string
	Drift    bool
}

// Args implements the command line.
func (s StatusCmd) Args() []string {
	args := append(dirArgs(VerbStatus, s.StateDir, ""), "--json")
	if s.Drift {
		args = append(args, "--drift")
	}
	return args
}

// GenerationsCmd is `generations --json`.
type GenerationsCmd struct{ StateDir string }

// Args implements the command line.
func (g GenerationsCmd) Args() []string {
	return append(dirArgs(VerbGenerations, g.StateDir, ""), "--json")
}

// GCCmd is `gc --json`: Keep generations; the pushed systems' limits only
// when they differ from the agent's defaults (0), so that agents from
// before pushed roots run it too; a negative limit means none.
type GCCmd struct {
	StateDir     string
	Keep         int
	KeepPushed   int
	PushedMaxAge time.Duration
	DropPushed   bool
}

// Args implements the command line.
func (g GCCmd) Args() []string {
	args := append(dirArgs(VerbGC, g.StateDir, ""), "--json", "--keep", strconv.Itoa(g.Keep))
	if g.KeepPushed != 0 {
		args = append(args, "--keep-pushed", strconv.Itoa(max(g.KeepPushed, 0)))
	}
	if g.PushedMaxAge != 0 {
		args = append(args, "--pushed-max-age", max(g.PushedMaxAge, 0).String())
	}
	if g.DropPushed {
		args = append(args, "--drop-pushed")
	}
	return args
}

// DriftCmd is `drift --json`: the host against its current generation;
// VerifyStore rehashes the store paths instead of checking presence.
type DriftCmd struct {
	StateDir    string
	VerifyStore bool
}

// Args implements the command line.
func (d DriftCmd) Args() []string {
	args := append(dirArgs(VerbDrift, d.StateDir, ""), "--json")
	if d.VerifyStore {
		args = append(args, "--verify-store")
	}
	return args
}

// HealthCmd is `health --json`: after a boot, waits up to Wait for
// startup and the boot default's units, then runs its health checks.
type HealthCmd struct {
	StateDir string
	Wait     time.Duration
}

// Args implements the command line.
func (h HealthCmd) Args() []string {
	return append(dirArgs(VerbHealth, h.StateDir, ""), "--json", "--wait", h.Wait.String())
}

// ApplyCmd is `apply --generation N`: generation N's manifest applied
// again by its own agent (activation's rollback), under the activation
// lock its caller holds (LockHeld).
type ApplyCmd struct {
	StateDir   string
	RunDir     string
	Generation int
	LockHeld   bool
}

// Args implements the command line.
func (a ApplyCmd) Args() []string {
	args := append(dirArgs(VerbApply, a.StateDir, a.RunDir), "--generation", strconv.Itoa(a.Generation))
	if a.LockHeld {
		args = append(args, "--lock-held")
	}
	return args
}

// Help is `VERB -h`: exit 0 when the agent knows the verb, [ExitUsage]
// when it does not (agents of every version).
func Help(verb string) []string { return []string{verb, "-h"} }

func dirArgs(verb, stateDir, runDir string) []string {
	args := []string{verb, "--state-dir", orState(stateDir)}
	if runDir != "" {
		args = append(args, "--run-dir", runDir)
	}
	return args
}

func metaArgs(meta map[string]string) []string {
	var args []string
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		args = append(args, "--meta", k+"="+meta[k])
	}
	return args
}

// Agent says which deploy-agent on a host runs a command: a system's own,
// a generation's, the running one's, ... A [Command] tries a list of them
// in order.
type Agent struct {
	kind agentKind
	path string
	gen  int
}

type agentKind int

const (
	agentOfSystem agentKind = iota + 1
	agentAt
	agentOfGeneration
	agentCurrent
	agentBoot
	agentAny
)

// The agents a [Command] can run.
var (
	// CurrentAgent is the running system's agent.
	CurrentAgent = Agent{kind: agentCurrent}
	// BootAgent is the boot default's agent.
	BootAgent = Agent{kind: agentBoot}
	// AnyAgent is any agent on the host: the boot default's, the running
	// system's, any generation's, any agent store path that is valid.
	AnyAgent = Agent{kind: agentAny}
)

// AgentOfSystem is the agent a system store path brings (the one that
// activates it).
func AgentOfSystem(system string) Agent { return Agent{kind: agentOfSystem, path: system} }

// AgentAt is the agent store path p, when it is valid in the host's store.
func AgentAt(p string) Agent { return Agent{kind: agentAt, path: p} }

// AgentOfGeneration is generation n's agent.
func AgentOfGeneration(n int) Agent { return Agent{kind: agentOfGeneration, gen: n} }

// candidates are the shell words (globs included) of a's executables.
func (a Agent) candidates() []string {
	switch a.kind {
	case agentOfSystem:
		return []string{shellQuote(SystemAgent(a.path))}
	case agentAt:
		return []string{shellQuote(AgentExecutable(a.path))}
	case agentOfGeneration:
		return []string{`"$s"/profiles/system-` + strconv.Itoa(a.gen) + `-link/agent/` + AgentBin}
	case agentCurrent:
		return []string{shellQuote(SystemAgent(CurrentSystem(DefaultRunDir)))}
	case agentBoot:
		return []string{`"$s"/profiles/system/agent/` + AgentBin}
	case agentAny:
		return slices.Concat(BootAgent.candidates(), CurrentAgent.candidates(),
			[]string{`"$s"/profiles/system-*-link/agent/` + AgentBin, `"$s"/store/*-` + AgentName + `/` + AgentBin})
	}
	panic(fmt.Sprintf("agentapi: unknown agent kind %d", a.kind))
}

// Command is the command line that runs `deploy-agent ARGS...` on a host
// with the first of agents that is there, through sh: the one rule for
// which agent answers. An agent store path counts only when it is valid
// (registered in the store's metadata). When none is there, the command
// exits [ExitNoAgent] having run nothing.
func Command(stateDir string, agents []Agent, args ...string) []string {
	var words []string
	for _, a := range agents {
		words = append(words, a.candidates()...)
	}
	script := fmt.Sprintf(`s=$1; shift
for a in %s; do
	test -x "$a" || continue
	case $a in "$s"/store/*-%s/%s) d=${a%%/%s}; b=${d##*/}; test -f "$s/db/${b%%%%-*}.narinfo" || continue ;; esac
	exec "$a" "$@"
done
exit %d`, strings.Join(words, " "), AgentName, AgentBin, AgentBin, ExitNoAgent)
	return append([]string{"sh", "-c", script, "sh", orState(stateDir)}, args...)
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
