package fleet

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/vmtest"
)

// A host whose key changes between its activation and the confirmation's
// new connection is unreachable (exit 4: a person must look at the key),
// not failed (exit 3), and the host rolls back by itself.
func TestConfirmHostKeyChanged(t *testing.T) {
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	dir := t.TempDir()
	cache := t.TempDir()
	store, err := closure.NewLocalStore(cache, closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e2e.MeshConfig(t, nw)
	deploy := func(content string, beforeConfirm func(string)) (*Report, error) {
		t.Helper()
		fleetHCL := fmt.Sprintf("host %q {\n  address = %q\n  host_key = %q\n  file \"/etc/marker\" {\n    content = \"%s\\n\"\n  }\n}\n",
			h.Name(), h.Addr(), h.HostKeyLine(), content)
		if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(fleetHCL), 0o644); err != nil {
			t.Fatal(err)
		}
		var log eventLog
		s := &Session{Targets: []string{dir + "#" + h.Name()}, Command: "deploy", Mesh: cfg, Emit: log.emit,
			Builder: &builder.Builder{Store: store, CacheDir: filepath.Join(cache, "build"), Agent: builder.Agent{Binary: e2e.Agent(t)}}}
		if err := s.Open(); err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		real, err := s.hosts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		real.beforeConfirm = beforeConfirm
		return s.Deploy(context.Background(), DeployOptions{ConfirmTimeout: 5 * time.Second})
	}
	if _, err := deploy("1", nil); err != nil {
		t.Fatalf("the first deploy: %v", err)
	}
	rep, err := deploy("2", func(string) {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		block, _ := ssh.MarshalPrivateKey(priv, "")
		h.Succeed(fmt.Sprintf("umask 077; echo %s | base64 -d > /etc/ssh/ssh_host_ed25519_key.new && mv /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh",
			base64.StdEncoding.EncodeToString(pem.EncodeToMemory(block))))
	})
	if err == nil {
		t.Fatal("the deploy succeeded although the host's key changed before the confirmation")
	}
	hr := rep.Hosts[h.Name()]
	if hr.Result != ResultUnreachable {
		t.Fatalf("host result %s (phase %s, error %v), want %s", hr.Result, hr.Phase, hr.Err, ResultUnreachable)
	}
	// Not confirmed: the host returns to its first generation by itself.
	deadline := time.Now().Add(time.Minute)
	for h.Succeed("cat /etc/marker") != "1\n" {
		if time.Now().After(deadline) {
			t.Fatalf("the host kept the unconfirmed generation: /etc/marker is %q", h.Succeed("cat /etc/marker"))
		}
		time.Sleep(time.Second)
	}
}
