package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/vmtest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// rolloutFleet writes a five-host fleet: a role with a file, a service and
// a command health check; hostArgs adds role arguments per host.
func rolloutFleet(t *testing.T, nw *vmtest.Network, dir, greeting string, hostArgs map[string]string) {
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
`, quotedNames(nw), greeting)
	for _, h := range nw.Hosts {
		fmt.Fprintf(&b, "\nhost %q {\n  address  = %q\n  host_key = %q\n  role \"web\" {\n%s  }\n}\n", h.Name(), h.Addr().String(), h.HostKeyLine(), hostArgs[h.Name()])
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func quotedNames(nw *vmtest.Network) string {
	var q []string
	for _, h := range nw.Hosts {
		q = append(q, fmt.Sprintf("%q", h.Name()))
	}
	return strings.Join(q, ", ")
}

// runJSON runs deploy --json (or, when args start with a command, that
// command with --json) and returns its events and exit code.
func runJSON(t *testing.T, nw *vmtest.Network, key string, args ...string) ([]fleet.Event, int, string) {
	t.Helper()
	return runJSONEnv(t, nw, key, nil, args...)
}

// runJSONEnv is runJSON with env added to the command's environment.
func runJSONEnv(t *testing.T, nw *vmtest.Network, key string, env []string, args ...string) ([]fleet.Event, int, string) {
	t.Helper()
	var pre []string
	if len(args) > 0 && !isTarget(args[0]) && !strings.HasPrefix(args[0], "-") {
		pre, args = args[:1], args[1:]
	}
	cmd := deployCmd(t, nw, append(append(pre, "--json", "--identity", key, "--ssh-config", "none"), args...)...)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	events, err := parseEvents(stdout.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return events, code, stderr.String()
}

// parseEvents reads --json output: every line an event of this schema
// version.
func parseEvents(out []byte) ([]fleet.Event, error) {
	var events []fleet.Event
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev fleet.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return events, fmt.Errorf("stdout line %q is not an event: %v", sc.Text(), err)
		}
		if ev.V != fleet.EventSchemaVersion {
			return events, fmt.Errorf("event %q has schema version %d", sc.Text(), ev.V)
		}
		events = append(events, ev)
	}
	return events, nil
}

func results(events []fleet.Event) map[string]fleet.Event {
	out := map[string]fleet.Event{}
	for _, ev := range events {
		if ev.Type == fleet.EventResult {
			out[ev.Host] = ev
		}
	}
	return out
}

// gitCommit commits everything in dir and returns the commit.
func gitCommit(t *testing.T, dir, msg string) string {
	t.Helper()
	for _, args := range [][]string{{"init", "-q"}, {"add", "-A"}, {"-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", msg}} {
		if args[0] == "init" {
			if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
				continue
			}
		}
		if out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	out, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestDeployRolloutE2E(t *testing.T) {
	nw := vmtest.Start(t, 5)
	fleetDir, key := testFleet(t, nw, "")
	os.Remove(filepath.Join(fleetDir, "hosts.hcl"))
	target := fleetDir + "#prod"

	// 1. First deployment: every host at generation 1.
	rolloutFleet(t, nw, fleetDir, "hello", nil)
	c1 := gitCommit(t, fleetDir, "first")
	events, code, stderr := runJSON(t, nw, key, target)
	if code != 0 {
		t.Fatalf("first deploy: exit %d\n%s", code, stderr)
	}
	for _, h := range nw.Hosts {
		if r := results(events)[h.Name()]; r.Result != fleet.ResultOK || r.Generation == 0 {
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
	}
	firstCopy := slices.IndexFunc(events, func(ev fleet.Event) bool { return ev.Phase == fleet.PhaseCopy })
	if slices.ContainsFunc(events[firstCopy:], func(ev fleet.Event) bool { return ev.Phase == fleet.PhaseBuild || ev.Phase == fleet.PhaseLock }) {
		t.Errorf("a build or lock event after the first copy: every host is locked and built before any is copied to")
	}

	// 2. One host's role arguments change: only that host is activated.
	rolloutFleet(t, nw, fleetDir, "hello", map[string]string{"h5": "    greeting = \"hi from h5\"\n"})
	c2 := gitCommit(t, fleetDir, "h5 greets")
	events, code, stderr = runJSON(t, nw, key, target)
	if code != 0 {
		t.Fatalf("second deploy: exit %d\n%s", code, stderr)
	}
	res := results(events)
	for _, h := range []string{"h1", "h2", "h3", "h4"} {
		if res[h].Result != fleet.ResultUnchanged {
			t.Errorf("second deploy: %s is %s, want unchanged", h, res[h].Result)
		}
	}
	if res["h5"].Result != fleet.ResultOK || nw.Hosts[4].Succeed("cat /etc/web/greeting") != "hi from h5\n" {
		t.Errorf("second deploy: h5 %+v", res["h5"])
	}
	before := map[string]string{}
	for _, h := range nw.Hosts {
		before[h.Name()] = h.Succeed("readlink /run/deploy/current-system")
	}

	// 3. A change for everyone, and h3 (batch 2) fails its health check:
	// rollback = "all" returns every host switched in this run.
	rolloutFleet(t, nw, fleetDir, "bonjour", map[string]string{"h3": "    healthy = \"no\"\n", "h5": "    greeting = \"hi from h5\"\n"})
	gitCommit(t, fleetDir, "bonjour, and h3 breaks")
	events, code, stderr = runJSON(t, nw, key, target)
	if code != ExitRolledBack {
		t.Fatalf("failing deploy: exit %d, want %d\n%s", code, ExitRolledBack, stderr)
	}
	res = results(events)
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
	for _, h := range nw.Hosts {
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
	gens := generationsOf(t, nw, key, fleetDir+"#h1", "h1")
	if cur := currentGen(gens); cur == nil || cur.Number != 1 || cur.GitRev != c1 || cur.Operator == "" {
		t.Fatalf("h1 generations %+v: want generation 1 (commit %s, an operator) current", gens, c1)
	}
	gens = generationsOf(t, nw, key, fleetDir+"#h5", "h5")
	if cur := currentGen(gens); cur == nil || cur.GitRev != c2 {
		t.Fatalf("h5 generations %+v: want the current one from commit %s", gens, c2)
	}

	// deploy rollback --to-commit returns h5 to what commit 1 deployed.
	out, err := deployCmd(t, nw, "rollback", "--identity", key, "--ssh-config", "none", "--confirm-timeout", "10s", "--to-commit", c1[:10], fleetDir+"#h5").CombinedOutput()
	if err != nil {
		t.Fatalf("deploy rollback --to-commit: %v\n%s", err, out)
	}
	if got := nw.Hosts[4].Succeed("cat /etc/web/greeting"); got != "hello\n" {
		t.Fatalf("h5 greeting after rollback --to-commit %q, want hello", got)
	}
	gens = generationsOf(t, nw, key, fleetDir+"#h5", "h5")
	if cur := currentGen(gens); cur == nil || cur.GitRev != c1 {
		t.Fatalf("h5 after rollback --to-commit: %+v, want the generation of commit %s current", gens, c1)
	}
}

// generationsOf runs deploy generations --json for one host.
func generationsOf(t *testing.T, nw *vmtest.Network, key, target, host string) []*agentapi.Generation {
	t.Helper()
	events, code, stderr := runJSON(t, nw, key, "generations", target)
	if code != 0 {
		t.Fatalf("deploy generations: exit %d\n%s", code, stderr)
	}
	return results(events)[host].Generations
}

func currentGen(gens []*agentapi.Generation) *agentapi.Generation {
	for _, g := range gens {
		if g.Current {
			return g
		}
	}
	return nil
}

// A host cut off during the run: the others complete, the run exits 4 and
// names it, without hanging. Then --dry-run shows a plan and changes
// nothing.
func TestDeployUnreachableAndDryRunE2E(t *testing.T) {
	nw := vmtest.Start(t, 3)
	fleetDir, key := testFleet(t, nw, "")
	os.Remove(filepath.Join(fleetDir, "hosts.hcl"))
	write := func(greeting string) {
		rolloutFleet(t, nw, fleetDir, greeting, nil)
		data, _ := os.ReadFile(filepath.Join(fleetDir, "fleet.hcl"))
		text := strings.Replace(string(data), "batch_size      = 2", "batch_size      = \"100%\"\n  max_failures    = 1", 1)
		os.WriteFile(filepath.Join(fleetDir, "fleet.hcl"), []byte(text), 0o644)
	}
	write("hello")
	nw.Hosts[1].Cut()
	events, code, stderr := runJSON(t, nw, key, fleetDir+"#prod")
	nw.Hosts[1].Restore()
	if code != ExitUnreachable {
		t.Fatalf("deploy with h2 cut: exit %d, want %d\n%s", code, ExitUnreachable, stderr)
	}
	res := results(events)
	if r := res["h2"]; r.Result != fleet.ResultUnreachable || r.Phase != fleet.PhaseLock || !strings.Contains(r.Error, "h2") {
		t.Errorf("h2: %+v, want unreachable when its run lock is taken (the first contact), named", r)
	}
	for _, h := range []string{"h1", "h3"} {
		if res[h].Result != fleet.ResultOK {
			t.Errorf("%s: %+v, want ok: the others complete", h, res[h])
		}
	}
	if !strings.Contains(stderr, "h2") {
		t.Errorf("stderr does not name the unreachable host:\n%s", stderr)
	}

	// The agent wrote its Prometheus textfile on h1 after the activation.
	prom := nw.Hosts[0].Succeed("cat /var/lib/deploy/metrics/deploy.prom")
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(prom))
	if err != nil {
		t.Fatalf("h1's metrics textfile does not parse: %v\n%s", err, prom)
	}
	gauge := func(name string) float64 {
		f := fams[name]
		if f == nil || len(f.GetMetric()) != 1 {
			t.Errorf("h1's textfile has no single %s:\n%s", name, prom)
			return -1
		}
		return f.GetMetric()[0].GetGauge().GetValue()
	}
	if g := gauge("deploy_current_generation"); g != float64(res["h1"].Generation) || g == 0 {
		t.Errorf("h1: deploy_current_generation = %v, want %d", g, res["h1"].Generation)
	}
	if g := gauge("deploy_last_activation_success"); g != 1 {
		t.Errorf("h1: deploy_last_activation_success = %v, want 1", g)
	}
	// The role's command health check ran and passed.
	if g := gauge("deploy_checks_failing"); g != 0 {
		t.Errorf("h1: deploy_checks_failing = %v, want 0", g)
	}
	if g := gauge("deploy_last_check_timestamp_seconds"); g <= 0 {
		t.Errorf("h1: deploy_last_check_timestamp_seconds = %v, want a time", g)
	}

	// --dry-run: a plan per host, nothing changes on the hosts.
	waitReachableCLI(t, nw, nw.Hosts[1])
	write("bonjour")
	before := nw.Hosts[0].Succeed("readlink /run/deploy/current-system; cat /etc/web/greeting")
	events, code, stderr = runJSON(t, nw, key, "--dry-run", fleetDir+"#prod")
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s", code, stderr)
	}
	plans := map[string]fleet.Event{}
	for _, ev := range events {
		if ev.Type == fleet.EventPlan {
			plans[ev.Host] = ev
		}
	}
	if p := plans["h1"]; p.CopyPaths == 0 || !slices.Contains(p.Restart, "web.service") || !slices.Contains(p.Files, "/etc/web/greeting") {
		t.Errorf("h1 plan %+v, want paths to copy, web.service restarted, /etc/web/greeting changed", p)
	}
	if p := plans["h2"]; !slices.Contains(p.Start, "web.service") {
		t.Errorf("h2 (never deployed) plan %+v, want web.service started", p)
	}
	if after := nw.Hosts[0].Succeed("readlink /run/deploy/current-system; cat /etc/web/greeting"); after != before {
		t.Errorf("the dry run changed h1: %q, was %q", after, before)
	}

	// CI formats: the plan as markdown on stdout (--format markdown), and
	// in GitHub's step summary (--format github), stdout keeping its result
	// lines there.
	md, err := deployCmd(t, nw, "--identity", key, "--ssh-config", "none", "--dry-run", "--format", "markdown", fleetDir+"#prod").Output()
	if err != nil {
		t.Fatalf("dry run --format markdown: %v", err)
	}
	for _, want := range []string{"## deploy --dry-run\n", "| host | result | paths to copy |", "| h1 | planned | ", "`web.service`", "- `/etc/web/greeting`", "| h3 | planned | "} {
		if !strings.Contains(string(md), want) {
			t.Errorf("dry run --format markdown:\n%s\nwant %q in it", md, want)
		}
	}
	summary := filepath.Join(t.TempDir(), "step_summary.md")
	os.WriteFile(summary, []byte("earlier step\n"), 0o644)
	gh := deployCmd(t, nw, "--identity", key, "--ssh-config", "none", "--dry-run", "--format", "github", fleetDir+"#prod")
	gh.Env = append(gh.Env, "GITHUB_STEP_SUMMARY="+summary)
	out, err := gh.Output()
	if err != nil {
		t.Fatalf("dry run --format github: %v", err)
	}
	if !strings.Contains(string(out), "h1\tplanned") {
		t.Errorf("dry run --format github: stdout %q, want the result lines", out)
	}
	if got, _ := os.ReadFile(summary); string(got) != "earlier step\n"+string(md) {
		t.Errorf("step summary after dry run --format github:\n%s\nwant the earlier content, then:\n%s", got, md)
	}

	// deploy diff against what h1 runs now.
	out, err = deployCmd(t, nw, "diff", "--identity", key, "--ssh-config", "none", fleetDir+"#h1").CombinedOutput()
	if err != nil {
		t.Fatalf("deploy diff: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "/etc/web/greeting") || !strings.Contains(string(out), "web.service") {
		t.Errorf("deploy diff against the running system:\n%s\nwant the greeting file and web.service", out)
	}
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

// The modes: push copies without activating; test activates without
// touching the boot default; boot changes only the boot default.
func TestDeployModesE2E(t *testing.T) {
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	fleetDir, key := testFleet(t, nw, "")
	os.Remove(filepath.Join(fleetDir, "hosts.hcl"))
	state := func() (current, boot, greeting string) {
		out := h.Succeed("readlink /run/deploy/current-system || true; readlink -f /var/lib/deploy/profiles/system || true; cat /etc/web/greeting 2>/dev/null || true")
		lines := strings.SplitN(out+"\n\n\n", "\n", 4)
		return lines[0], lines[1], lines[2]
	}
	deployMode := func(mode string) {
		t.Helper()
		if _, code, stderr := runJSON(t, nw, key, "--mode", mode, fleetDir+"#prod"); code != 0 {
			t.Fatalf("--mode %s: exit %d\n%s", mode, code, stderr)
		}
	}
	rolloutFleet(t, nw, fleetDir, "one", nil)
	deployMode("switch")
	cur1, boot1, g := state()
	if g != "one" || cur1 == "" || boot1 == "" {
		t.Fatalf("after switch: current %q boot %q greeting %q", cur1, boot1, g)
	}

	rolloutFleet(t, nw, fleetDir, "two", nil)
	deployMode("push")
	if cur, boot, g := state(); cur != cur1 || boot != boot1 || g != "one" {
		t.Fatalf("push activated something: current %q boot %q greeting %q", cur, boot, g)
	}
	h.Succeed("ls /var/lib/deploy/store | grep -c system-h1 | grep -qx 2") // the new system is there

	deployMode("test")
	cur2, boot, g := state()
	if cur2 == cur1 || boot != boot1 || g != "two" {
		t.Fatalf("after test: current %q (was %q) boot %q (was %q) greeting %q; want a new current, the old boot default", cur2, cur1, boot, boot1, g)
	}

	rolloutFleet(t, nw, fleetDir, "three", nil)
	deployMode("boot")
	cur, boot3, g := state()
	if cur != cur2 || g != "two" || boot3 == boot1 || !strings.Contains(boot3, "system-") {
		t.Fatalf("after boot: current %q (want %q unchanged), boot %q (want new), greeting %q (want two)", cur, cur2, boot3, g)
	}

	// dry-activate shows what would change and changes nothing: no new
	// generation, the same current system, boot default and files.
	generations := func() string { return h.Succeed("ls /var/lib/deploy/profiles") }
	gensBefore := generations()
	rolloutFleet(t, nw, fleetDir, "four", nil)
	events, code, stderr := runJSON(t, nw, key, "--mode", "dry-activate", fleetDir+"#prod")
	if code != 0 {
		t.Fatalf("--mode dry-activate: exit %d\n%s", code, stderr)
	}
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

// A second deployment to a host that is activating is refused at once
// (result locked, exit 5) and changes nothing; with --wait-lock it waits
// for the first and then goes ahead.
func TestDeployLockE2E(t *testing.T) {
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	fleetDir, key := testFleet(t, nw, "")
	os.Remove(filepath.Join(fleetDir, "hosts.hcl"))
	rolloutFleet(t, nw, fleetDir, "one", nil)
	if _, code, stderr := runJSON(t, nw, key, fleetDir+"#prod"); code != 0 {
		t.Fatalf("first deploy: exit %d\n%s", code, stderr)
	}
	greeting := func() string { return strings.TrimSpace(h.Succeed("cat /etc/web/greeting")) }

	// A: its health check passes only once the test writes /run/release,
	// so A holds the activation (and its lock) until then.
	rolloutFleet(t, nw, fleetDir, "two", map[string]string{h.Name(): "    healthy = \"$(cat /run/release 2>/dev/null || echo no)\"\n    health_timeout = \"60s\"\n"})
	a := startJSON(t, nw, key, fleetDir+"#prod")
	for greeting() != "two" {
		select {
		case <-a.done:
			t.Fatalf("A ended before its files were in place: exit %d\n%s", a.code, a.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}

	// B: refused at once, nothing changed.
	rolloutFleet(t, nw, fleetDir, "three", nil)
	events, code, stderr := runJSON(t, nw, key, fleetDir+"#prod")
	if code != ExitLocked {
		t.Fatalf("B: exit %d, want %d (locked)\n%s", code, ExitLocked, stderr)
	}
	if r := results(events)[h.Name()]; r.Result != fleet.ResultLocked || !strings.Contains(r.Error, "lock") {
		t.Fatalf("B: result %q (%s), want locked naming the lock", r.Result, r.Error)
	}
	if g := greeting(); g != "two" {
		t.Fatalf("B changed the host: greeting %q", g)
	}

	// C, with --wait-lock: says it is waiting; once A is released and done,
	// C deploys.
	c := startJSON(t, nw, key, "--wait-lock", "60s", fleetDir+"#prod")
	select {
	case <-c.waiting:
	case <-c.done:
		t.Fatalf("C ended without waiting for the lock: exit %d\n%s", c.code, c.stderr.String())
	}
	h.Succeed("echo yes > /run/release")
	<-a.done
	if a.code != 0 {
		t.Fatalf("A: exit %d\n%s", a.code, a.stderr.String())
	}
	<-c.done
	if c.code != 0 {
		t.Fatalf("C (--wait-lock): exit %d\n%s", c.code, c.stderr.String())
	}
	if g := greeting(); g != "three" {
		t.Fatalf("after C: greeting %q, want three", g)
	}
}

// jsonRun is a deploy --json running in the background.
type jsonRun struct {
	done    chan struct{} // closed when it has exited; code is set then
	waiting chan struct{} // closed at its first "waiting for the lock" event
	code    int
	stderr  bytes.Buffer
}

func startJSON(t *testing.T, nw *vmtest.Network, key string, args ...string) *jsonRun {
	t.Helper()
	cmd := deployCmd(t, nw, append([]string{"--json", "--identity", key, "--ssh-config", "none"}, args...)...)
	r := &jsonRun{done: make(chan struct{}), waiting: make(chan struct{})}
	cmd.Stderr = &r.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); <-r.done })
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		var waited bool
		for sc.Scan() {
			var ev fleet.Event
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Type == fleet.EventLog && strings.Contains(ev.Message, "waiting for the run lock") && !waited {
				waited = true
				close(r.waiting)
			}
		}
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		} else if err != nil {
			r.code = -1
		}
	}()
	return r
}
