package mesh_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

func randomEd25519(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randomECDSA(t *testing.T) ssh.PublicKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestPinnedHostKey(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	wrong := randomEd25519(t)
	tests := []struct {
		name    string
		pinned  ssh.PublicKey
		wantErr bool
	}{
		{"ed25519 matches", s.HostKeys[0], false},
		{"ecdsa matches", s.HostKeys[1], false},
		{"ed25519 mismatch", wrong, true},
		{"pinned ecdsa but other key", randomECDSA(t), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig(t, s.ClientKeyFile)
			target := s.Target("root")
			target.HostKey = mesh.FormatHostKey(tt.pinned)
			before := strings.Count(s.Log(), "Accepted publickey")
			cl, err := cfg.Connect(context.Background(), target)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Connect with pinned %s = %v", tt.pinned.Type(), err)
				}
				defer cl.Close()
				if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
					t.Fatalf("Run(true) = %v", err)
				}
				return
			}
			var he *mesh.HostKeyError
			if !errors.As(err, &he) {
				if cl != nil {
					cl.Close()
				}
				t.Fatalf("Connect with a wrong pinned key = %v, want *mesh.HostKeyError", err)
			}
			want, got := ssh.FingerprintSHA256(tt.pinned), ssh.FingerprintSHA256(s.HostKey)
			if tt.pinned.Type() == ssh.KeyAlgoECDSA256 {
				got = ssh.FingerprintSHA256(s.HostKeys[1])
			}
			if he.Want != want || he.Got != got {
				t.Errorf("HostKeyError{Want: %q, Got: %q}, want {%q, %q}", he.Want, he.Got, want, got)
			}
			for _, fp := range []string{want, got} {
				if !strings.Contains(err.Error(), fp) {
					t.Errorf("error %q does not name fingerprint %s", err, fp)
				}
			}
			if n := strings.Count(s.Log(), "Accepted publickey"); n != before {
				t.Errorf("sshd accepted a login after a host key mismatch:\n%s", s.Log())
			}
		})
	}
}

func TestKnownHosts(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	addr := knownhosts.Normalize(s.Addr)
	line := func(k ssh.PublicKey) string { return knownhosts.Line([]string{addr}, k) }
	tests := []struct {
		name    string
		content string
		want    string // "" (success), "changed", "unknown", "revoked"
	}{
		{"plain", line(s.HostKey), ""},
		{"hashed", knownhosts.HashHostname(addr) + " " + s.PinnedKey(), ""},
		{"only ecdsa known", line(s.HostKeys[1]), ""},
		{"among others", line(randomEd25519(t)) + "\n" + line(s.HostKey), ""},
		{"wildcard pattern", "[127.0.0.*]:" + strings.TrimPrefix(addr, "[127.0.0.1]:") + " " + s.PinnedKey(), ""},
		{"changed", line(randomEd25519(t)), "changed"},
		{"changed, hashed", knownhosts.HashHostname(addr) + " " + mesh.FormatHostKey(randomEd25519(t)), "changed"},
		{"changed to another type", line(randomECDSA(t)), "changed"},
		{"other host only", knownhosts.Line([]string{"[127.0.0.1]:1"}, s.HostKey), "unknown"},
		{"empty", "", "unknown"},
		{"revoked", "@revoked * " + s.PinnedKey() + "\n" + line(s.HostKey), "revoked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig(t, s.ClientKeyFile)
			kh := filepath.Join(t.TempDir(), "known_hosts")
			if err := os.WriteFile(kh, []byte(tt.content+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg.KnownHostsFiles = []string{kh}
			target := s.Target("root")
			target.HostKey = ""
			cl, err := cfg.Connect(context.Background(), target)
			if cl != nil {
				defer cl.Close()
			}
			var (
				he *mesh.HostKeyError
				ue *mesh.UnknownHostError
				re *mesh.RevokedHostKeyError
			)
			switch tt.want {
			case "":
				if err != nil {
					t.Fatalf("Connect = %v, want success", err)
				}
				if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
					t.Fatalf("Run(true) = %v", err)
				}
			case "changed":
				if !errors.As(err, &he) {
					t.Fatalf("Connect = %v, want *mesh.HostKeyError", err)
				}
				if !strings.Contains(err.Error(), kh+":1") {
					t.Errorf("error %q does not name the known_hosts line", err)
				}
			case "unknown":
				if !errors.As(err, &ue) {
					t.Fatalf("Connect = %v, want *mesh.UnknownHostError", err)
				}
				if ue.Fingerprint != ssh.FingerprintSHA256(s.HostKey) {
					t.Errorf("UnknownHostError.Fingerprint = %q, want %q", ue.Fingerprint, ssh.FingerprintSHA256(s.HostKey))
				}
				if h := ue.Hint(); !strings.Contains(h, "deploy keyscan "+s.Addr) {
					t.Errorf("Hint() = %q, want it to suggest `deploy keyscan %s`", h, s.Addr)
				}
			case "revoked":
				if !errors.As(err, &re) {
					t.Fatalf("Connect = %v, want *mesh.RevokedHostKeyError", err)
				}
			}
		})
	}
}

