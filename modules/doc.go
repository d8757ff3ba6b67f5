// Package modules defines the built-in resource kinds of a fleet configuration
// (package, file, directory, symlink, user, group, service, timer, secret,
// sysctl, firewall, health_check, activation_script and the host basics):
// their schema, validation, merge rules and what each realizes into.
//
// # Kinds
//
// [Kinds] lists every [Kind]: its attributes with HCL types and merge rules,
// nested blocks, a Check that validates a merged [Resource] with
// diagnostics pointing at the offending attribute, and a Realize function
// that adds the kind's resources to the manifest. Each kind is defined in
// one place, a constructor in a kind_*.go file; adding a kind means writing
// that constructor and listing it in [Kinds].
//
// # Merging
//
// [Decode] evaluates one block into a [Definition]; [MergeDefinitions]
// merges every definition of one kind and name: the highest [Priority]
// wins, set-like attributes unite, maps unite, and any other attribute set
// twice to different values is a conflict that names both places.
//
// # Realization
//
// [Realizer] turns a host's [Config] into a
// [github.com/declarative/deploy/manifest.Manifest], calling every kind's
// Realize in [Kinds] order with a [Realization] and storing contents
// through the small [Objects] interface; [PackageBuilder] builds go
// packages reproducibly, copies path packages and fetches url packages
// pinned by the [Lock] (deploy.lock).
package modules
