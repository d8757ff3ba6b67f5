// Package deploy is the operator's side of a deployment: one fleet session
// per run of a host command, and the pieces it is made of.
//
// # The session
//
// A [Session] loads a fleet and selects hosts, builds their systems (one
// fan-out, [Parallelism].Build at once), reaches each host the way the fleet
// says (direct SSH, ProxyJump, or a tailnet node started once per run), takes
// the run lock on every host it changes, applies the rollout policy of the
// selected deployment, and turns everything into one stream of [Event]s that
// begins with run.start and ends with run.done. Each host command is a method:
// [Session.Deploy], [Session.Build], [Session.Rollback],
// [Session.Generations], [Session.Status] ([Session.StatusWith]),
// [Session.GC], [Session.Exec], [Session.Diff], [Session.Verify] (drift),
// [Session.Reboot] (rolling) and [Session.Copy]. Each returns a [Report] with every host's
// [Result]; a run in which some host did not end well is a *[RunError], whose
// [Report.Worst] the CLI maps to its exit code. A configuration or build error
// is a *[ConfigError], a bad selection a *[UsageError].
//
// # Rollout
//
// [Session.Deploy] runs a [Runner]: batches (a canary batch first, then
// batch_size, see [Batches]), max_failures, rollback = "all", per-phase
// parallelism, no-op detection, a look at drift before the copy (a drifted
// host's unchanged system is applied again), and with boot mode a reboot
// per host. The Runner acts on hosts through [HostOps], with the optional
// [DriftChecker] and [Rebooter]; [SSHOps] is the real one, tests use
// scripted ones.
//
// # Reaching hosts
//
// [Copy] sends the closure a host lacks over the agent's receive protocol,
// bootstrapping the agent when missing. [Activate] runs an activation and
// confirms it over a new connection. The run lock (see [HostOps].Lock) is
// held by the host's deploy-agent for the whole run, in an SSH session the
// operator keeps alive; a host gives a dead run's lock up by itself.
//
// What the agent prints (activation results, status, generations, gc,
// drift, health, run lock replies) is defined in package agentapi,
// versioned.
package fleet