func TestTrustOnFirstUse(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	cfg := baseConfig(t, s.ClientKeyFile)
	kh := filepath.Join(t.TempDir(), "ssh", "known_hosts")
	if err := os.MkdirAll(filepath.Dir(kh), 0o700); err != nil {
		t.Fatal(err)
	}
	other := knownhosts.Line([]string{"other.example"}, randomEd25519(t)) // no trailing newline on purpose
	if err := os.WriteFile(kh, []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.KnownHostsFiles = []string{kh, filepath.Join(t.TempDir(), "absent")}
	target := s.Target("root")
	target.HostKey = ""

	// Without the flag: unknown, and nothing recorded.
	if _, err := cfg.Connect(context.Background(), target); !errors.As(err, new(*mesh.UnknownHostError)) {
		t.Fatalf("Connect without TrustOnFirstUse = %v, want *mesh.UnknownHostError", err)
	}
	// With it: accepted and appended.
	tofu := *cfg
	tofu.TrustOnFirstUse = true
	connect(t, &tofu, target).Close()
	b, err := os.ReadFile(kh)
	if err != nil {
		t.Fatal(err)
	}
	want := other + "\n" + knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, s.HostKey) + "\n"
	if string(b) != want {
		t.Errorf("known_hosts after TOFU = %q, want %q", b, want)
	}
	if fi, err := os.Stat(kh); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("known_hosts mode after TOFU = %v, %v; want 0644 kept", fi.Mode(), err)
	}
	// Now known without the flag.
	connect(t, cfg, target).Close()

	// A changed key is never trusted, flag or not.
	if err := os.WriteFile(kh, []byte(knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, randomEd25519(t))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tofu.Connect(context.Background(), target); !errors.As(err, new(*mesh.HostKeyError)) {
		t.Fatalf("Connect with TrustOnFirstUse to a changed key = %v, want *mesh.HostKeyError", err)
	}
}

func TestKeyscan(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	keys, err := mesh.Keyscan(context.Background(), nil, s.Host, s.Port)
	if err != nil {
		t.Fatalf("Keyscan = %v", err)
	}
	var got, want []string
	for _, k := range keys {
		got = append(got, mesh.FormatHostKey(k))
	}
	for _, k := range s.HostKeys {
		want = append(want, mesh.FormatHostKey(k))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Keyscan = %q, want %q (ed25519 first)", got, want)
	}

	// Nothing listens: a dial error.
	s.Stop()
	_, err = mesh.Keyscan(context.Background(), nil, s.Host, s.Port)
	var ue *mesh.UnreachableError
	if !errors.As(err, &ue) || ue.Phase != mesh.PhaseDial {
		t.Errorf("Keyscan of a closed port = %v, want *mesh.UnreachableError in phase dial", err)
	}
}
