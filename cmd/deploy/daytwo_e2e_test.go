package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/secrets"
	"github.com/declarative/deploy/vmtest"
)

// dayTwoFleet writes a fleet of nw's hosts in one deployment of batches of
// two (no canary, no failure allowed): a file, a package, a secret and a
// service that refuses to start where /etc/web-broken exists, with a
// health check that its start completed. hostArgs adds role arguments per
// host, hostBody resources.
func dayTwoFleet(t *testing.T, fl *e2e.Fleet, greeting string, hostArgs, hostBody map[string]string) {
	t.Helper()
	var rcpts []secrets.Recipient
	for _, h := range fl.Hosts {
		rcpts = append(rcpts, secrets.Recipient{Owner: h.Name(), Key: h.HostKeyLine()})
	}
	ct, err := secrets.Encrypt([]byte("s3cret\n"), rcpts)
	if err != nil {
		t.Fatal(err)
	}
	fl.Write(t, "secrets/token.age", string(ct))
	fl.Write(t, "tool/README", "a package\n")
	var b strings.Builder
	fmt.Fprintf(&b, `deployment "prod" {
  hosts           = [%s]
  batch_size      = 2
  canary          = 0
  max_failures    = 0
  confirm_timeout = "20s"
}

role "web" {
  variable "greeting" {
    default = %q
  }
  package "tool" {
    path = "./tool"
  }
  file "/etc/web/greeting" {
    content = "${var.greeting}\n"
  }
  file "/etc/web/tool" {
    content = "${package.tool}"
  }
  secret "token" {
    source = "secrets/token.age"
  }
  service "web" {
    exec_start       = "/bin/sh -c 'test ! -e /etc/web-broken || exit 1; touch /run/web-ready; exec /bin/sleep infinity'"
    restart          = "no"
    restart_triggers = [var.greeting]
  }
  health_check "ready" {
    command = ["/bin/sh", "-c", "test -e /run/web-ready"]
    timeout = "20s"
  }
}
`, fl.Names(), greeting)
	for _, h := range fl.Hosts {
		b.WriteString("\n" + e2e.HostBlock(h, "  role \"web\" {\n"+hostArgs[h.Name()]+"  }\n"+hostBody[h.Name()]))
	}
	fl.Write(t, "fleet.hcl", b.String())
}

func bootID(h *vmtest.Host) string {
	return strings.TrimSpace(h.Succeed("cat /proc/sys/kernel/random/boot_id"))
}

