package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

// TestSSHConfigStrictHostKeyChecking: ssh_config can make host key
// checking stricter than mesh's default, never weaker.
func TestSSHConfigStrictHostKeyChecking(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	tests := []struct {
		strict  string // StrictHostKeyChecking in ssh_config ("" for none)
		tofu    bool   // Config.TrustOnFirstUse (--trust-on-first-use)
		trusted bool   // the unknown key is accepted and recorded
	}{
		{"", false, false},
		{"", true, true},
		{"accept-new", false, false},
		{"no", false, false},
		{"accept-new", true, true},
		{"yes", true, false},
		{"ask", true, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s,tofu=%v", tt.strict, tt.tofu), func(t *testing.T) {
			dir := t.TempDir()
			conf := "Host target\n  HostName 127.0.0.1\n"
			if tt.strict != "" {
				conf += "  StrictHostKeyChecking " + tt.strict + "\n"
			}
			writeFile(t, filepath.Join(dir, "config"), conf, 0o600)
			kh := filepath.Join(dir, "known_hosts")
			cfg := baseConfig(t, s.ClientKeyFile)
			cfg.SSHConfigFile = filepath.Join(dir, "config")
			cfg.KnownHostsFiles = []string{kh}
			cfg.TrustOnFirstUse = tt.tofu
			cl, err := cfg.Connect(context.Background(), mesh.Target{Name: "target", Port: s.Port, User: "root"})
			var ue *mesh.UnknownHostError
			switch {
			case tt.trusted && err != nil:
				t.Fatalf("Connect = %v, want the key accepted on first use", err)
			case tt.trusted:
				cl.Close()
				if data, _ := os.ReadFile(kh); !strings.Contains(string(data), "[127.0.0.1]:") {
					t.Errorf("known_hosts after trust on first use = %q, want the host recorded", data)
				}
			case !errors.As(err, &ue):
				t.Fatalf("Connect = %v, want an UnknownHostError", err)
			}
		})
	}
}

// TestSSHConfigIdentitiesOnly: with IdentitiesOnly, the agent's keys are
// not offered unless an IdentityFile names them.
func TestSSHConfigIdentitiesOnly(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	authorized, authorizedPub, _ := newKey(t, "")
	s.Authorize(authorizedPub)
	_, _, otherFile := newKey(t, "")
	sock := serveAgent(t, authorized)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config"), fmt.Sprintf(`
Host only-other
    HostName 127.0.0.1
    IdentitiesOnly yes
    IdentityFile %[1]s
Host other-and-agent
    HostName 127.0.0.1
    IdentityFile %[1]s
`, otherFile), 0o600)
	cfg := &mesh.Config{
		SSHConfigFile:   filepath.Join(dir, "config"),
		KnownHostsFiles: []string{writeKnownHosts(t, s)},
		Getenv:          envMap(map[string]string{"HOME": t.TempDir(), "SSH_AUTH_SOCK": sock}),
		Logf:            t.Logf,
	}
	ctx := context.Background()
	// Without IdentitiesOnly the agent's (authorized) key is offered too.
	cl, err := cfg.Connect(ctx, mesh.Target{Name: "other-and-agent", Port: s.Port, User: "root"})
	if err != nil {
		t.Fatalf("Connect without IdentitiesOnly = %v", err)
	}
	cl.Close()
	// With it, only the unauthorized file's key: authentication fails.
	_, err = cfg.Connect(ctx, mesh.Target{Name: "only-other", Port: s.Port, User: "root"})
	var ue *mesh.UnreachableError
	if !errors.As(err, &ue) || ue.Phase != mesh.PhaseAuth {
		t.Fatalf("Connect with IdentitiesOnly = %v, want an authentication failure", err)
	}
}

func writeKnownHosts(t *testing.T, s *meshtest.SSHD) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "known_hosts")
	writeFile(t, p, s.KnownHostsLine()+"\n", 0o600)
	return p
}
