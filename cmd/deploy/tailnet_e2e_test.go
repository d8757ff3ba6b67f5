package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/mesh/tailnet/tailnettest"
	"github.com/declarative/deploy/vmtest"
)

// TestDeployOverTailnetE2E deploys examples/quickstart with transport =
// "tailscale" to two hosts that only the tailnet reaches (their sshd
// listens on loopback, where their tailnet node forwards), confirms, then
// deploys a broken change that rolls back; then every other host command
// (status, generations, diff, exec, rollback, gc) runs over the tailnet,
// through the real main with the tailnet flags.
func TestDeployOverTailnetE2E(t *testing.T) {
	nw := vmtest.Start(t, 2)
	tn := tailnettest.Start(t)
	for _, h := range nw.Hosts {
		tn.InstallNode(t, nw, vmtest.ControllerAddr, h)
		h.Succeed("printf 'ListenAddress 127.0.0.1\\n' > /etc/ssh/sshd_config.d/zz-tailnet-only.conf && systemctl restart ssh")
		h.WaitForOpenPort(22)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if c, err := nw.Dial(ctx, h.Name(), 22); err == nil {
			c.Close()
			t.Fatalf("%s: the direct path to sshd is open", h.Name())
		}
		cancel()
	}
	fleetDir := filepath.Join(t.TempDir(), "fleet")
	if err := demoFleet("../../examples/quickstart", fleetDir, nw); err != nil {
		t.Fatal(err)
	}
	// Hosts by tailnet name; the deployment goes over the tailnet.
	for _, h := range nw.Hosts {
		if err := editFile(filepath.Join(fleetDir, "fleet.hcl"), `"`+h.Addr().String()+`"`, `"`+h.Name()+`"`); err != nil {
			t.Fatal(err)
		}
	}
	if err := editFile(filepath.Join(fleetDir, "fleet.hcl"), `batch_size      = 1`, "batch_size      = 1\n  transport       = \"tailscale\""); err != nil {
		t.Fatal(err)
	}
	fl := &e2e.Fleet{Dir: fleetDir, Key: filepath.Join(t.TempDir(), "id"), Hosts: nw.Hosts}
	os.WriteFile(fl.Key, nw.ClientKeyPEM(), 0o600)
	authKey := filepath.Join(t.TempDir(), "authkey")
	os.WriteFile(authKey, []byte(tn.AuthKey+"\n"), 0o600)
	agent := e2e.Agent(t)
	cache := filepath.Join(t.TempDir(), "cache")
	tsState := t.TempDir()
	// The real deploy in the test process's network namespace, where the
	// tailnet's coordination server and relay listen (on loopback), with
	// the tailnet's knobs (tailnettest sets them in the environment, which
	// the binary inherits); each command starts its own tailnet node from
	// the same state directory, as an operator's commands would.
	r := cli.New(t, nil, fl)
	// run runs the host command cmd ("" for deploy itself) over the tailnet.
	run := func(cmd string, args ...string) (int, []fleet.Event, string) {
		t.Helper()
		flags := []string{"--tailnet-control-url", tn.ControlURL,
			"--tailnet-authkey-file", authKey, "--tailnet-state-dir", tsState, "--tailnet-hostname", "operator"}
		if cmd == "" || cmd == "diff" {
			flags = append(flags, "--agent", agent, "--cache-dir", cache)
		}
		res := r.JSON(t, cmd, append(flags, args...)...)
		return res.Code, res.Events, res.Stderr
	}
	target := fleetDir + "#prod"
	code, events, stderr := run("", "--confirm-timeout", "20s", target)
	if code != 0 {
		t.Fatalf("deploy over the tailnet: exit %d\n%s", code, stderr)
	}
	for _, h := range []string{"web1", "web2"} {
		if r := cli.Results(events)[h]; r.Result != fleet.ResultOK || r.Generation != 1 {
			t.Fatalf("%s: %+v", h, r)
		}
	}
	nw.Hosts[0].Succeed("systemctl is-active hello.service")

	// A broken change rolls back, over the tailnet too.
	if err := editFile(filepath.Join(fleetDir, "web.hcl"), "-config /etc/hello/config.json", "-config /etc/hello/missing.json"); err != nil {
		t.Fatal(err)
	}
	code, events, stderr = run("", "--confirm-timeout", "20s", target)
	if code != ExitRolledBack || cli.Results(events)["web1"].Result != fleet.ResultRolledBack {
		t.Fatalf("broken deploy over the tailnet: exit %d (%+v), want web1 rolled back, exit 3\n%s", code, cli.Results(events)["web1"], stderr)
	}
	if cur := nw.Hosts[0].Succeed("readlink /run/deploy/current-system"); !strings.Contains(cur, "system-web1") {
		t.Fatalf("web1 runs %q after the rollback", cur)
	}
	nw.Hosts[0].Succeed("systemctl is-active hello.service")
	if err := editFile(filepath.Join(fleetDir, "web.hcl"), "-config /etc/hello/missing.json", "-config /etc/hello/config.json"); err != nil {
		t.Fatal(err)
	}

	// Every other host command reaches the hosts through the tailnet: a
	// second generation, then status, generations, diff, exec, rollback
	// and gc.
	if err := editFile(filepath.Join(fleetDir, "web.hcl"), `default = "hello"`, `default = "hello again"`); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run("", "--confirm-timeout", "20s", target); code != 0 {
		t.Fatalf("second deploy over the tailnet: exit %d\n%s", code, stderr)
	}
	code, events, stderr = run("status", target)
	if st := cli.Results(events)["web1"].Status; code != 0 || st == nil || st.Current != 3 || !st.Consistent {
		t.Fatalf("status over the tailnet: exit %d, web1 %+v\n%s", code, st, stderr)
	}
	code, events, stderr = run("generations", target)
	if gens := cli.Results(events)["web1"].Generations; code != 0 || len(gens) != 3 || !gens[1].Failed || !gens[2].Current {
		t.Fatalf("generations over the tailnet: exit %d, web1 %d generations\n%s", code, len(gens), stderr)
	}
	// Selected by itself, a host takes its own transport, not the
	// deployment's: web1 says tailscale too.
	if err := editFile(filepath.Join(fleetDir, "fleet.hcl"), `address  = "h1"`, "address  = \"h1\"\n  transport = \"tailscale\""); err != nil {
		data, _ := os.ReadFile(filepath.Join(fleetDir, "fleet.hcl"))
		t.Fatalf("%v\n%s", err, data)
	}
	code, events, stderr = run("diff", fleetDir+"#web1")
	if d := cli.Results(events)["web1"].Diff; code != 0 || d == nil {
		t.Fatalf("diff over the tailnet: exit %d, %+v\n%s", code, d, stderr)
	}
	code, events, stderr = run("exec", target, "--", "cat", "/etc/hostname")
	var lines []string
	for _, ev := range events {
		if ev.Type == fleet.EventOutput {
			lines = append(lines, ev.Host+": "+ev.Message)
		}
	}
	slices.Sort(lines)
	if code != 0 || !slices.Equal(lines, []string{"web1: h1", "web2: h2"}) {
		t.Fatalf("exec over the tailnet: exit %d, output %q\n%s", code, lines, stderr)
	}
	// (web2 overrides the greeting: it is still on its first generation.)
	code, events, stderr = run("rollback", "--confirm-timeout", "20s", fleetDir+"#web1")
	if code != 0 || cli.Results(events)["web1"].Generation != 1 {
		t.Fatalf("rollback over the tailnet: exit %d, web1 %+v, web2 %+v\n%s", code, cli.Results(events)["web1"], cli.Results(events)["web2"], stderr)
	}
	nw.Hosts[0].Succeed("systemctl is-active hello.service")
	code, events, stderr = run("gc", "--keep", "1", target)
	// Kept: the newest (3) and the current and boot default (1).
	if g := cli.Results(events)["web1"].GC; code != 0 || g == nil || fmt.Sprint(g.Generations) != "[2]" || g.Paths == 0 {
		t.Fatalf("gc over the tailnet: exit %d, web1 %+v\n%s", code, g, stderr)
	}
}
