package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// pushGCSwitchE2E: a pushed system is a GC root until it is activated: --mode
// push, then a gc on the host (deploy-agent gc) and from the operator
// (deploy gc), then --mode switch copies nothing and activates it. status
// shows the pushed system; gc --drop-pushed removes it.
func pushGCSwitchE2E(t *testing.T, nw *vmtest.Network, h *vmtest.Host) {
	fl := e2e.NewFleet(t, nw, h)
	fleetDir := fl.Dir
	r := cli.New(t, nw, fl)
	// run runs the host command cmd ("" for deploy itself), which must
	// succeed.
	run := func(cmd string, args ...string) []fleet.Event {
		t.Helper()
		return r.JSON(t, cmd, args...).Want(t, 0).Events
	}
	status := func() *agentapi.Status {
		t.Helper()
		for _, ev := range run("status", fleetDir+"#prod") {
			if ev.Type == fleet.EventResult && ev.Status != nil {
				return ev.Status
			}
		}
		t.Fatal("status: no status event")
		return nil
	}
	systemOf := func(events []fleet.Event) string {
		for _, ev := range events {
			if ev.Type == fleet.EventResult && ev.System != "" {
				return ev.System
			}
		}
		t.Fatal("no system in the events")
		return ""
	}
	copied := func(events []fleet.Event) int {
		for _, ev := range events {
			if ev.Type == fleet.EventPhase && ev.Phase == fleet.PhaseCopy && ev.State == "done" {
				return ev.CopyPaths
			}
		}
		t.Fatal("no copy in the events")
		return -1
	}

	rolloutFleet(t, fl, "one", nil)
	run("", "--mode", "switch", fleetDir+"#prod")
	rolloutFleet(t, fl, "two", nil)
	two := systemOf(run("", "--mode", "push", fleetDir+"#prod"))
	if st := status(); len(st.Pushed) != 1 || st.Pushed[0].System != two {
		t.Fatalf("status after the push: pushed %+v, want %s", st.Pushed, two)
	}

	// A gc on the host, by hand, and one from the operator.
	out := h.Succeed("/run/deploy/current-system/agent/bin/deploy-agent gc --keep 1 --json")
	var gc agentapi.GCResult
	if err := json.Unmarshal([]byte(out), &gc); err != nil || len(gc.Pushed) != 0 {
		t.Fatalf("deploy-agent gc: %s (%v); want no pushed system dropped", out, err)
	}
	for _, ev := range run("gc", "--keep", "1", fleetDir+"#prod") {
		if ev.Type == fleet.EventResult && ev.GC != nil && len(ev.GC.Pushed) != 0 {
			t.Fatalf("deploy gc dropped %v", ev.GC.Pushed)
		}
	}
	h.Succeed("test -d " + two + " && /run/deploy/current-system/agent/bin/deploy-agent verify")

	// The switch copies nothing and activates the pushed system.
	events := run("", "--mode", "switch", fleetDir+"#prod")
	if n := copied(events); n != 0 {
		t.Fatalf("the switch after the push copied %d paths, want 0", n)
	}
	if got := h.Succeed("cat /etc/web/greeting"); got != "two\n" {
		t.Fatalf("greeting %q after the switch", got)
	}
	if st := status(); len(st.Pushed) != 0 {
		t.Fatalf("status after the activation: pushed %+v, want none (a generation holds it)", st.Pushed)
	}

	// gc --drop-pushed removes a pushed system.
	rolloutFleet(t, fl, "three", nil)
	three := systemOf(run("", "--mode", "push", fleetDir+"#prod"))
	var dropped []string
	for _, ev := range run("gc", "--drop-pushed", fleetDir+"#prod") {
		if ev.Type == fleet.EventResult && ev.GC != nil {
			dropped = ev.GC.Pushed
		}
	}
	if len(dropped) != 1 || dropped[0] != three {
		t.Fatalf("gc --drop-pushed dropped %v, want [%s]", dropped, three)
	}
	h.Fail("test -e " + three)
	if st := status(); len(st.Pushed) != 0 {
		t.Fatalf("pushed after --drop-pushed: %+v", st.Pushed)
	}
	if !strings.HasSuffix(two, "-system-"+h.Name()) {
		t.Fatalf("unexpected system path %s", two)
	}
}

// futureGenerationRefusedE2E: a rollback to a generation created by
// a newer agent (a higher agent API version in its metadata) is refused
// before anything changes: by deploy rollback, whose answer from that
// generation's agent it could not read, and by an older agent on the host,
// which could not apply it safely.
func futureGenerationRefusedE2E(t *testing.T, nw *vmtest.Network, h *vmtest.Host) {
	fl := e2e.NewFleet(t, nw, h)
	r := cli.New(t, nw, fl)
	for _, g := range []string{"one", "two"} {
		rolloutFleet(t, fl, g, nil)
		r.JSON(t, "", "--mode", "switch", fl.Target("prod")).Want(t, 0)
	}
	// Generation 1 as a future agent would have recorded it.
	h.Succeed(`f=/var/lib/deploy/profiles/system-1.json; if grep -q '"agent_api"' $f; then sed -i 's/"agent_api": [0-9]*/"agent_api": 2/' $f; else sed -i 's/^{/{\n  "agent_api": 2,/' $f; fi; grep -q '"agent_api": 2' $f`)
	snapshot := func() string {
		return h.Succeed("readlink /run/deploy/current-system; readlink /var/lib/deploy/profiles/system; cat /etc/web/greeting; ls /var/lib/deploy/log; ls /var/lib/deploy/profiles; cat /var/lib/deploy/applied.json")
	}
	before := snapshot()

	// Failed: exit 3.
	run := r.JSON(t, "rollback", "--to", "1", fl.Target(h.Name())).Want(t, ExitRolledBack)
	events, code, stderr := run.Events, run.Code, run.Stderr
	var res *fleet.Event
	for i, ev := range events {
		if ev.Type == fleet.EventResult {
			res = &events[i]
		}
	}
	if res == nil || res.Result != fleet.ResultFailed || !strings.Contains(res.Error, "agent API version 2") || !strings.Contains(res.Error, "upgrade deploy") {
		t.Fatalf("deploy rollback --to 1: exit %d, result %+v, want failed naming the agent API and the upgrade\n%s", code, res, stderr)
	}
	if after := snapshot(); after != before {
		t.Fatalf("deploy rollback changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	out, err := h.Run(t.Context(), "/run/deploy/current-system/agent/bin/deploy-agent rollback --to 1 2>&1")
	if err == nil || !strings.Contains(out, "newer than this one") {
		t.Fatalf("deploy-agent rollback --to 1: %v\n%s\nwant a refusal", err, out)
	}
	if after := snapshot(); after != before {
		t.Fatalf("deploy-agent rollback changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
