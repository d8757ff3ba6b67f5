package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/tailnet"
)

// sshFlags say how to reach and trust a host given on the command line:
// the operator's side shared with fleet commands, plus what a fleet's host
// block would say.
type sshFlags struct {
	fleetSSHFlags
	hostKey string
	sudo    bool
	jump    string
}

func runCopy(ctx context.Context, e *env, args []string) error {
	var sf storeFlags
	var sshf sshFlags
	var to, agent, remoteState string
	var asJSON, compress bool
	fs := newFlags(e, "copy", "STORE-PATH... --to [USER@]HOST[:PORT]")
	sf.register(fs)
	fs.StringVar(&to, "to", "", "the target `[user@]host[:port]`")
	fs.StringVar(&agent, "agent", "", "deploy-agent `binary` to bootstrap (default: beside deploy)")
	sshf.fleetSSHFlags.register(fs)
	fs.StringVar(&sshf.hostKey, "host-key", "", "the target's pinned host `key` (authorized_keys format)")
	fs.StringVar(&sshf.jump, "jump", "", "ProxyJump `hops` ([user@]host[:port],...)")
	fs.BoolVar(&sshf.sudo, "sudo", false, "run the agent through sudo (password from --ask-sudo-password or DEPLOY_SUDO_PASSWORD)")
	fs.BoolVar(&compress, "compress", false, "zstd-compress the stream (for slow links)")
	fs.StringVar(&remoteState, "remote-state-dir", agentapi.DefaultStateDir, "the agent's state `directory` on the target; its store/ must be --store-dir")
	fs.BoolVar(&asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	var tf tailnetFlags
	tf.register(fs)
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if to == "" {
		return usageErrorf("copy: --to is required")
	}
	if err := tf.check(); err != nil {
		return err
	}
	user, host, port, err := mesh.ParseHostSpec(to)
	if err != nil {
		return &exitError{code: ExitUsage, err: err}
	}
	local, err := sf.open(e)
	if err != nil {
		return err
	}
	bin := findAgent(agent)
	if bin == "" {
		return withHint(errors.New("no deploy-agent beside deploy"), ExitUsage, "install deploy-agent next to deploy, or pass --agent PATH")
	}
	agentInfo, err := local.AddAgent(ctx, bin)
	if err != nil {
		return err
	}
	h := &builder.Host{Name: host, Address: host, Port: port, SSHUser: user, HostKey: sshf.hostKey, ProxyJump: sshf.jump,
		Sudo: sshf.sudo, Transport: tf.transport}
	v := newView(e, asJSON, true)
	s := &fleet.Session{Hosts: []*builder.Host{h}, Command: "copy", Mesh: sshf.config(e), StateDir: remoteState, Emit: v.Event,
		Tailnet: tf.node(e)}
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Copy(ctx, local, pos, agentInfo.Path, compress) })
	if err == nil && !asJSON {
		if p := rep.Hosts[host].Push; p != nil {
			fmt.Fprintf(e.stderr, "deploy: %s: %d paths in the closure, %d were missing, %d NAR bytes sent\n", host, p.Paths, p.Missing, p.Bytes)
		}
	}
	return err
}

// tailnetFlags choose the transport: direct TCP, or an embedded tailnet node.
type tailnetFlags struct {
	transport, controlURL, authKeyFile, stateDir, hostname string
}

func (f *tailnetFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.transport, "transport", "ssh", "how to reach the host: `ssh` (direct TCP) or tailscale (an embedded tailnet node)")
	f.registerNode(fs)
}

// registerNode registers the flags of the tailnet node only (fleet
// commands take the transport from the fleet).
func (f *tailnetFlags) registerNode(fs *flag.FlagSet) {
	fs.StringVar(&f.controlURL, "tailnet-control-url", "", "tailnet coordination server `URL` (default $TS_CONTROL_URL, else Tailscale's; Headscale works)")
	fs.StringVar(&f.authKeyFile, "tailnet-authkey-file", "", "`file` holding the tailnet auth key (default $TS_AUTHKEY)")
	fs.StringVar(&f.stateDir, "tailnet-state-dir", "", "the tailnet node's state `directory` (default ~/.config/deploy/tailnet/default)")
	fs.StringVar(&f.hostname, "tailnet-hostname", "", "the operator's `name` on the tailnet (default deploy-HOSTNAME)")
}

// check validates the flags before anything is done.
func (f *tailnetFlags) check() error {
	switch f.transport {
	case "ssh":
		if f.controlURL != "" || f.authKeyFile != "" || f.stateDir != "" || f.hostname != "" {
			return usageErrorf("copy: --tailnet-* flags need --transport tailscale")
		}
	case "tailscale":
	default:
		return usageErrorf("copy: --transport %q: want ssh or tailscale", f.transport)
	}
	return nil
}

// node returns what a fleet session starts the tailnet node with (when a
// host it reaches has transport "tailscale"): the node and its stop.
func (f *tailnetFlags) node(e *env) func(context.Context) (mesh.Dialer, func(), error) {
	return func(ctx context.Context) (mesh.Dialer, func(), error) {
		tn, err := f.start(ctx, e)
		if err != nil {
			return nil, nil, err
		}
		return tn, func() { tn.Close() }, nil
	}
}

// start starts the tailnet node.
func (f *tailnetFlags) start(ctx context.Context, e *env) (*tailnet.Transport, error) {
	tn := &tailnet.Transport{
		Dir:         f.stateDir,
		Hostname:    f.hostname,
		ControlURL:  f.controlURL,
		AuthKeyFile: f.authKeyFile,
		Getenv:      e.getenv,
		Logf:        func(format string, a ...any) { fmt.Fprintf(e.stderr, "deploy: "+format+"\n", a...) },
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := tn.Start(sctx); err != nil {
		tn.Close()
		return nil, withHint(err, ExitUnreachable, "set TS_AUTHKEY or --tailnet-authkey-file, and check --tailnet-control-url")
	}
	return tn, nil
}
