package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// TestBudgetE2E: a deployment's max_unavailable on three vmtest hosts, two
// of them tagged db with a budget of one, all in one batch.
//
//   - The two db hosts activate one after the other (the second's
//     activation starts after the first's result), the web host beside
//     them; every host ends ok.
//   - One db host cut off before the next deploy (max_failures = 1 lets
//     the run go on): it may be down, so it spends @db's budget and the
//     other db host is skipped, saying why, and keeps its generation; the
//     web host is deployed. Exit 4 (a host unreachable).
func TestBudgetE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 3)
	hosts := withTest(t, nw.Hosts)
	fl := e2e.NewFleet(t, nw, hosts...)
	r := cli.New(t, nw, fl)
	db1, db2, web := hosts[0], hosts[1], hosts[2]
	write := func(greeting string) {
		var b strings.Builder
		fmt.Fprintf(&b, `deployment "prod" {
  hosts           = [%s]
  batch_size      = "100%%"
  canary          = 0
  max_failures    = 1
  max_unavailable = { "@db" = 1 }
}

role "app" {
  file "/etc/app/greeting" {
    content = "%s\n"
  }
}
`, fl.Names(), greeting)
		for _, h := range hosts {
			tag := "web"
			if h != web {
				tag = "db"
			}
			b.WriteString("\n" + e2e.HostBlock(h, fmt.Sprintf("  roles    = [role.app]\n  tags     = [%q]\n", tag)))
		}
		fl.Write(t, "fleet.hcl", b.String())
	}
	prod := fl.Target("prod")

	write("one")
	run := r.JSON(t, "", prod).Want(t, 0)
	// Where each host's activation starts and its result comes, in the
	// event stream's order.
	at := func(events []fleet.Event, host string, ok func(fleet.Event) bool) int {
		return slices.IndexFunc(events, func(ev fleet.Event) bool { return ev.Host == host && ok(ev) })
	}
	started := func(ev fleet.Event) bool {
		return ev.Type == fleet.EventPhase && ev.Phase == fleet.PhaseActivate && ev.State == "started"
	}
	result := func(ev fleet.Event) bool { return ev.Type == fleet.EventResult }
	s1, e1 := at(run.Events, db1.Name(), started), at(run.Events, db1.Name(), result)
	s2, e2 := at(run.Events, db2.Name(), started), at(run.Events, db2.Name(), result)
	if s1 < 0 || s2 < 0 || e1 < 0 || e2 < 0 {
		t.Fatalf("db hosts' activations not in the events:\n%s", run.Stdout)
	}
	if !(e1 < s2 || e2 < s1) {
		t.Errorf("the db hosts activated at once (events %d-%d and %d-%d), want one after the other", s1, e1, s2, e2)
	}
	if !slices.ContainsFunc(run.Events, func(ev fleet.Event) bool {
		return ev.Type == fleet.EventLog && strings.Contains(ev.Message, "max_unavailable: at most 1 of the hosts of @db ("+db1.Name()+", "+db2.Name()+") activate at once")
	}) {
		t.Errorf("the run does not state the budget:\n%s", run.Stdout)
	}
	for _, h := range hosts {
		if got := h.Succeed("cat /etc/app/greeting"); got != "one\n" {
			t.Errorf("%s: greeting %q, want one", h.Name(), got)
		}
	}

	write("two")
	before := db2.Succeed("readlink /run/deploy/current-system")
	db1.Cut()
	run = r.JSON(t, "", prod)
	db1.Restore()
	run.Want(t, ExitUnreachable)
	res := run.Results()
	if got := res[db1.Name()]; got.Result != fleet.ResultUnreachable {
		t.Errorf("%s: %+v, want unreachable", db1.Name(), got)
	}
	want := "max_unavailable for @db is 1 (1 host) and this host may be down (" + db1.Name() + "): not changed"
	if got := res[db2.Name()]; got.Result != fleet.ResultSkipped || got.Message != want {
		t.Errorf("%s: %+v, want skipped with %q", db2.Name(), got, want)
	}
	if got := res[web.Name()]; got.Result != fleet.ResultOK {
		t.Errorf("%s: %+v, want ok", web.Name(), got)
	}
	if got := db2.Succeed("readlink /run/deploy/current-system; cat /etc/app/greeting"); got != before+"one\n" {
		t.Errorf("%s after the skip: %q, want its system and greeting unchanged (%q)", db2.Name(), got, before+"one\n")
	}
	if got := web.Succeed("cat /etc/app/greeting"); got != "two\n" {
		t.Errorf("%s: greeting %q, want two", web.Name(), got)
	}
}
