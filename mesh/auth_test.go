package mesh_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

// serveAgent serves an in-memory ssh-agent keyring on a unix socket and
// returns the socket's path.
func serveAgent(t *testing.T, keys ...any) string {
	t.Helper()
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				agent.ServeAgent(kr, c)
			}()
		}
	}()
	return sock
}

// newKey returns a fresh ed25519 key, written to a file (encrypted with
// passphrase, if not empty) whose path is returned too.
func newKey(t *testing.T, passphrase string) (ed25519.PrivateKey, ssh.PublicKey, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, s.PublicKey(), path
}

func TestAuth(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	agentPriv, agentPub, _ := newKey(t, "")
	s.Authorize(agentPub)
	encPriv, encPub, encFile := newKey(t, "correct horse")
	s.Authorize(encPub)
	_, _, unauthorized := newKey(t, "")

	tests := []struct {
		name      string
		files     []string
		agentKeys []any
		wantErr   string // substring of an auth-phase error; "" = success
	}{
		{"key file", []string{s.ClientKeyFile}, nil, ""},
		{"agent", nil, []any{agentPriv}, ""},
		{"encrypted key, agent holds it", []string{encFile}, []any{encPriv}, ""},
		{"encrypted key, no agent", []string{encFile}, nil, "passphrase-protected"},
		{"encrypted key, agent without it", []string{encFile}, []any{randomPriv(t)}, "passphrase-protected"},
		{"unauthorized key", []string{unauthorized}, nil, "unable to authenticate"},
		{"no keys at all", nil, nil, "no usable private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"HOME": t.TempDir()}
			if tt.agentKeys != nil {
				env["SSH_AUTH_SOCK"] = serveAgent(t, tt.agentKeys...)
			}
			var logs strings.Builder
			cfg := &mesh.Config{IdentityFiles: tt.files, Getenv: envMap(env), Logf: func(f string, a ...any) {
				t.Logf(f, a...)
				logs.WriteString(f)
			}}
			cl, err := cfg.Connect(context.Background(), s.Target("root"))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Connect = %v", err)
				}
				defer cl.Close()
				if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
					t.Fatalf("Run(true) = %v", err)
				}
				return
			}
			var ue *mesh.UnreachableError
			if !errors.As(err, &ue) || ue.Phase != mesh.PhaseAuth {
				t.Fatalf("Connect = %v, want *mesh.UnreachableError in phase auth", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Connect error %q does not contain %q", err, tt.wantErr)
			}
			if strings.Contains(tt.wantErr, "passphrase") && !strings.Contains(err.Error(), encFile) {
				t.Errorf("Connect error %q does not name the key file %q", err, encFile)
			}
		})
	}
}

func randomPriv(t *testing.T) ed25519.PrivateKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func TestSSHConfig(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	home := t.TempDir()
	sshDir := filepath.Join(home, ".ssh")
	if err := os.MkdirAll(sshDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(s.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(sshDir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("custom_key", string(key))
	write("known_hosts", s.KnownHostsLine()+"\n")
	write("config", `
Host web1 web1.example
    HostName 127.0.0.1
    Port `+strings.TrimPrefix(s.Addr, "127.0.0.1:")+`
    User root
    IdentityFile ~/.ssh/custom_key

Host *.internal
    HostName 127.0.0.1
    Port `+strings.TrimPrefix(s.Addr, "127.0.0.1:")+`
    IdentityFile %d/.ssh/custom_key

Host *
    User nobody-here
`)
	cfg := &mesh.Config{Getenv: envMap(map[string]string{"HOME": home}), Logf: t.Logf}
	tests := []struct {
		name   string
		target mesh.Target
		want   string // remote `id -un`
	}{
		{"name only", mesh.Target{Name: "web1"}, "root"},
		{"HostName overrides address", mesh.Target{Name: "web1.example", Address: "192.0.2.1"}, "root"},
		{"pattern and explicit user", mesh.Target{Name: "db.internal", User: "root"}, "root"},
		{"address lookup", mesh.Target{Name: "fleet-name", Address: "web1"}, "root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := connect(t, cfg, tt.target)
			out, err := cl.Output(context.Background(), []string{"id", "-un"})
			if err != nil {
				t.Fatalf("Run(id -un) = %v", err)
			}
			if got := strings.TrimSpace(string(out)); got != tt.want {
				t.Errorf("id -un = %q, want %q", got, tt.want)
			}
		})
	}
	// The catch-all User applies when nothing more specific does.
	_, err = cfg.Connect(context.Background(), mesh.Target{Name: "db.internal"})
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("Connect as the catch-all user nobody-here = %v, want an auth failure", err)
	}
	// "none" disables the file.
	none := *cfg
	none.SSHConfigFile = "none"
	if _, err := none.Connect(context.Background(), mesh.Target{Name: "web1"}); err == nil {
		t.Errorf("Connect(web1) with SSHConfigFile none succeeded, want a failure")
	}
}
