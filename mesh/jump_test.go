package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

// onlyDialer dials only the allowed address, so a test proves that every
// other hop was reached through a jump host.
type onlyDialer struct{ allowed string }

func (d onlyDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if addr != d.allowed {
		return nil, fmt.Errorf("test dialer: %s is not directly reachable", addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func TestProxyJump(t *testing.T) {
	jump1 := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	jump2 := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	final := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	for _, s := range []*meshtest.SSHD{jump2, final} {
		s.Authorize(jump1.ClientSigner.PublicKey())
	}
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(kh, []byte(jump1.KnownHostsLine()+"\n"+jump2.KnownHostsLine()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hop := func(s *meshtest.SSHD) string { return "root@" + s.Addr }
	wrong := mesh.FormatHostKey(randomEd25519(t))

	tests := []struct {
		name      string
		jump      string
		jumpKeys  map[string]string
		knownHost bool
		want      string // "" success, "changed", "unknown"
		wantHost  string // the host the error names
	}{
		{"pinned jump key", hop(jump1), map[string]string{jump1.Addr: jump1.PinnedKey()}, false, "", ""},
		{"jump key from known_hosts", hop(jump1), nil, true, "", ""},
		{"two hops", hop(jump1) + "," + hop(jump2), map[string]string{jump1.Addr: jump1.PinnedKey()}, true, "", ""},
		{"wrong pinned jump key", hop(jump1), map[string]string{jump1.Addr: wrong}, true, "changed", hop(jump1)},
		{"wrong key for second hop", hop(jump1) + "," + hop(jump2), map[string]string{jump2.Addr: wrong}, true, "changed", hop(jump2)},
		{"unknown jump host", hop(jump1), nil, false, "unknown", hop(jump1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig(t, jump1.ClientKeyFile)
			cfg.Dialer = onlyDialer{allowed: jump1.Addr}
			cfg.JumpHostKeys = tt.jumpKeys
			cfg.KnownHostsFiles = []string{filepath.Join(t.TempDir(), "empty")}
			if tt.knownHost {
				cfg.KnownHostsFiles = []string{kh}
			}
			target := final.Target("root")
			target.ProxyJump = tt.jump
			before := strings.Count(final.Log(), "Accepted publickey")
			cl, err := cfg.Connect(context.Background(), target)
			var (
				he *mesh.HostKeyError
				ue *mesh.UnknownHostError
			)
			switch tt.want {
			case "":
				if err != nil {
					t.Fatalf("Connect through %s = %v", tt.jump, err)
				}
				defer cl.Close()
				out, err := cl.Output(context.Background(), []string{"sh", "-c", "echo $SSH_CONNECTION"})
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
				if !strings.Contains(string(out), fmt.Sprint(final.Port)) {
					t.Errorf("SSH_CONNECTION = %q, want the final host's port %d", out, final.Port)
				}
				return
			case "changed":
				if !errors.As(err, &he) {
					t.Fatalf("Connect = %v, want *mesh.HostKeyError", err)
				}
				if he.Host != tt.wantHost {
					t.Errorf("HostKeyError.Host = %q, want %q", he.Host, tt.wantHost)
				}
			case "unknown":
				if !errors.As(err, &ue) {
					t.Fatalf("Connect = %v, want *mesh.UnknownHostError", err)
				}
				if ue.Host != tt.wantHost {
					t.Errorf("UnknownHostError.Host = %q, want %q", ue.Host, tt.wantHost)
				}
			}
			if n := strings.Count(final.Log(), "Accepted publickey"); n != before {
				t.Errorf("the final host accepted a login although a jump host failed verification")
			}
		})
	}

	// ProxyJump from ~/.ssh/config, and the final host in known_hosts.
	t.Run("ssh config", func(t *testing.T) {
		home := t.TempDir()
		if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf("Host bastion\n  HostName 127.0.0.1\n  Port %d\n  User root\n\nHost final\n  HostName 127.0.0.1\n  Port %d\n  ProxyJump bastion\n", jump1.Port, final.Port)
		if err := os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		known := jump1.KnownHostsLine() + "\n" + final.KnownHostsLine() + "\n"
		if err := os.WriteFile(filepath.Join(home, ".ssh", "known_hosts"), []byte(known), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := &mesh.Config{
			IdentityFiles: []string{jump1.ClientKeyFile},
			Getenv:        envMap(map[string]string{"HOME": home}),
			Dialer:        onlyDialer{allowed: jump1.Addr},
		}
		cl := connect(t, cfg, mesh.Target{Name: "final"})
		if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
			t.Fatalf("Run = %v", err)
		}
	})
}
