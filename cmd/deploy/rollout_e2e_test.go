package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// rolloutFleet writes the fleet's fleet.hcl: a deployment "prod" of its
// hosts, a role with a file, a service and a command health check;
// hostArgs adds role arguments per host.
func rolloutFleet(t *testing.T, fl *e2e.Fleet, greeting string, hostArgs map[string]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `deployment "prod" {
  hosts           = [%s]
  batch_size      = 2
  confirm_timeout = "10s"
}

role "web" {
  variable "healthy" {
    default = "yes"
  }
  variable "greeting" {
    default = %q
  }
  variable "health_timeout" {
    default = "3s"
  }
  file "/etc/web/greeting" {
    content = "${var.greeting}\n"
  }
  service "web" {
    exec_start       = "/bin/sleep infinity"
    restart_triggers = [var.greeting]
  }
  health_check "healthy" {
    command = ["/bin/sh", "-c", "test ${var.healthy} = yes"]
    timeout = var.health_timeout
  }
}
`, fl.Names(), greeting)
	for _, h := range fl.Hosts {
		b.WriteString("\n" + e2e.HostBlock(h, "  role \"web\" {\n"+hostArgs[h.Name()]+"  }\n"))
	}
	fl.Write(t, "fleet.hcl", b.String())
}

// rolloutE2E deploys to five hosts, h1 to h5, in batches (a canary, then
// two and two): one host changed alone, a failing health check in the
// second batch rolls back every host switched in the run, generations
// record commit and operator, rollback --to-commit.
func rolloutE2E(t *testing.T, nw *vmtest.Network, hosts []*vmtest.Host) {
	if names := e2e.QuotedNames(hosts); names != `"h1", "h2", "h3", "h4", "h5"` {
		t.Fatalf("rolloutE2E needs h1 to h5, got %s", names)
	}
	hosts = withTest(t, hosts)
	fl := e2e.NewFleet(t, nw, hosts...)
	r := cli.New(t, nw, fl)
	target := fl.Target("prod")

	// 1. First deployment: every host at generation 1.
	rolloutFleet(t, fl, "hello", nil)
	c1 := fl.Commit(t, "first")
	events := r.JSON(t, "", target).Want(t, 0).Events
	for _, h := range hosts {
		if r := cli.Results(events)[h.Name()]; r.Result != fleet.ResultOK || r.Generation == 0 {
			t.Fatalf("first deploy: %s: %+v", h.Name(), r)
		}
		if got := h.Succeed("cat /etc/web/greeting; systemctl is-active web.service"); got != "hello\nactive\n" {
			t.Fatalf("%s after the first deploy: %q", h.Name(), got)
		}
	}
	if ev := events[0]; ev.Type != fleet.EventRunStart || ev.Command != "deploy" || len(ev.Batches) != 3 || len(ev.Batches[0]) != 1 {
		t.Errorf("first event %+v, want run.start of deploy with a canary batch then batches of 2", ev)
	}
	if last := events[len(events)-1]; last.Type != fleet.EventRunDone {
		t.Errorf("last event %+v, want run.done", last)
	} else {
		// A fresh host: the run lock's first try finds no agent, so does
		// the look for an older one to upgrade, then the upload and
		// install-self, the run lock (with drift), the copy, the
		// activation, and the confirmation over a second connection.
		for _, h := range hosts {
			if got, want := last.SSH[h.Name()], (mesh.HostCounts{Connections: 2, Sessions: 7}); got != want {
				t.Errorf("first deploy: %s used %+v, want %+v", h.Name(), got, want)
			}
		}
	}
	firstCopy := slices.IndexFunc(events, func(ev fleet.Event) bool { return ev.Phase == fleet.PhaseCopy })
	if slices.ContainsFunc(events[firstCopy:], func(ev fleet.Event) bool { return ev.Phase == fleet.PhaseBuild || ev.Phase == fleet.PhaseLock }) {
		t.Errorf("a build or lock event after the first copy: every host is locked and built before any is copied to")
	}

	// 2. One host's role arguments change: only that host is activated.
	rolloutFleet(t, fl, "hello", map[string]string{"h5": "    greeting = \"hi from h5\"\n"})
	c2 := fl.Commit(t, "h5 greets")
	events = r.JSON(t, "", target).Want(t, 0).Events
	res := cli.Results(events)
	for _, h := range []string{"h1", "h2", "h3", "h4"} {
		if res[h].Result != fleet.ResultUnchanged {
			t.Errorf("second deploy: %s is %s, want unchanged", h, res[h].Result)
		}
	}
	if res["h5"].Result != fleet.ResultOK || hosts[4].Succeed("cat /etc/web/greeting") != "hi from h5\n" {
		t.Errorf("second deploy: h5 %+v", res["h5"])
	}
	// What each host cost (docs/ARCHITECTURE.md, "Per host, per run"): an
	// unchanged host one connection with one session (the run lock, whose
	// reply brings the drift and what the host runs and boots); an
	// activated one also the closure check, the activation and the
	// confirmation over a connection of its own.
	ssh := events[len(events)-1].SSH
	for h, want := range map[string]mesh.HostCounts{
		"h1": {Connections: 1, Sessions: 1}, "h2": {Connections: 1, Sessions: 1},
		"h3": {Connections: 1, Sessions: 1}, "h4": {Connections: 1, Sessions: 1},
		"h5": {Connections: 2, Sessions: 4},
	} {
		if ssh[h] != want {
			t.Errorf("second deploy: %s used %+v, want %+v", h, ssh[h], want)
		}
	}
	before := map[string]string{}
	for _, h := range hosts {
		before[h.Name()] = h.Succeed("readlink /run/deploy/current-system")
	}

	// 3. A change for everyone, and h3 (batch 2) fails its health check:
	// rollback = "all" returns every host switched in this run.
	rolloutFleet(t, fl, "bonjour", map[string]string{"h3": "    healthy = \"no\"\n", "h5": "    greeting = \"hi from h5\"\n"})
	fl.Commit(t, "bonjour, and h3 breaks")
	events = r.JSON(t, "", target).Want(t, ExitRolledBack).Events
	res = cli.Results(events)
	if r := res["h3"]; r.Result != fleet.ResultRolledBack || r.Phase != fleet.PhaseActivate || r.Error == "" {
		t.Errorf("h3: %+v, want rolled back in activate with the reason", r)
	}
	var rolled []string
	for _, ev := range events {
		if ev.Type == fleet.EventRollback {
			rolled = ev.Hosts
		}
	}
	slices.Sort(rolled)
	if !slices.Equal(rolled, []string{"h1", "h2"}) {
		t.Errorf("run.rollback hosts %v, want h1 and h2 (switched in this run before h3 failed)", rolled)
	}
	for _, h := range []string{"h4", "h5"} {
		if res[h].Result != fleet.ResultSkipped {
			t.Errorf("%s: %s, want skipped", h, res[h].Result)
		}
	}
	for _, h := range hosts {
		cur := h.Succeed("readlink /run/deploy/current-system")
		if cur != before[h.Name()] {
			t.Errorf("%s runs %q after the rollback, want its previous system %q", h.Name(), cur, before[h.Name()])
		}
		want := "hello\n"
		if h.Name() == "h5" {
			want = "hi from h5\n"
		}
		if got := h.Succeed("cat /etc/web/greeting"); got != want {
			t.Errorf("%s greeting %q after the rollback, want %q", h.Name(), got, want)
		}
		h.Succeed("systemctl is-active web.service")
	}

	// Generations record the commit and the operator; rollback = "all"
	// returned h1 to its original generation, not to a copy of it.
	gens := generationsOf(t, r, fl.Target("h1"), "h1")
	if cur := currentGen(gens); cur == nil || cur.Number != 1 || cur.GitRev != c1 || cur.Operator == "" {
		t.Fatalf("h1 generations %+v: want generation 1 (commit %s, an operator) current", gens, c1)
	}
	gens = generationsOf(t, r, fl.Target("h5"), "h5")
	if cur := currentGen(gens); cur == nil || cur.GitRev != c2 {
		t.Fatalf("h5 generations %+v: want the current one from commit %s", gens, c2)
	}

	// deploy rollback --to-commit returns h5 to what commit 1 deployed.
	r.Text(t, "rollback", "--confirm-timeout", "10s", "--to-commit", c1[:10], fl.Target("h5")).Want(t, 0)
	if got := hosts[4].Succeed("cat /etc/web/greeting"); got != "hello\n" {
		t.Fatalf("h5 greeting after rollback --to-commit %q, want hello", got)
	}
	gens = generationsOf(t, r, fl.Target("h5"), "h5")
	if cur := currentGen(gens); cur == nil || cur.GitRev != c1 {
		t.Fatalf("h5 after rollback --to-commit: %+v, want the generation of commit %s current", gens, c1)
	}
}

