package simhost

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
)

// TestPush is a push deploy to simulated hosts (tier 2: a simulation of
// systemd, not of the agent, the store, the network or SSH) through their
// real OpenSSH server: the real deploy bootstraps the agent over SSH,
// copies the closure, activates with the magic-rollback watchdog and
// confirms over a fresh connection; a redeploy changes nothing; a new
// version reaches every host.
func TestPush(t *testing.T) {
	nw := start(t, 2)
	bins := e2e.Binaries(t)
	ctx := context.Background()
	fl := &PushFleet{Dir: filepath.Join(nw.Dir(), "fleet"), Deploy: bins.Deploy, Hosts: nw.Hosts()}
	if err := fl.Init(); err != nil {
		t.Fatal(err)
	}
	key, err := fl.AuthorizedKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range nw.Hosts() {
		if err := h.StartSSHD(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	push := func(version, want string) {
		t.Helper()
		if err := fl.Write(version); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		cmd := fl.Push(ctx)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("deploy (%s): %v\n%s", version, err, stderr.String())
		}
		ev, err := cli.ParseEvents(stdout.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		results := cli.Results(ev)
		for _, h := range nw.Hosts() {
			if got := results[h.Name()].Result; string(got) != want {
				t.Errorf("deploy (%s): %s's result %q, want %q\n%s", version, h.Name(), got, want, stderr.String())
			}
			data, err := h.ReadFile(ctx, "/etc/app/version")
			if err != nil || string(data) != version+"\n" {
				t.Errorf("%s: /etc/app/version = %q %v, want %s", h.Name(), data, err, version)
			}
			calls, err := h.Calls(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(calls, func(c []string) bool { return slices.Contains(c, "app.service") }) {
				t.Errorf("%s: no systemd call about app.service: %v", h.Name(), calls)
			}
		}
	}
	push("v1", "ok")
	push("v1", "unchanged")
	push("v2", "ok")
	out, err := exec.Command("ls", filepath.Join(nw.Hosts()[0].Dir(), "state", "profiles")).CombinedOutput()
	if err != nil || strings.Count(string(out), "-link") != 2 {
		t.Errorf("h1's generations: %s %v, want 2", out, err)
	}
}
