package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/declarative/deploy/vmtest"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// buildBinaries builds deploy and deploy-agent (static) once per test
// binary, side by side, as they are installed.
func buildBinaries(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "deploy-e2e-bin-")
		if binErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", binDir+"/", "./cmd/deploy", "./cmd/deploy-agent")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "deploy")
}

// testFleet writes a fleet whose hosts are nw's hosts, with pinned keys,
// plus extra HCL, and returns its directory and the client key file.
func testFleet(t testing.TB, nw *vmtest.Network, extra string) (dir, key string) {
	t.Helper()
	dir = t.TempDir()
	var b strings.Builder
	for _, h := range nw.Hosts {
		fmt.Fprintf(&b, "host %q {\n  address = %q\n  host_key = %q\n  tags = [\"test\"]\n}\n\n", h.Name(), h.Addr().String(), h.HostKeyLine())
	}
	b.WriteString(extra)
	if err := os.WriteFile(filepath.Join(dir, "hosts.hcl"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	key = filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(key, nw.ClientKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, key
}

// deployCmd runs the real deploy binary inside the test network.
func deployCmd(t testing.TB, nw *vmtest.Network, args ...string) *exec.Cmd {
	t.Helper()
	cmd := nw.ControllerCommand(context.Background(), buildBinaries(t), args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, "cache"), "SSH_AUTH_SOCK=")
	return cmd
}

func TestExecE2E(t *testing.T) {
	nw := vmtest.Start(t, 2)
	nw.Hosts[1].Succeed("touch /etc/marker")
	fleetDir, key := testFleet(t, nw, "")
	cmd := deployCmd(t, nw, "exec", "--identity", key, "--ssh-config", "none", fleetDir+"#@test", "--", "sh", "-c", "hostname; test -e /etc/marker")
	out, err := cmd.Output()
	// h1 lacks the marker: the command fails there (exit 6), runs on both.
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != ExitCommandFailed {
		t.Fatalf("deploy exec: %v, want exit %d\n%s", err, ExitCommandFailed, out)
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(got) != 2 || !contains(got, "h1: h1") || !contains(got, "h2: h2") {
		t.Fatalf("deploy exec output %q, want one prefixed line per host", got)
	}
	if stderr := string(err.(*exec.ExitError).Stderr); !strings.Contains(stderr, "h1: exec failed: the command exited with status 1") || !strings.Contains(stderr, "command-failed: h1") {
		t.Errorf("stderr %q does not name the failing host", stderr)
	}
	// A host key that does not match: exit 4, the host named.
	bad, _ := testFleet(t, nw, "")
	data, _ := os.ReadFile(filepath.Join(bad, "hosts.hcl"))
	swapped := strings.Replace(string(data), nw.Hosts[0].HostKeyLine(), nw.Hosts[1].HostKeyLine(), 1)
	os.WriteFile(filepath.Join(bad, "hosts.hcl"), []byte(swapped), 0o644)
	cmd = deployCmd(t, nw, "exec", "--identity", key, "--ssh-config", "none", bad+"#h1", "--", "true")
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != ExitUnreachable || !strings.Contains(string(out), "h1") {
		t.Fatalf("deploy exec with a changed host key: %v, want exit %d naming h1\n%s", err, ExitUnreachable, out)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}