// TestDayTwoE2E is issue 18's acceptance on four vmtest hosts: drift found
// by deploy verify and repaired by a redeploy, the fleet's status table,
// a rolling reboot that succeeds, one that stops at the batch where a
// host's service fails after the reboot, and deploy --mode boot --reboot.
func TestDayTwoE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 4)
	fl := e2e.NewFleet(t, nw)
	r := cli.New(t, nw, fl)
	fleetDir := fl.Dir
	target := fl.Target("prod")
	h1, h2, h3, h4 := nw.Hosts[0], nw.Hosts[1], nw.Hosts[2], nw.Hosts[3]
	dayTwoFleet(t, fl, "hello", nil, nil)
	commit := fl.Commit(t, "first")
	r.JSON(t, "", target).Want(t, 0)
	// run runs the host command cmd ("" for deploy itself) for its human
	// output.
	run := func(t *testing.T, want int, cmd string, args ...string) (string, string) {
		t.Helper()
		res := r.Text(t, cmd, args...).Want(t, want)
		return res.Stdout, res.Stderr
	}

	t.Run("drift", func(t *testing.T) {
		h1 := h1.With(t)
		tool := h1.Succeed("cat /etc/web/tool")
		h1.Succeed("echo changed >/etc/web/greeting; systemctl stop web.service; chmod 0644 /run/deploy/secrets/token; rm -rf " + tool)
		h2 := h2.With(t)
		h2.Succeed("rm /etc/web/greeting; chown nobody /etc/web/tool")

		res := r.JSON(t, "verify", target).Want(t, ExitDrifted).Results()
		if r := res["h1"]; r.Result != fleet.ResultDrifted || r.Drift == nil {
			t.Fatalf("verify: h1 %+v, want drifted", r)
		}
		want := []agentapi.DriftItem{
			{Kind: "file", Name: "/etc/web/greeting", Problem: "content"},
			{Kind: "secret", Name: "/run/deploy/secrets/token", Problem: "mode", Want: "0400", Got: "0644"},
			{Kind: "unit", Name: "web.service", Problem: "inactive"},
			{Kind: "store", Name: tool, Problem: "missing"},
		}
		got := res["h1"].Drift.Items
		for _, w := range want {
			if !slices.ContainsFunc(got, func(it agentapi.DriftItem) bool {
				return it.Kind == w.Kind && it.Name == w.Name && it.Problem == w.Problem && (w.Want == "" || it.Want == w.Want && it.Got == w.Got)
			}) {
				t.Errorf("verify: h1's drift %+v lacks %+v", got, w)
			}
		}
		if len(got) != len(want) {
			t.Errorf("verify: h1's drift has %d items, want %d: %+v", len(got), len(want), got)
		}
		if r := res["h2"]; r.Result != fleet.ResultDrifted || r.Drift == nil || !slices.Equal(r.Drift.Items, []agentapi.DriftItem{
			{Kind: "file", Name: "/etc/web/greeting", Problem: "missing"},
			{Kind: "file", Name: "/etc/web/tool", Problem: "owner", Want: "root:root", Got: "nobody:root"},
		}) {
			t.Errorf("verify: h2 %+v, want drifted: greeting missing, tool's owner", r.Drift)
		}
		for _, h := range []string{"h3", "h4"} {
			if r := res[h]; r.Result != fleet.ResultOK || r.Drift == nil || len(r.Drift.Items) != 0 || r.Drift.Generation != 1 {
				t.Errorf("verify: %s %+v, want ok without drift from generation 1", h, r)
			}
		}
		// The human report names each item, per host.
		out, _ := run(t, ExitDrifted, "verify", target)
		for _, s := range []string{"h1: drifted from generation 1:", "file /etc/web/greeting: content", "unit web.service: inactive",
			"secret /run/deploy/secrets/token: mode (is 0644, want 0400)", "store " + tool + ": missing", "h2: drifted from generation 1:",
			"file /etc/web/greeting: missing", "file /etc/web/tool: owner (is nobody:root, want root:root)", "h3: no drift from generation 1"} {
			if !strings.Contains(out, s) {
				t.Errorf("verify output lacks %q:\n%s", s, out)
			}
		}
		// The fleet table shows it too, in one request per host.
		out, _ = run(t, 0, "status", "--drift", target)
		if !strings.Contains(out, "DRIFT") || !strings.Contains(out, "4: file /etc/web/greeting: content") {
			t.Errorf("status --drift does not show h1's drift:\n%s", out)
		}

		// --quick only checks that store paths are there: the missing one
		// still shows.
		if out, _ := run(t, ExitDrifted, "verify", "--quick", fleetDir+"#h1"); !strings.Contains(out, "store "+tool+": missing") {
			t.Errorf("verify --quick does not report the missing store path:\n%s", out)
		}
		// A dry run says what a deploy would overwrite, and changes nothing.
		dry := r.JSON(t, "", "--dry-run", target)
		if code, events, stderr := dry.Code, dry.Events, dry.Stderr; code != 0 || !slices.ContainsFunc(events, func(ev fleet.Event) bool {
			return ev.Type == fleet.EventWarning && ev.Host == "h2" && strings.Contains(ev.Message, "(a deploy would overwrite it): file /etc/web/greeting: missing")
		}) {
			t.Errorf("deploy --dry-run: exit %d, no warning of what it would overwrite on h2\n%s", code, stderr)
		}
		h2.Fail("test -e /etc/web/greeting")

		// A redeploy says what it overwrites, and repairs it all.
		events := r.JSON(t, "", target).Want(t, 0).Events
		i := slices.IndexFunc(events, func(ev fleet.Event) bool {
			return ev.Type == fleet.EventWarning && ev.Host == "h1" && ev.Phase == fleet.PhaseVerify
		})
		if i < 0 || !strings.Contains(events[i].Message, "file /etc/web/greeting: content") || !strings.Contains(events[i].Message, "unit web.service: inactive") {
			t.Errorf("redeploy: no warning naming what h1's deploy overwrites")
		}
		res = cli.Results(events)
		for _, h := range []string{"h1", "h2"} {
			if res[h].Result != fleet.ResultOK || res[h].Generation != 1 {
				t.Errorf("redeploy: %s %+v, want ok at generation 1 (the same system, re-applied)", h, res[h])
			}
		}
		for _, h := range []string{"h3", "h4"} {
			if res[h].Result != fleet.ResultUnchanged {
				t.Errorf("redeploy: %s is %s, want unchanged", h, res[h].Result)
			}
		}
		if got := h1.Succeed("cat /etc/web/greeting; systemctl is-active web.service; stat -Lc %a /run/deploy/secrets/token; cat " + tool + "/README"); got != "hello\nactive\n400\na package\n" {
			t.Errorf("h1 after the redeploy: %q", got)
		}
		if got := h2.Succeed("cat /etc/web/greeting; stat -c %U /etc/web/tool"); got != "hello\nroot\n" {
			t.Errorf("h2 after the redeploy: %q", got)
		}
		if out, _ := run(t, 0, "verify", target); strings.Contains(out, "drifted") {
			t.Errorf("verify after the redeploy:\n%s", out)
		}
	})

	t.Run("status", func(t *testing.T) {
		out, _ := run(t, 0, "status", target)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 5 || !strings.HasPrefix(lines[0], "HOST") || strings.Contains(lines[0], "DRIFT") {
			t.Fatalf("status: want a header and 4 rows without drift:\n%s", out)
		}
		for i, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) < 5 || f[0] != nw.Hosts[i].Name() || f[1] != "yes" || f[2] != "1" || f[3] != commit[:12] {
				t.Errorf("status row %q: want host, reachable yes, generation 1, commit %s", l, commit[:12])
			}
		}
		// --watch refreshes: two tables, then --count stops it.
		out, _ = run(t, 0, "status", "--watch", "100ms", "--count", "2", target)
		if n := strings.Count(out, "HOST"); n != 2 {
			t.Errorf("status --watch --count 2 printed %d tables:\n%s", n, out)
		}
	})

	t.Run("reboot", func(t *testing.T) {
		before := map[string]string{}
		for _, h := range nw.Hosts {
			before[h.Name()] = bootID(h.With(t))
		}
		events := r.JSON(t, "reboot", target).Want(t, 0).Events
		res := cli.Results(events)
		for _, h := range nw.Hosts {
			h := h.With(t)
			if r := res[h.Name()]; r.Result != fleet.ResultOK || r.Phase != fleet.PhaseReboot || r.Health == nil || !r.Health.Healthy || r.Generation != 1 {
				t.Errorf("reboot: %s %+v, want ok and healthy at generation 1", h.Name(), r)
			}
			if bootID(h) == before[h.Name()] {
				t.Errorf("reboot: %s was not rebooted", h.Name())
			}
			if got := h.Succeed("systemctl is-active web.service"); got != "active\n" {
				t.Errorf("reboot: %s: web.service %q after the run", h.Name(), got)
			}
		}
		// Batch by batch: the second batch starts after the first ended.
		end1 := slices.IndexFunc(events, func(ev fleet.Event) bool { return ev.Type == fleet.EventBatchStart && ev.Batch == 2 })
		for _, h := range []string{"h1", "h2"} {
			if j := slices.IndexFunc(events, func(ev fleet.Event) bool { return ev.Type == fleet.EventResult && ev.Host == h }); j < 0 || j > end1 {
				t.Errorf("reboot: %s's result is not before batch 2", h)
			}
		}
	})

	t.Run("boot-mode", func(t *testing.T) {
		dayTwoFleet(t, fl, "hello", map[string]string{"h1": "    greeting = \"after the reboot\"\n"}, nil)
		fl.Commit(t, "h1 changes at the next boot")
		h1 := h1.With(t)
		old := bootID(h1)
		// A boot-mode deploy leaves h1 needing a reboot, and says so.
		run(t, 0, "", fleetDir+"#h1", "--mode", "boot")
		if out, _ := run(t, 0, "status", target); !strings.Contains(out, "2 (reboot required)") || strings.Count(out, "reboot required") != 1 {
			t.Errorf("status after a boot-mode deploy to h1 does not say that h1 alone needs a reboot:\n%s", out)
		}
		if h1.Succeed("cat /etc/web/greeting") != "hello\n" {
			t.Errorf("the boot-mode deploy changed h1 before its reboot")
		}
		// deploy --mode boot --reboot: the boot default is already the new
		// system, so h1 only reboots into it.
		events := r.JSON(t, "", fleetDir+"#h1", "--mode", "boot", "--reboot").Want(t, 0).Events
		if r := cli.Results(events)["h1"]; r.Result != fleet.ResultOK || r.Phase != fleet.PhaseReboot || r.Generation != 2 {
			t.Errorf("deploy --mode boot --reboot: h1 %+v, want ok after the reboot at generation 2", r)
		}
		if slices.ContainsFunc(events, func(ev fleet.Event) bool { return ev.Phase == fleet.PhaseActivate && ev.Type == fleet.EventPhase }) {
			t.Errorf("deploy --mode boot --reboot activated h1 again although its boot default was the new system")
		}
		if out, _ := run(t, 0, "status", target); strings.Contains(out, "reboot required") {
			t.Errorf("status still says a reboot is required:\n%s", out)
		}
		if bootID(h1) == old {
			t.Errorf("h1 was not rebooted")
		}
		if got := h1.Succeed("cat /etc/web/greeting"); got != "after the reboot\n" {
			t.Errorf("h1 after deploy --mode boot --reboot: greeting %q", got)
		}
		// And a fresh change in one run: activated as the boot default,
		// then rebooted into.
		dayTwoFleet(t, fl, "hello", map[string]string{"h1": "    greeting = \"third\"\n"}, nil)
		fl.Commit(t, "h1 again")
		old = bootID(h1)
		third := r.JSON(t, "", fleetDir+"#h1", "--mode", "boot", "--reboot")
		if code, stderr, r := third.Code, third.Stderr, third.Results()["h1"]; code != 0 || r.Result != fleet.ResultOK || r.Phase != fleet.PhaseReboot || r.Generation != 3 {
			t.Errorf("deploy --mode boot --reboot of a new system: exit %d, h1 %+v\n%s", code, r, stderr)
		}
		if bootID(h1) == old || h1.Succeed("cat /etc/web/greeting") != "third\n" {
			t.Errorf("h1 did not reboot into generation 3")
		}

		// A sysctl set only at boot: the activation leaves it, the host
		// says it needs a reboot until one sets it.
		dayTwoFleet(t, fl, "hello", map[string]string{"h1": "    greeting = \"third\"\n"}, map[string]string{"h1": "  sysctl \"net.ipv4.ip_forward\" {\n    value = 1\n    boot  = true\n  }\n"})
		fl.Commit(t, "h1 forwards from its next boot")
		run(t, 0, "", fleetDir+"#h1")
		if got := h1.Succeed("cat /proc/sys/net/ipv4/ip_forward"); got != "0\n" {
			t.Errorf("a boot-only sysctl was set by the activation: ip_forward %q", got)
		}
		if out, _ := run(t, 0, "status", target); !strings.Contains(out, "4 (reboot required)") {
			t.Errorf("status does not say h1 needs a reboot for its boot-only sysctl:\n%s", out)
		}
		run(t, 0, "reboot", fleetDir+"#h1")
		if got := h1.Succeed("cat /proc/sys/net/ipv4/ip_forward"); got != "1\n" {
			t.Errorf("after the reboot: ip_forward %q, want 1", got)
		}
		if out, _ := run(t, 0, "status", target); strings.Contains(out, "reboot required") {
			t.Errorf("status still says a reboot is required after it:\n%s", out)
		}
		// --reboot is for boot mode only: a usage error, nothing done.
		run(t, ExitUsage, "", fleetDir+"#h1", "--reboot")
	})

	t.Run("reboot-stops", func(t *testing.T) {
		h2 := h2.With(t)
		h2.Succeed("touch /etc/web-broken")
		before := map[string]string{}
		for _, h := range nw.Hosts {
			before[h.Name()] = bootID(h.With(t))
		}
		rb := r.JSON(t, "reboot", target).Want(t, ExitRolledBack)
		if !strings.Contains(rb.Stderr, "failed: h2") {
			t.Errorf("reboot: stderr does not name h2:\n%s", rb.Stderr)
		}
		res := rb.Results()
		if r := res["h2"]; r.Result != fleet.ResultFailed || r.Phase != fleet.PhaseReboot || !strings.Contains(r.Error, "not healthy after the reboot") ||
			!strings.Contains(r.Error, "web.service") && !strings.Contains(r.Error, `"ready"`) {
			// The unit is seen failed, or (if it was seen active before
			// its shell exited) its health check fails.
			t.Errorf("reboot: h2 %+v, want failed in reboot naming its failed unit or check", r)
		}
		if h := res["h2"].Health; h == nil || h.Healthy || h.Current != 1 || h.Boot != 1 {
			t.Errorf("reboot: h2's health %+v, want unhealthy at generation 1", h)
		}
		if r := res["h1"]; r.Result != fleet.ResultOK {
			t.Errorf("reboot: h1 %+v, want ok (same batch)", r)
		}
		for _, h := range []*vmtest.Host{h3.With(t), h4.With(t)} {
			if r := res[h.Name()]; r.Result != fleet.ResultSkipped {
				t.Errorf("reboot: %s %+v, want skipped", h.Name(), r)
			}
			if bootID(h) != before[h.Name()] {
				t.Errorf("reboot: %s was rebooted after its batch's predecessor failed", h.Name())
			}
		}
		h2.Succeed("rm /etc/web-broken; systemctl start web.service")
	})
}
