package main

import (
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// TestHostCommandsE2E runs host commands that change nothing the agent
// keeps (no deploy) on two shared hosts: exec, exec through ssh_config,
// exec with a sudo password asked on a terminal (last: it adds a user).
func TestHostCommandsE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 2)
	t.Run("exec", func(t *testing.T) { execE2E(t, nw) })
	t.Run("ssh-config", func(t *testing.T) { sshConfigE2E(t, nw) })
	t.Run("ask-sudo-password", func(t *testing.T) { askSudoPasswordE2E(t, nw) })
}

// execE2E: exec runs on every host, its output prefixed, the exit code
// says the command failed on one; a changed host key is unreachable. It
// leaves no file behind.
func execE2E(t *testing.T, nw *vmtest.Network) {
	h2 := nw.Hosts[1].With(t)
	h2.Succeed("touch /etc/marker")
	defer h2.Succeed("rm /etc/marker")
	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "", "")
	r := cli.New(t, nw, fl)
	// h1 lacks the marker: the command fails there (exit 6), runs on both.
	res := r.Text(t, "exec", fl.Target("@test"), "--", "sh", "-c", "hostname; test -e /etc/marker").Want(t, ExitCommandFailed)
	got := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if len(got) != 2 || !contains(got, "h1: h1") || !contains(got, "h2: h2") {
		t.Fatalf("deploy exec output %q, want one prefixed line per host", got)
	}
	if !strings.Contains(res.Stderr, "h1: exec failed: the command exited with status 1") || !strings.Contains(res.Stderr, "command-failed: h1") {
		t.Errorf("stderr %q does not name the failing host", res.Stderr)
	}
	// A host key that does not match: exit 4, the host named.
	bad := e2e.NewFleet(t, nw)
	bad.WriteHosts(t, "", "")
	bad.Edit(t, "hosts.hcl", nw.Hosts[0].HostKeyLine(), nw.Hosts[1].HostKeyLine())
	if res := cli.New(t, nw, bad).Text(t, "exec", bad.Target("h1"), "--", "true").Want(t, ExitUnreachable); !strings.Contains(res.Output(), "h1") {
		t.Fatalf("deploy exec with a changed host key: exit %d, want %d naming h1\n%s", res.Code, ExitUnreachable, res.Output())
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
