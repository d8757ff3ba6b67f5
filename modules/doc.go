// Package modules defines the built-in resource kinds of a fleet configuration
// (package, file, directory, symlink, user, group, service, timer, secret,
// sysctl, firewall, health_check, activation_script and the host basics):
// their schema, validation, merge rules and what each realizes into.
package modules
