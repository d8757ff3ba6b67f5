// Package fleet is what a run does to a fleet: the fleet policy of every
// host command of the operator. It decides which hosts, in which batches,
// how many at once, when to stop and what to roll back; it speaks to each
// host through package agentclient and builds with package builder.
//
// # The session
//
// A [Session] loads a fleet and selects hosts, builds their systems (one
// fan-out, [Parallelism].Build at once), reaches each host the way the fleet
// says (direct SSH, ProxyJump, or a tailnet node started once per run; one
// [agentclient.Client] per host), takes the run lock on every host it
// changes, applies the rollout policy of the selected deployment, and turns
// everything into one stream of [Event]s that begins with run.start and
// ends with run.done. Each host command is a method: [Session.Deploy],
// [Session.Build], [Session.Rollback], [Session.Generations],
// [Session.Status] ([Session.StatusWith]), [Session.GC], [Session.Exec],
// [Session.Diff], [Session.Verify] (drift), [Session.Reboot] (rolling),
// [Session.Copy], and pull mode's [Session.Publish],
// [Session.ChannelRollback] and [Session.ChannelStatus], which contact no
// host. Each returns a [Report] with every host's [Result]; a run in which
// some host did not end well is a *[RunError], whose [Report.Worst] the CLI
// maps to its exit code. A configuration or build error is a
// *[ConfigError], a bad selection a *[UsageError].
//
// # Rollout
//
// [Session.Deploy] runs a [Runner]: batches (a canary batch first, then
// batch_size, see [Batches]), max_failures, rollback = "all", per-phase
// parallelism, no-op detection, a look at drift before the copy (a drifted
// host's unchanged system is applied again), and with boot mode a reboot
// per host. The Runner acts on hosts by name through [HostOps], with the
// optional [DriftChecker] and [Rebooter]; the real one is a set of agent
// clients, tests use scripted ones.
//
// # Results
//
// What an error means for its host is decided in one place: [HostFailure]
// when a HostOps says so, else [agentclient.Classify]. Hosts are fanned out
// in one way (package internal/fanout): at most a limit at once, and no
// host starts once the run is interrupted.
package fleet