// generationsOf runs deploy generations --json for one host.
func generationsOf(t *testing.T, r *cli.Runner, target, host string) []*agentapi.Generation {
	t.Helper()
	return r.JSON(t, "generations", target).Want(t, 0).Results()[host].Generations
}

func currentGen(gens []*agentapi.Generation) *agentapi.Generation {
	for _, g := range gens {
		if g.Current {
			return g
		}
	}
	return nil
}

// TestDeployRolloutE2E runs the scenarios of rollouts over several hosts,
// each on fresh hosts of its own in one network booted together.
func TestDeployRolloutE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 8)
	t.Run("batches-rollback-generations", func(t *testing.T) { rolloutE2E(t, nw, nw.Hosts[:5]) })
	t.Run("unreachable-dry-run", func(t *testing.T) { unreachableAndDryRunE2E(t, nw, nw.Hosts[5:]) })
}

// unreachableAndDryRunE2E: a host (the second) cut off during the run: the
// others complete, the run exits 4 and names it, without hanging. Then
// --dry-run shows a plan and changes nothing.
func unreachableAndDryRunE2E(t *testing.T, nw *vmtest.Network, hosts []*vmtest.Host) {
	h1, h2 := hosts[0].With(t), hosts[1].With(t)
	n1, n2, n3 := h1.Name(), h2.Name(), hosts[2].Name()
	fl := e2e.NewFleet(t, nw, hosts...)
	r := cli.New(t, nw, fl)
	write := func(greeting string) {
		rolloutFleet(t, fl, greeting, nil)
		fl.Edit(t, "fleet.hcl", "batch_size      = 2", "batch_size      = \"100%\"\n  max_failures    = 1")
	}
	write("hello")
	h2.Cut()
	run := r.JSON(t, "", fl.Target("prod"))
	h2.Restore()
	run.Want(t, ExitUnreachable)
	stderr := run.Stderr
	res := run.Results()
	if r := res[n2]; r.Result != fleet.ResultUnreachable || r.Phase != fleet.PhaseLock || !strings.Contains(r.Error, n2) {
		t.Errorf("%s: %+v, want unreachable when its run lock is taken (the first contact), named", n2, r)
	}
	for _, h := range []string{n1, n3} {
		if res[h].Result != fleet.ResultOK {
			t.Errorf("%s: %+v, want ok: the others complete", h, res[h])
		}
	}
	if !strings.Contains(stderr, n2) {
		t.Errorf("stderr does not name the unreachable host:\n%s", stderr)
	}

	// The agent wrote its Prometheus textfile on the first host after the
	// activation.
	prom := h1.Succeed("cat /var/lib/deploy/metrics/deploy.prom")
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(prom))
	if err != nil {
		t.Fatalf("%s's metrics textfile does not parse: %v\n%s", n1, err, prom)
	}
	gauge := func(name string) float64 {
		f := fams[name]
		if f == nil || len(f.GetMetric()) != 1 {
			t.Errorf("%s's textfile has no single %s:\n%s", n1, name, prom)
			return -1
		}
		return f.GetMetric()[0].GetGauge().GetValue()
	}
	if g := gauge("deploy_current_generation"); g != float64(res[n1].Generation) || g == 0 {
		t.Errorf("%s: deploy_current_generation = %v, want %d", n1, g, res[n1].Generation)
	}
	if g := gauge("deploy_last_activation_success"); g != 1 {
		t.Errorf("%s: deploy_last_activation_success = %v, want 1", n1, g)
	}
	// The role's command health check ran and passed.
	if g := gauge("deploy_checks_failing"); g != 0 {
		t.Errorf("%s: deploy_checks_failing = %v, want 0", n1, g)
	}
	if g := gauge("deploy_last_check_timestamp_seconds"); g <= 0 {
		t.Errorf("%s: deploy_last_check_timestamp_seconds = %v, want a time", n1, g)
	}

	// --dry-run: a plan per host, nothing changes on the hosts.
	waitReachableCLI(t, nw, h2)
	write("bonjour")
	before := h1.Succeed("readlink /run/deploy/current-system; cat /etc/web/greeting")
	events := r.JSON(t, "", "--dry-run", fl.Target("prod")).Want(t, 0).Events
	plans := map[string]fleet.Event{}
	for _, ev := range events {
		if ev.Type == fleet.EventPlan {
			plans[ev.Host] = ev
		}
	}
	if p := plans[n1]; p.CopyPaths == 0 || !slices.Contains(p.Restart, "web.service") || !slices.Contains(p.Files, "/etc/web/greeting") {
		t.Errorf("%s plan %+v, want paths to copy, web.service restarted, /etc/web/greeting changed", n1, p)
	}
	if p := plans[n2]; !slices.Contains(p.Start, "web.service") {
		t.Errorf("%s (never deployed) plan %+v, want web.service started", n2, p)
	}
	if after := h1.Succeed("readlink /run/deploy/current-system; cat /etc/web/greeting"); after != before {
		t.Errorf("the dry run changed %s: %q, was %q", n1, after, before)
	}

	// CI formats: the plan as markdown on stdout (--format markdown), and
	// in GitHub's step summary (--format github), stdout keeping its result
	// lines there.
	md := r.Text(t, "", "--dry-run", "--format", "markdown", fl.Target("prod")).Want(t, 0).Stdout
	for _, want := range []string{"## deploy --dry-run\n", "| host | result | paths to copy |", "| " + n1 + " | planned | ", "`web.service`", "- `/etc/web/greeting`", "| " + n3 + " | planned | "} {
		if !strings.Contains(string(md), want) {
			t.Errorf("dry run --format markdown:\n%s\nwant %q in it", md, want)
		}
	}
	summary := filepath.Join(t.TempDir(), "step_summary.md")
	os.WriteFile(summary, []byte("earlier step\n"), 0o644)
	out := r.With("GITHUB_STEP_SUMMARY="+summary).Text(t, "", "--dry-run", "--format", "github", fl.Target("prod")).Want(t, 0).Stdout
	if !strings.Contains(out, n1+"\tplanned") {
		t.Errorf("dry run --format github: stdout %q, want the result lines", out)
	}
	if got, _ := os.ReadFile(summary); string(got) != "earlier step\n"+md {
		t.Errorf("step summary after dry run --format github:\n%s\nwant the earlier content, then:\n%s", got, md)
	}

	// deploy diff against what the first host runs now.
	out = r.Text(t, "diff", fl.Target(n1)).Want(t, 0).Output()
	if !strings.Contains(out, "/etc/web/greeting") || !strings.Contains(out, "web.service") {
		t.Errorf("deploy diff against the running system:\n%s\nwant the greeting file and web.service", out)
	}
}

