package main

import (
	"flag"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/mesh"
)

// fleetSSHFlags say how fleet commands (deploy, exec, status, ...) reach
// hosts. Hosts bring their own address, user, port, pinned key and sudo
// from the fleet; these flags add the operator's side.
type fleetSSHFlags struct {
	knownHosts stringList
	identities stringList
	sshConfig  string
	tofu       bool
}

func (f *fleetSSHFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.knownHosts, "known-hosts", "known_hosts `file` for hosts without a pinned host_key (repeatable; default ~/.ssh/known_hosts)")
	fs.Var(&f.identities, "identity", "private key `file` (repeatable; ssh-agent and ~/.ssh/id_* are used too)")
	fs.StringVar(&f.sshConfig, "ssh-config", "", "ssh config `file` (default ~/.ssh/config; \"none\" to ignore)")
	fs.BoolVar(&f.tofu, "trust-on-first-use", false, "accept and record unknown host keys (never a changed one)")
}

func (f *fleetSSHFlags) config(e *env) *mesh.Config {
	return &mesh.Config{
		IdentityFiles:   f.identities,
		KnownHostsFiles: f.knownHosts,
		SSHConfigFile:   f.sshConfig,
		TrustOnFirstUse: f.tofu,
		Getenv:          e.getenv,
	}
}

// meshTarget is how to reach a fleet host.
func meshTarget(h *builder.Host) mesh.Target {
	return mesh.Target{Name: h.Name, Address: h.Address, Port: h.Port, User: h.SSHUser, HostKey: h.HostKey, Sudo: h.Sudo}
}
