package simhost

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
)

// PushFleet is a fleet directory for push deploys to simulated hosts over
// their real sshd ([Host.StartSSHD]), and the operator who runs the real
// deploy binary on it: one role (a file, a service, a command health
// check) on every host, every host tagged "sim", host keys pinned. Set
// Dir, Deploy and Hosts, then call [PushFleet.Init].
type PushFleet struct {
	// Dir is the fleet directory (made by Init).
	Dir string
	// Deploy is the real deploy binary (deploy-agent beside it, as
	// installed).
	Deploy string
	// Hosts are the fleet's hosts.
	Hosts []*Host

	home string
}

// Init makes the fleet directory and the operator's SSH key, and writes
// hosts.hcl.
func (f *PushFleet) Init() error {
	f.home = filepath.Join(filepath.Dir(f.Dir), "push-operator")
	for _, d := range []string{f.Dir, f.home} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	blk, err := ssh.MarshalPrivateKey(priv, "operator")
	if err != nil {
		return err
	}
	if err := os.WriteFile(f.identity(), pem.EncodeToMemory(blk), 0o600); err != nil {
		return err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return err
	}
	if err := os.WriteFile(f.identity()+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		return err
	}
	var hosts strings.Builder
	for _, h := range f.Hosts {
		fmt.Fprintf(&hosts, "host %q {\n  address  = %q\n  host_key = %q\n  tags     = [\"sim\"]\n  roles    = [role.app]\n}\n\n", h.Name(), h.Addr(), h.HostKeyLine())
	}
	return os.WriteFile(filepath.Join(f.Dir, "hosts.hcl"), []byte(hosts.String()), 0o644)
}

func (f *PushFleet) identity() string { return filepath.Join(f.home, "id_ed25519") }

// AuthorizedKey is the operator's public key, an authorized_keys line for
// [Host.StartSSHD].
func (f *PushFleet) AuthorizedKey() (string, error) {
	data, err := os.ReadFile(f.identity() + ".pub")
	return strings.TrimSpace(string(data)), err
}

// Write writes the fleet's version: the file /etc/app/version holds
// version; the health check "app" reads it.
func (f *PushFleet) Write(version string) error {
	return os.WriteFile(filepath.Join(f.Dir, "role.hcl"), fmt.Appendf(nil, `role "app" {
  file "/etc/app/version" {
    content = "%s\n"
  }
  service "app" {
    exec_start = "/bin/sleep infinity"
  }
  health_check "app" {
    command  = ["sh", "-c", "test -s /etc/app/version"]
    timeout  = "5s"
    interval = "200ms"
  }
}
`, version), 0o644)
}

// Target selects every host, DIR#@sim.
func (f *PushFleet) Target() string { return f.Dir + "#@sim" }

// Command is the real deploy with args, as the operator runs it: its own
// HOME and XDG_CACHE_HOME (its store), no SSH agent, no ssh_config. A
// host command takes the operator's key with --identity (see
// [PushFleet.Push]).
func (f *PushFleet) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, f.Deploy, args...)
	cmd.Env = append(os.Environ(), "HOME="+f.home, "XDG_CACHE_HOME="+filepath.Join(f.home, "cache"), "SSH_AUTH_SOCK=")
	return cmd
}

// Push is `deploy --json --identity KEY --ssh-config none [args] DIR#@sim`:
// a push deploy to every host.
func (f *PushFleet) Push(ctx context.Context, args ...string) *exec.Cmd {
	return f.HostCommand(ctx, nil, args...)
}

// HostCommand is `deploy VERB... --json --identity KEY --ssh-config none
// [args] DIR#@sim`: a host command (status, verify, gc) to every host; no
// verb is a push deploy.
func (f *PushFleet) HostCommand(ctx context.Context, verb []string, args ...string) *exec.Cmd {
	a := slices.Concat(verb, []string{"--json", "--identity", f.identity(), "--ssh-config", "none"}, args, []string{f.Target()})
	return f.Command(ctx, a...)
}