// withTest is hosts whose failing helpers report to t (a subtest).
func withTest(t *testing.T, hosts []*vmtest.Host) []*vmtest.Host {
	var out []*vmtest.Host
	for _, h := range hosts {
		out = append(out, h.With(t))
	}
	return out
}

func waitReachableCLI(t *testing.T, nw *vmtest.Network, h *vmtest.Host) {
	t.Helper()
	for i := 0; i < 200; i++ {
		c, err := nw.Dial(t.Context(), h.Name(), 22)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s unreachable after Restore", h.Name())
}

// TestOneHostDeploysE2E runs the scenarios that deploy to one host, each
// on a fresh host of its own in one network (booted together).
func TestOneHostDeploysE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 4)
	for i, s := range []struct {
		name string
		run  func(*testing.T, *vmtest.Network, *vmtest.Host)
	}{
		{"modes", modesE2E},
		{"lock", lockE2E},
		{"push-gc-switch", pushGCSwitchE2E},
		{"rollback-to-future-generation-refused", futureGenerationRefusedE2E},
	} {
		t.Run(s.name, func(t *testing.T) { s.run(t, nw, nw.Hosts[i].With(t)) })
	}
}

// modesE2E: push copies without activating; test activates without
// touching the boot default; boot changes only the boot default.
func modesE2E(t *testing.T, nw *vmtest.Network, h *vmtest.Host) {
	fl := e2e.NewFleet(t, nw, h)
	r := cli.New(t, nw, fl)
	state := func() (current, boot, greeting string) {
		out := h.Succeed("readlink /run/deploy/current-system || true; readlink -f /var/lib/deploy/profiles/system || true; cat /etc/web/greeting 2>/dev/null || true")
		lines := strings.SplitN(out+"\n\n\n", "\n", 4)
		return lines[0], lines[1], lines[2]
	}
	deployMode := func(mode string) {
		t.Helper()
		r.JSON(t, "", "--mode", mode, fl.Target("prod")).Want(t, 0)
	}
	rolloutFleet(t, fl, "one", nil)
	deployMode("switch")
	cur1, boot1, g := state()
	if g != "one" || cur1 == "" || boot1 == "" {
		t.Fatalf("after switch: current %q boot %q greeting %q", cur1, boot1, g)
	}

	rolloutFleet(t, fl, "two", nil)
	deployMode("push")
	if cur, boot, g := state(); cur != cur1 || boot != boot1 || g != "one" {
		t.Fatalf("push activated something: current %q boot %q greeting %q", cur, boot, g)
	}
	h.Succeed("ls /var/lib/deploy/store | grep -c system-" + h.Name() + " | grep -qx 2") // the new system is there

	deployMode("test")
	cur2, boot, g := state()
	if cur2 == cur1 || boot != boot1 || g != "two" {
		t.Fatalf("after test: current %q (was %q) boot %q (was %q) greeting %q; want a new current, the old boot default", cur2, cur1, boot, boot1, g)
	}

	rolloutFleet(t, fl, "three", nil)
	deployMode("boot")
	cur, boot3, g := state()
	if cur != cur2 || g != "two" || boot3 == boot1 || !strings.Contains(boot3, "system-") {
		t.Fatalf("after boot: current %q (want %q unchanged), boot %q (want new), greeting %q (want two)", cur, cur2, boot3, g)
	}

	// dry-activate shows what would change and changes nothing: no new
	// generation, the same current system, boot default and files.
	generations := func() string { return h.Succeed("ls /var/lib/deploy/profiles") }
	gensBefore := generations()
	rolloutFleet(t, fl, "four", nil)
	events := r.JSON(t, "", "--mode", "dry-activate", fl.Target("prod")).Want(t, 0).Events
	if c, b, g := state(); c != cur2 || b != boot3 || g != "two" {
		t.Fatalf("after dry-activate: current %q boot %q greeting %q; want %q, %q, two", c, b, g, cur2, boot3)
	}
	if gens := generations(); gens != gensBefore {
		t.Fatalf("dry-activate made a generation: profiles %q, were %q", gens, gensBefore)
	}
	var shown bool
	for _, ev := range events {
		if ev.Type == fleet.EventLog && strings.Contains(ev.Message, "/etc/web/greeting") {
			shown = true
		}
		if ev.Type == fleet.EventResult && ev.Result != fleet.ResultOK {
			t.Errorf("dry-activate result %q, want ok", ev.Result)
		}
	}
	if !shown {
		t.Fatalf("dry-activate did not show the change to /etc/web/greeting; events:\n%v", events)
	}
}

