// Package deploy orchestrates a deployment: selection, batches, parallelism,
// the per-host state machine (eval, build, copy, activate, confirm), fleet
// rollback, locks, history and the event stream the CLI renders.
package deploy
