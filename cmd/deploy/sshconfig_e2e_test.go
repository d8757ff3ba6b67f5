package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/vmtest"
)

// TestSSHConfigE2E: the CLI reads --ssh-config as OpenSSH would: a Match
// on the fleet host's address gives it a ProxyCommand (bash's /dev/tcp,
// which leaves a mark), and an included file its key (no --identity).
func TestSSHConfigE2E(t *testing.T) {
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	fleetDir := t.TempDir()
	hosts := fmt.Sprintf("host %q {\n  address = %q\n  host_key = %q\n}\n", h.Name(), h.Addr().String(), h.HostKeyLine())
	if err := os.WriteFile(filepath.Join(fleetDir, "hosts.hcl"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(key, nw.ClientKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mark := filepath.Join(dir, "proxied")
	conf := fmt.Sprintf(`Include %[1]s/*.conf
Match host 10.231.*
    ProxyCommand bash -c 'echo %%h:%%p:%%r >> %[2]s; exec 3<>/dev/tcp/%%h/%%p; cat <&3 & cat >&3'
`, dir, mark)
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys.conf"), []byte("Host "+h.Name()+"\n    IdentitiesOnly yes\n    IdentityFile "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := deployCmd(t, nw, "exec", "--ssh-config", filepath.Join(dir, "config"), fleetDir+"#"+h.Name(), "--", "id", "-un").CombinedOutput()
	if err != nil {
		t.Fatalf("deploy exec through ssh_config: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), h.Name()+": root") {
		t.Errorf("deploy exec output %q, want %s: root", out, h.Name())
	}
	got, _ := os.ReadFile(mark)
	if want := h.Addr().String() + ":22:root\n"; string(got) != want {
		t.Errorf("ProxyCommand ran with %q, want %q (once, tokens expanded)", got, want)
	}
}
