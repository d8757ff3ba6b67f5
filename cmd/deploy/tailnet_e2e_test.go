package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/deploy"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/tailnet/tailnettest"
	"github.com/declarative/deploy/vmtest"
)

// TestDeployOverTailnetE2E deploys examples/quickstart with transport =
// "tailscale" to two hosts that only the tailnet reaches (their sshd
// listens on loopback, where their tailnet node forwards), confirms, then
// deploys a broken change that rolls back.
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
	op := tn.Transport(t, "operator")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if err := op.Start(ctx); err != nil {
		t.Fatalf("join the tailnet: %v", err)
	}
	cancel()

	fleet := filepath.Join(t.TempDir(), "fleet")
	if err := demoFleet("../../examples/quickstart", fleet, nw); err != nil {
		t.Fatal(err)
	}
	// Hosts by tailnet name; the deployment goes over the tailnet.
	for _, h := range nw.Hosts {
		if err := editFile(filepath.Join(fleet, "fleet.hcl"), `"`+h.Addr().String()+`"`, `"`+h.Name()+`"`); err != nil {
			t.Fatal(err)
		}
	}
	if err := editFile(filepath.Join(fleet, "fleet.hcl"), `batch_size      = 1`, "batch_size      = 1\n  transport       = \"tailscale\""); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "id")
	os.WriteFile(key, nw.ClientKeyPEM(), 0o600)
	var stdout, stderr bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}
	bf := buildFlags{store: storeFlags{storeDir: closure.DefaultStoreDir, cacheDir: filepath.Join(t.TempDir(), "cache")}, agent: filepath.Join(filepath.Dir(buildBinaries(t)), "deploy-agent")}
	b, err := bf.builder(e)
	if err != nil {
		t.Fatal(err)
	}
	sshf := fleetSSHFlags{identities: stringList{key}, sshConfig: "none"}
	started := 0
	sp := func() *deploySpec {
		return &deploySpec{targets: []string{fleet + "#prod"}, mode: deploy.ModeSwitch, builder: b, mesh: sshf.config(e),
			confirmTimeout: 20 * time.Second, asJSON: true, parallel: deploy.Parallelism{Build: 2, Copy: 2},
			tailnet: func(context.Context) (mesh.Dialer, func(), error) { started++; return op, func() {}, nil }}
	}
	rep, err := deployTargets(context.Background(), e, sp())
	if err != nil {
		t.Fatalf("deploy over the tailnet: %v\n%s", err, stderr.String())
	}
	for _, h := range []string{"web1", "web2"} {
		if rep.Hosts[h].Result != deploy.ResultOK || rep.Hosts[h].Generation != 1 {
			t.Fatalf("%s: %+v", h, rep.Hosts[h])
		}
	}
	if started != 1 {
		t.Errorf("the tailnet node was started %d times, want once per run", started)
	}
	nw.Hosts[0].Succeed("systemctl is-active hello.service")

	// A broken change rolls back, over the tailnet too.
	if err := editFile(filepath.Join(fleet, "web.hcl"), "-config /etc/hello/config.json", "-config /etc/hello/missing.json"); err != nil {
		t.Fatal(err)
	}
	rep, err = deployTargets(context.Background(), e, sp())
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != ExitRolledBack || rep.Hosts["web1"].Result != deploy.ResultRolledBack {
		t.Fatalf("broken deploy over the tailnet: %v (%+v), want web1 rolled back, exit 3\n%s", err, rep, stderr.String())
	}
	if cur := nw.Hosts[0].Succeed("readlink /run/deploy/current-system"); !strings.Contains(cur, "system-web1") {
		t.Fatalf("web1 runs %q after the rollback", cur)
	}
	nw.Hosts[0].Succeed("systemctl is-active hello.service")
}
