// Package builder loads a fleet directory of HCL files, evaluates the
// configuration of each selected host (roles and modules merged) and realizes
// it as a system closure in the local store.
//
// # Loading and selecting
//
// [Load] parses every *.hcl file of a fleet directory into a [Fleet]: hosts,
// roles (parametrised by variable blocks), deployments and defaults, plus
// deploy.lock. [ParseSelector] and [Fleet.Select] turn ".#web1",
// ".#@tag" or ".#deployment" into hosts.
//
// # Evaluation
//
// [Fleet.Evaluate] applies a host's roles and evaluates its resources in
// three phases (packages, secrets, the rest, because later ones refer to
// earlier ones through package.NAME and secret.NAME.path), then merges the
// definitions of each resource like NixOS modules (see
// [github.com/declarative/deploy/modules.MergeDefinitions]) and validates
// them. Problems are hcl.Diagnostics with source ranges, never plain errors.
// [Check] does this for every host without building anything.
//
// # Realization
//
// [Builder.Build] realizes a host: every file content, package, unit file,
// secret ciphertext and script becomes a store path of its own, with the
// store paths it mentions as references; then the system path
// <hash>-system-<host> holds manifest.json (package
// [github.com/declarative/deploy/manifest]), an etc/ tree, units/ and an
// agent symlink to the deploy-agent's store path. Objects are assembled and
// hashed in memory, so a rebuild that changes nothing writes nothing.
//
// # Determinism
//
// A build reads only declared inputs: files inside the fleet directory, inputs
// pinned by deploy.lock, and nothing from the environment, the clock, the umask
// or the locale. The same inputs give a bit-identical system path
// (TestBuildReproducible builds every example twice under different
// conditions and compares).
package builder
