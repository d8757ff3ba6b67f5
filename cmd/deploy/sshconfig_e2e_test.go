package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// sshConfigE2E: the CLI reads --ssh-config as OpenSSH would: a Match on the
// fleet host's address gives it a ProxyCommand (bash's /dev/tcp, which
// leaves a mark), and an included file its key (no --identity). It uses
// nw's first host.
func sshConfigE2E(t *testing.T, nw *vmtest.Network) {
	h := nw.Hosts[0]
	fl := e2e.NewFleet(t, nw, h)
	fl.Write(t, "hosts.hcl", e2e.HostBlock(h, ""))
	key := fl.Key
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
	out := cli.New(t, nw, fl).Run(t, "exec", "--ssh-config", filepath.Join(dir, "config"), fl.Target(h.Name()), "--", "id", "-un").Want(t, 0).Output()
	if !strings.Contains(out, h.Name()+": root") {
		t.Errorf("deploy exec output %q, want %s: root", out, h.Name())
	}
	got, _ := os.ReadFile(mark)
	if want := h.Addr().String() + ":22:root\n"; string(got) != want {
		t.Errorf("ProxyCommand ran with %q, want %q (once, tokens expanded)", got, want)
	}
}