// lockE2E: a second deployment to a host that is activating is refused
// at once (result locked, exit 5) and changes nothing; with --wait-lock it
// waits for the first and then goes ahead.
func lockE2E(t *testing.T, nw *vmtest.Network, h *vmtest.Host) {
	fl := e2e.NewFleet(t, nw, h)
	r := cli.New(t, nw, fl)
	rolloutFleet(t, fl, "one", nil)
	r.JSON(t, "", fl.Target("prod")).Want(t, 0)
	greeting := func() string { return strings.TrimSpace(h.Succeed("cat /etc/web/greeting")) }

	// A: its health check passes only once the test writes /run/release,
	// so A holds the activation (and its lock) until then.
	rolloutFleet(t, fl, "two", map[string]string{h.Name(): "    healthy = \"$(cat /run/release 2>/dev/null || echo no)\"\n    health_timeout = \"60s\"\n"})
	a := r.Start(t, "", fl.Target("prod"))
	for greeting() != "two" {
		select {
		case <-a.Done():
			res := a.Wait(t)
			t.Fatalf("A ended before its files were in place: exit %d\n%s", res.Code, res.Stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}

	// B: refused at once, nothing changed.
	rolloutFleet(t, fl, "three", nil)
	if res := r.JSON(t, "", fl.Target("prod")).Want(t, ExitLocked).Results()[h.Name()]; res.Result != fleet.ResultLocked || !strings.Contains(res.Error, "lock") {
		t.Fatalf("B: result %q (%s), want locked naming the lock", res.Result, res.Error)
	}
	if g := greeting(); g != "two" {
		t.Fatalf("B changed the host: greeting %q", g)
	}

	// C, with --wait-lock: says it is waiting; once A is released and done,
	// C deploys.
	c := r.Start(t, "", "--wait-lock", "60s", fl.Target("prod"))
	if !c.Until(waitingForLock) {
		res := c.Wait(t)
		t.Fatalf("C ended without waiting for the lock: exit %d\n%s", res.Code, res.Stderr)
	}
	h.Succeed("echo yes > /run/release")
	a.Wait(t).Want(t, 0)
	c.Wait(t).Want(t, 0)
	if g := greeting(); g != "three" {
		t.Fatalf("after C: greeting %q, want three", g)
	}
}

// waitingForLock holds once a run said it waits for the run lock.
func waitingForLock(events []fleet.Event) bool {
	return slices.ContainsFunc(events, func(ev fleet.Event) bool {
		return ev.Type == fleet.EventLog && strings.Contains(ev.Message, "waiting for the run lock")
	})
}
