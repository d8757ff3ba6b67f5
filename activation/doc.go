// Package activation runs on the target: it manages generations, the
// activation lock, applying a system manifest (users, files, secrets, units),
// unit diffing, health checks and the magic-rollback watchdog.
// docs/activation.md is the operator's description; this is the library's.
//
// # Layout
//
// A [Layout] names the directories: StateDir (/var/lib/deploy: store, db,
// profiles with the generation links system-N-link and their metadata
// system-N.json, the boot default profiles/system, log/ with one log and
// result per activation, applied.json) and RunDir (/run/deploy, mode 0700:
// current-system, state.json, lock, confirm/, requests/).
//
// # Applying
//
// [Apply] makes the machine match a manifest given the manifest it
// matches now ([Layout.MachineManifest], which accounts for interrupted
// applications), in the order of docs/manifest.md, and records its progress
// in applied.json so that a rollback or the boot unit can finish or undo
// it. [CheckHealth] runs the health checks.
//
// # Activations
//
// A [Worker] runs one [Request] under the lock ([Layout.TryLock]): it
// creates the generation, switches current-system, applies, checks, waits
// for the confirmation ([Layout.Confirm]) and moves the boot default, or
// re-applies the previous generation with that generation's own agent and
// marks the new one failed. [Worker.Boot] re-applies the boot default at
// boot. [Layout.Status] and [Layout.Generations] report;
// [Layout.RollbackTarget] picks the generation a rollback activates, and
// [Layout.GC] removes old generations and what only they needed.
//
// # Processes
//
// deploy-agent runs an activation in three processes, each this package's:
// [Start] in the operator's session (it writes the request, starts the
// worker detached from the session and follows the activation's log until
// it awaits confirmation or has a [Result]); [RunWorker], the detached
// worker (a transient systemd unit, or a setsid process), which runs the
// [Worker]; and [RunWatchdog], the watchdog the worker arms before it
// changes anything (see [Worker.Watch]).
//
// # Day-2 checks
//
// [Layout.Drift] compares the machine with its current generation's
// manifest without changing anything (deploy verify); [Layout.Health]
// waits for the boot default's units and runs its health checks (what a
// rolling reboot waits for).
package activation
