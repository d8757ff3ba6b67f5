// Package builder loads a fleet directory of HCL files, evaluates the
// configuration of each selected host (roles and modules merged) and realizes
// it as a system closure in the local store.
//
// # Determinism
//
// A build reads only declared inputs: files inside the fleet directory, inputs
// pinned by deploy.lock, and nothing from the environment, the clock, the umask
// or the locale. The same inputs give a bit-identical system path.
package builder
