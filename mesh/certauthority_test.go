package mesh_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

func newCA(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hashedHost(name string) string {
	salt := make([]byte, 20)
	rand.Read(salt)
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(name))
	return "|1|" + base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// A host whose key is signed by a certificate authority that known_hosts
// trusts (@cert-authority) is accepted without its own key in known_hosts;
// a certificate by another authority, for another name or expired, and a
// @cert-authority line for other hosts, fail closed.
func TestKnownHostsCertAuthority(t *testing.T) {
	ca := newCA(t)
	caLine := func(patterns string, k ssh.Signer) string {
		return "@cert-authority " + patterns + " " + mesh.FormatHostKey(k.PublicKey())
	}
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{HostCA: ca})
	hostPort := fmt.Sprintf("[%s]:%d", s.Host, s.Port)
	other := newCA(t)
	tests := []struct {
		name       string
		sshd       *meshtest.SSHD
		knownHosts string
		want       string // "" ok, "unknown", or a substring of the error
	}{
		{"exact", s, caLine(hostPort, ca), ""},
		{"wildcard", s, caLine("[127.0.0.*]:"+fmt.Sprint(s.Port), ca), ""},
		{"hashed", s, caLine(hashedHost(hostPort), ca), ""},
		{"among others", s, "# a comment\n" + caLine("other.example.com", other) + "\n" + caLine("foo,"+hostPort, ca), ""},
		{"negated", s, caLine("[127.0.0.*]:"+fmt.Sprint(s.Port)+",!"+hostPort, ca), "unknown"},
		{"other host", s, caLine("other.example.com,"+s.Host, ca), "unknown"},
		{"other authority", s, caLine(hostPort, other), "no authorities"},
		{"wrong principal", meshtest.StartSSHD(t, meshtest.SSHDOptions{HostCA: ca, HostCertPrincipals: []string{"web1.example.com"}}), "", "principal"},
		{"expired", meshtest.StartSSHD(t, meshtest.SSHDOptions{HostCA: ca, HostCertValidFor: -time.Hour}), "", "cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kh := tt.knownHosts
			if kh == "" {
				kh = caLine(fmt.Sprintf("[%s]:%d", tt.sshd.Host, tt.sshd.Port), ca)
			}
			cfg := baseConfig(t, tt.sshd.ClientKeyFile)
			f := filepath.Join(t.TempDir(), "known_hosts")
			if err := os.WriteFile(f, []byte(kh+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg.KnownHostsFiles = []string{f}
			target := tt.sshd.Target("root")
			target.HostKey = ""
			cl, err := cfg.Connect(context.Background(), target)
			switch {
			case tt.want == "":
				if err != nil {
					t.Fatalf("Connect with %q = %v, want success", kh, err)
				}
				defer cl.Close()
				if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
					t.Fatalf("Run(true) = %v", err)
				}
			case err == nil:
				cl.Close()
				t.Fatalf("Connect with %q succeeded, want an error (%s)", kh, tt.want)
			case tt.want == "unknown":
				if !errors.As(err, new(*mesh.UnknownHostError)) {
					t.Fatalf("Connect = %v, want *mesh.UnknownHostError", err)
				}
			default:
				t.Logf("error: %v", err)
				if !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Connect = %v, want an error mentioning %q", err, tt.want)
				}
			}
		})
	}
}
