package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// cutFleet writes a deployment "prod" of fl's hosts, one at a time with
// no failure allowed, whose role has a file and a package of blob.bin (in
// the fleet directory).
func cutFleet(t *testing.T, fl *e2e.Fleet, greeting string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `deployment "prod" {
  hosts           = [%s]
  batch_size      = 1
  canary          = 0
  max_failures    = 0
  confirm_timeout = "10s"
}

role "web" {
  file "/etc/web/greeting" {
    content = "%s\n"
  }
  package "blob" {
    path = "./blob.bin"
  }
}
`, fl.Names(), greeting)
	for _, h := range fl.Hosts {
		b.WriteString("\n" + e2e.HostBlock(h, "  roles    = [role.web]\n"))
	}
	fl.Write(t, "fleet.hcl", b.String())
}

// writeBlob writes n bytes that do not compress as the fleet's blob.bin.
func writeBlob(t *testing.T, fl *e2e.Fleet, seed uint64, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(filepath.Join(fl.Dir, "blob.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCutHostE2E: hosts cut off from the operator.
//
//   - One of three hosts cut off before a deploy with max_failures = 0: no
//     host's generation changes, exit 4, the cut host named (run.halt).
//   - A deploy cut off mid-copy exits 4; its run lock stays on the host
//     (the host is never told). A retry from another machine (here another
//     PID namespace: another process table, which cannot tell whether the
//     dead run's process runs) is refused, exit 5, naming the dead run; a
//     retry at once from the same machine takes the lock over and succeeds.
func TestCutHostE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 3)
	hosts := withTest(t, nw.Hosts)
	fl := e2e.NewFleet(t, nw, hosts...)
	r := cli.New(t, nw, fl)
	prod := fl.Target("prod")
	writeBlob(t, fl, 1, 1<<10)
	cutFleet(t, fl, "one")
	r.JSON(t, "", prod).Want(t, 0)
	running := func() map[string]string {
		m := map[string]string{}
		for _, h := range hosts {
			m[h.Name()] = h.Succeed("readlink /run/deploy/current-system; cat /etc/web/greeting")
		}
		return m
	}

	// 1. h2 cut off: nothing changes anywhere.
	before := running()
	cutFleet(t, fl, "two")
	h2 := hosts[1]
	h2.Cut()
	run := r.JSON(t, "", prod)
	h2.Restore()
	run.Want(t, ExitUnreachable)
	res := run.Results()
	if got := res[h2.Name()]; got.Result != fleet.ResultUnreachable || got.Phase != fleet.PhaseLock {
		t.Errorf("%s: %+v, want unreachable in lock", h2.Name(), got)
	}
	for _, h := range []string{hosts[0].Name(), hosts[2].Name()} {
		if got := res[h]; got.Result != fleet.ResultSkipped {
			t.Errorf("%s: %+v, want skipped", h, got)
		}
	}
	halt := slices.IndexFunc(run.Events, func(ev fleet.Event) bool { return ev.Type == fleet.EventHalt })
	if halt < 0 || !slices.Equal(run.Events[halt].Hosts, []string{h2.Name()}) {
		t.Errorf("no run.halt naming %s in %+v", h2.Name(), run.Events)
	}
	if slices.ContainsFunc(run.Events, func(ev fleet.Event) bool {
		return ev.Phase == fleet.PhaseCopy || ev.Phase == fleet.PhaseActivate || ev.Phase == fleet.PhaseBuild
	}) {
		t.Error("a build, copy or activate event: the run must stop before any")
	}
	if !strings.Contains(run.Stderr, h2.Name()) {
		t.Errorf("stderr does not name %s:\n%s", h2.Name(), run.Stderr)
	}
	waitReachableCLI(t, nw, h2)
	if after := running(); !maps.Equal(after, before) {
		t.Errorf("hosts after the halted run %v, want unchanged %v", after, before)
	}

	// 2. A deploy of h1 cut off mid-copy.
	h1 := hosts[0]
	one := fl.Target(h1.Name())
	writeBlob(t, fl, 2, 8<<20)
	cutFleet(t, fl, "three")
	h1.Throttle(1 << 20) // the blob takes about 8 s
	cut := r.Start(t, "", one)
	if !cut.Until(func(events []fleet.Event) bool {
		return slices.ContainsFunc(events, func(ev fleet.Event) bool {
			return ev.Type == fleet.EventProgress && ev.Host == h1.Name() && ev.Sent > 0
		})
	}) {
		t.Fatal("the run ended before its copy began")
	}
	h1.Cut()
	cut.Wait(t).Want(t, ExitUnreachable)
	// The dead run still holds h1's run lock, as its holder record says.
	var rec struct {
		Holder agentapi.RunHolder `json:"holder"`
	}
	if err := json.Unmarshal([]byte(h1.Succeed("cat /run/deploy/run.holder")), &rec); err != nil || rec.Holder.Process == nil {
		t.Fatalf("%s's run holder %+v (%v): want the cut run, with its process", h1.Name(), rec, err)
	}
	deadRun := rec.Holder.Run
	// The host must not learn that the cut run ended: its operator's
	// machine forgot the connections (as when its address changed), so
	// the host's packets for them go nowhere.
	forgetConnections(t, nw, h1)
	h1.Restore()
	h1.Throttle(0)
	waitReachableCLI(t, nw, h1)

	// Another machine: refused, naming the dead run.
	other := runInOtherPIDNamespace(t, r, "--json", "--identity", fl.Key, "--ssh-config", "none", one)
	other.Want(t, ExitLocked)
	if got := other.Results()[h1.Name()]; got.Result != fleet.ResultLocked || got.Holder == nil || got.Holder.Run != deadRun {
		t.Errorf("retry from another machine: %s %+v, want locked by the dead run %s", h1.Name(), got, deadRun)
	}

	// The same machine: takes the lock over at once and deploys.
	retry := r.JSON(t, "", one).Want(t, 0)
	if !slices.ContainsFunc(retry.Events, func(ev fleet.Event) bool {
		return ev.Type == fleet.EventLog && ev.Host == h1.Name() && ev.TookOver != nil && ev.TookOver.Run == deadRun &&
			strings.Contains(ev.Message, "on this machine no longer runs")
	}) {
		t.Errorf("the retry did not say it took over the dead run's lock:\n%s", retry.Stdout)
	}
	if got := h1.Succeed("cat /etc/web/greeting"); got != "three\n" {
		t.Errorf("%s after the retry: greeting %q, want three", h1.Name(), got)
	}
}

// forgetConnections drops, in the operator's network namespace, every
// packet of the TCP connections it has now with h, both ways.
func forgetConnections(t *testing.T, nw *vmtest.Network, h *vmtest.Host) {
	t.Helper()
	ns := "--net=" + nw.SwitchNetNS()
	out, err := exec.Command("nsenter", ns, "ss", "-Htn", "dst", h.Addr().String()).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	var ports []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 {
			ports = append(ports, f[3][strings.LastIndexByte(f[3], ':')+1:])
		}
	}
	if len(ports) == 0 {
		t.Fatalf("no connection with %s to forget: %q", h.Name(), out)
	}
	set := strings.Join(ports, ", ")
	script := fmt.Sprintf(`add table inet forget
add chain inet forget in { type filter hook input priority 0; }
add chain inet forget out { type filter hook output priority 0; }
add rule inet forget in ip saddr %[1]s tcp dport { %[2]s } drop
add rule inet forget out ip daddr %[1]s tcp sport { %[2]s } drop
`, h.Addr(), set)
	cmd := exec.Command("nsenter", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("nsenter", ns, "nft", "delete", "table", "inet", "forget").Run() })
}

// runInOtherPIDNamespace runs deploy with args in a PID namespace (and
// procfs) of its own: another process table, as on another machine.
func runInOtherPIDNamespace(t *testing.T, r *cli.Runner, args ...string) *cli.Result {
	t.Helper()
	cmd := r.Command(t, args...)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Args = append([]string{"unshare", "--pid", "--fork", "--mount-proc", "--"}, cmd.Args...)
	cmd.Path = unshare
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Run()
	events, err := cli.ParseEvents([]byte(stdout.String()))
	if err != nil {
		t.Fatalf("deploy in another PID namespace: %v\nstderr:\n%s", err, stderr.String())
	}
	return &cli.Result{Args: args, Stdout: stdout.String(), Stderr: stderr.String(), Code: cmd.ProcessState.ExitCode(), Events: events}
}
