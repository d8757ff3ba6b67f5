package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/mesh"
	"golang.org/x/term"
)

// fleetSSHFlags say how fleet commands (deploy, exec, status, ...) reach
// hosts. Hosts bring their own address, user, port, pinned key and sudo
// from the fleet; these flags add the operator's side.
type fleetSSHFlags struct {
	knownHosts stringList
	identities stringList
	sshConfig  string
	tofu       bool
	askSudo    bool
}

func (f *fleetSSHFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.knownHosts, "known-hosts", "known_hosts `file` for hosts without a pinned host_key (repeatable; default ~/.ssh/known_hosts)")
	fs.Var(&f.identities, "identity", "private key `file` (repeatable; ssh-agent and ~/.ssh/id_* are used too)")
	fs.StringVar(&f.sshConfig, "ssh-config", "", "ssh config `file` (default ~/.ssh/config; \"none\" to ignore)")
	fs.BoolVar(&f.tofu, "trust-on-first-use", false, "accept and record unknown host keys (never a changed one)")
	fs.BoolVar(&f.askSudo, "ask-sudo-password", false, "ask once on the terminal (no echo) for the sudo password used for every host; kept in memory only")
}

// config returns the mesh configuration. With --ask-sudo-password the
// password is asked for here, once, before any host is contacted.
func (f *fleetSSHFlags) config(e *env) *mesh.Config {
	c := &mesh.Config{
		IdentityFiles:   f.identities,
		KnownHostsFiles: f.knownHosts,
		SSHConfigFile:   f.sshConfig,
		TrustOnFirstUse: f.tofu,
		Getenv:          e.getenv,
	}
	if f.askSudo {
		pw, err := askPassword(e, "deploy: sudo password (for every host): ")
		if err != nil {
			// Hosts whose sudo needs no password still work; the others
			// fail with this error.
			fmt.Fprintf(e.stderr, "deploy: %v\n", err)
		}
		c.SudoPassword = func(context.Context, string) (string, error) {
			if err != nil {
				return "", err
			}
			return pw, nil
		}
	}
	return c
}

// askPassword prompts on the terminal (/dev/tty, not stdin or stderr) and
// reads a line with echo off. The password stays in memory.
func askPassword(e *env, prompt string) (string, error) {
	open := e.openTTY
	if open == nil {
		open = func() (*os.File, error) { return os.OpenFile("/dev/tty", os.O_RDWR, 0) }
	}
	tty, err := open()
	if err != nil {
		return "", fmt.Errorf("--ask-sudo-password: no terminal to ask on: %w", err)
	}
	defer tty.Close()
	if !term.IsTerminal(int(tty.Fd())) {
		return "", errors.New("--ask-sudo-password: no terminal to ask on")
	}
	fmt.Fprint(tty, prompt)
	pw, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprint(tty, "\r\n")
	if err != nil {
		return "", fmt.Errorf("--ask-sudo-password: read the password: %w", err)
	}
	if len(pw) == 0 {
		return "", errors.New("--ask-sudo-password: empty password")
	}
	return string(pw), nil
}

// hostFlags are what every command that reaches fleet hosts shares: how to
// reach them (SSH, the tailnet node for hosts with transport =
// "tailscale"), where the agent keeps its state, and --json.
type hostFlags struct {
	ssh         fleetSSHFlags
	tailnet     tailnetFlags
	asJSON      bool
	remoteState string
}

func (hf *hostFlags) register(fs *flag.FlagSet) {
	hf.ssh.register(fs)
	hf.tailnet.registerNode(fs)
	fs.BoolVar(&hf.asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	fs.StringVar(&hf.remoteState, "remote-state-dir", agentapi.DefaultStateDir, "the agent's state `directory` on targets")
}

// session returns the fleet session of a host command over targets, its
// events going to v and its diagnostics to stderr. The caller opens it.
func (hf *hostFlags) session(e *env, command string, targets []string, v view.View) *fleet.Session {
	return &fleet.Session{
		Targets:     targets,
		Command:     command,
		Mesh:        hf.ssh.config(e),
		StateDir:    hf.remoteState,
		Emit:        v.Event,
		Diagnostics: e.printDiags,
		Tailnet:     hf.tailnet.node(e),
	}
}

// runSession opens s, runs the command, closes s and the view (so that
// the view's last lines come before what the caller prints), and returns
// the command's report and error.
func runSession(s *fleet.Session, v view.View, run func() (*fleet.Report, error)) (*fleet.Report, error) {
	defer v.Close()
	defer s.Close()
	if err := s.Open(); err != nil {
		return nil, err
	}
	rep, err := run()
	s.Close()
	v.Close()
	return rep, err
}
