package main

import (
	"os"
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

// TestHostDriftE2E is issue 28's drift acceptance on one vmtest host: a
// sysctl set with sysctl -w, a member taken out of a declared group and a
// user out of a supplementary group with gpasswd -d, a rule added to the
// firewall's input chain and its policy changed with nft (flushing it would
// leave its drop policy, and no way in for SSH), the host name changed with hostname and a
// service stopped and masked with systemctl (mask --force: a plain mask
// refuses to replace the generation's unit link in /etc/systemd/system, and
// a mask --runtime in /run/systemd/system does not override it). deploy verify names each
// (exit 8), status --drift shows them, a dry run plans their repair, a
// deploy repairs them all, and verify then finds nothing (exit 0).
func TestHostDriftE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	fl := e2e.NewFleet(t, nw)
	r := cli.New(t, nw, fl)
	h := nw.Hosts[0].With(t)
	target := fl.Target("h1")
	fl.Write(t, "fleet.hcl", `role "box" {
  group "ops" {
    members = ["alice"]
  }
  user "alice" {
    groups = ["adm"]
  }
  sysctl "net.ipv4.tcp_fin_timeout" {
    value = 42
  }
  firewall {
    allowed_tcp_ports = [8080]
  }
  service "web" {
    exec_start = "/bin/sleep infinity"
  }
}
`+"\n"+e2e.HostBlock(nw.Hosts[0], "  hostname = \"box1\"\n  role \"box\" {}\n"))
	fl.Commit(t, "first")
	r.JSON(t, "", target).Want(t, 0)
	const state = "sysctl -n net.ipv4.tcp_fin_timeout; id -nG alice | tr ' ' '\\n' | sort | tr '\\n' ' '; echo; " +
		"getent group ops | cut -d: -f4; hostname; cat /etc/hostname; systemctl is-active web.service; " +
		"nft list chain inet deploy input | grep -c 'tcp dport'"
	const want = "42\nadm alice ops \nalice\nbox1\nbox1\nactive\n1\n"
	if got := h.Succeed(state); got != want {
		t.Fatalf("after the first deploy the host is\n%s\nwant\n%s", got, want)
	}
	r.Text(t, "verify", target).Want(t, 0)

	h.Succeed("sysctl -w net.ipv4.tcp_fin_timeout=60; gpasswd -d alice ops; gpasswd -d alice adm; " +
		"nft add rule inet deploy input tcp dport 9999 accept; nft chain inet deploy input '{ policy accept; }'; hostname other; echo other >/etc/hostname; " +
		"systemctl stop web.service; systemctl mask --force web.service")

	// verify names each kind, in the JSON and in its text.
	res := r.JSON(t, "verify", target).Want(t, ExitDrifted).Results()
	hr := res["h1"]
	if hr.Result != fleet.ResultDrifted || hr.Drift == nil {
		t.Fatalf("verify: h1 %+v, want drifted", hr)
	}
	wantItems := []agentapi.DriftItem{
		{Kind: "user", Name: "alice", Problem: "groups", Want: "adm", Got: "(none)"},
		{Kind: "group", Name: "ops", Problem: "members", Want: "alice", Got: "(none)"},
		{Kind: "sysctl", Name: "net.ipv4.tcp_fin_timeout", Problem: "value", Want: "42", Got: "60"},
		{Kind: "firewall", Name: "inet deploy", Problem: "rules"},
		{Kind: "unit", Name: "web.service", Problem: "unit-file", Got: "/dev/null"},
		{Kind: "unit", Name: "web.service", Problem: "masked"},
		{Kind: "unit", Name: "web.service", Problem: "inactive", Want: "active", Got: "inactive/dead"},
		{Kind: "hostname", Name: "kernel", Problem: "value", Want: "box1", Got: "other"},
		{Kind: "hostname", Name: "/etc/hostname", Problem: "value", Want: "box1", Got: "other"},
	}
	got := hr.Drift.Items
	for _, w := range wantItems {
		if !slices.ContainsFunc(got, func(it agentapi.DriftItem) bool {
			return it.Kind == w.Kind && it.Name == w.Name && it.Problem == w.Problem && (w.Want == "" || it.Want == w.Want) && (w.Got == "" || it.Got == w.Got)
		}) {
			t.Errorf("verify: the drift %+v lacks %+v", got, w)
		}
	}
	if len(got) != len(wantItems) {
		t.Errorf("verify: %d drift items, want %d: %+v", len(got), len(wantItems), got)
	}
	out := r.Text(t, "verify", target).Want(t, ExitDrifted).Stdout
	for _, s := range []string{"sysctl net.ipv4.tcp_fin_timeout: value (is 60, want 42)", "group ops: members (is (none), want alice)",
		"user alice: groups (is (none), want adm)", "firewall inet deploy: rules", "hostname kernel: value (is other, want box1)", "unit web.service: masked"} {
		if !strings.Contains(out, s) {
			t.Errorf("verify output lacks %q:\n%s", s, out)
		}
	}
	if out := r.Text(t, "status", "--drift", target).Want(t, 0).Stdout; !strings.Contains(out, "sysctl net.ipv4.tcp_fin_timeout: value") {
		t.Errorf("status --drift does not show the drift:\n%s", out)
	}

	// A dry run plans the repair: the unit it starts and each item, in
	// its events, its text, and under --format github as an annotation
	// and in the step summary; it changes nothing.
	dry := r.JSON(t, "", "--dry-run", target).Want(t, 0).Events
	i := slices.IndexFunc(dry, func(ev fleet.Event) bool { return ev.Type == fleet.EventPlan && ev.Host == "h1" })
	if i < 0 {
		t.Fatal("deploy --dry-run: no plan for h1")
	}
	if plan := dry[i]; !slices.Equal(plan.Start, []string{"web.service"}) || len(plan.Repair) != len(got) {
		t.Errorf("deploy --dry-run: plan starts %v and repairs %q; want web.service started and the %d drift items", plan.Start, plan.Repair, len(got))
	}
	for _, it := range got {
		if !slices.Contains(dry[i].Repair, it.String()) {
			t.Errorf("deploy --dry-run: the plan's repair %q lacks %q", dry[i].Repair, it)
		}
	}
	text := r.Text(t, "", "--dry-run", target).Want(t, 0).Output()
	for _, s := range []string{"units start [web.service]", "would repair 9 drifted: ", "sysctl net.ipv4.tcp_fin_timeout: value (is 60, want 42)"} {
		if !strings.Contains(text, s) {
			t.Errorf("deploy --dry-run output lacks %q:\n%s", s, text)
		}
	}
	summary := filepath.Join(t.TempDir(), "step_summary.md")
	gh := r.With("GITHUB_STEP_SUMMARY="+summary).Text(t, "", "--dry-run", "--format", "github", target).Want(t, 0)
	if !strings.Contains(gh.Stderr, "::warning title=h1 drifted::h1 drifted from its generation 1 (a deploy would repair it): ") ||
		!strings.Contains(gh.Stderr, "sysctl net.ipv4.tcp_fin_timeout: value (is 60, want 42)") {
		t.Errorf("deploy --dry-run --format github: no drift annotation on stderr:\n%s", gh.Stderr)
	}
	md, _ := os.ReadFile(summary)
	for _, s := range []string{"| h1 | planned | ", "`web.service`", "| 9 |\n", "Drift the deploy repairs:", "- `sysctl net.ipv4.tcp_fin_timeout: value (is 60, want 42)`",
		"- `hostname kernel: value (is other, want box1)`", "- `unit web.service: masked"} {
		if !strings.Contains(string(md), s) {
			t.Errorf("step summary of deploy --dry-run --format github lacks %q:\n%s", s, md)
		}
	}
	if got := h.Succeed("sysctl -n net.ipv4.tcp_fin_timeout; hostname"); got != "60\nother\n" {
		t.Errorf("the dry run changed the host: %q", got)
	}

	// A deploy repairs each, and says so (under --format github as well
	// in an annotation and the step summary).
	os.Remove(summary)
	redeploy := r.With("GITHUB_STEP_SUMMARY="+summary).JSON(t, "", "--format", "github", target).Want(t, 0)
	events := redeploy.Events
	if !strings.Contains(redeploy.Stderr, "::warning title=h1 drifted::h1 drifted from its generation 1 (the deploy re-applied its system: ok): ") {
		t.Errorf("deploy --format github: no drift annotation on stderr:\n%s", redeploy.Stderr)
	}
	if md, _ := os.ReadFile(summary); !strings.Contains(string(md), "## deploy: drift\n") || !strings.Contains(string(md), "- `group ops: members (is (none), want alice)`") {
		t.Errorf("step summary of deploy --format github:\n%s\nwant the drift", md)
	}
	if res := cli.Results(events); res["h1"].Result != fleet.ResultOK || res["h1"].Generation != 1 {
		t.Errorf("redeploy: h1 %+v, want ok at generation 1 (the same system, re-applied)", res["h1"])
	}
	if got := h.Succeed("readlink /etc/systemd/system/web.service"); !strings.HasPrefix(got, "/var/lib/deploy/store/") {
		t.Errorf("after the redeploy web.service's unit file is %q, want the generation's store path", got)
	}
	if got := h.Succeed(state); got != want {
		t.Errorf("after the redeploy the host is\n%s\nwant\n%s", got, want)
	}
	for _, s := range []string{"firewall: table inet deploy drifted from the ruleset", "hostname box1 (it was other)"} {
		if !slices.ContainsFunc(events, func(ev fleet.Event) bool { return ev.Type == fleet.EventLog && strings.Contains(ev.Message, s) }) {
			t.Errorf("redeploy: no log line %q", s)
		}
	}
	if out := r.Text(t, "verify", target).Want(t, 0).Stdout; !strings.Contains(out, "h1: no drift from generation 1") {
		t.Errorf("verify after the redeploy:\n%s", out)
	}
	// A host without drift is left alone.
	if res := r.JSON(t, "", target).Want(t, 0).Results(); res["h1"].Result != fleet.ResultUnchanged {
		t.Errorf("a deploy after the repair: h1 is %s, want unchanged", res["h1"].Result)
	}
}
