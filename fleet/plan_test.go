package fleet

import (
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/google/go-cmp/cmp"
)

// A dry run of a drifted host plans what re-applying repairs: drifted
// files change, units that should run start (once), every item is listed.
func TestPlanWithDrift(t *testing.T) {
	d := &agentapi.Drift{Generation: 1, Items: []agentapi.DriftItem{
		{Kind: "file", Name: "/etc/b", Problem: "content"},
		{Kind: "file", Name: "/etc/a", Problem: "mode", Want: "0644", Got: "0600"},
		{Kind: "sysctl", Name: "vm.swappiness", Problem: "value", Want: "10", Got: "60"},
		{Kind: "unit", Name: "web.service", Problem: "masked"},
		{Kind: "unit", Name: "web.service", Problem: "inactive", Want: "active", Got: "inactive/dead"},
		{Kind: "unit", Name: "api.service", Problem: "failed", Want: "active", Got: "failed/failed"},
		{Kind: "unit", Name: "db.service", Problem: "inactive", Want: "active", Got: "inactive/dead"},
	}}
	prev := &Plan{Restart: []string{"db.service"}, Files: []string{"/etc/a"}}
	got := prev.withDrift(d)
	want := &Plan{Start: []string{"api.service", "web.service"}, Restart: []string{"db.service"}, Files: []string{"/etc/a", "/etc/b"},
		Repair: []string{"file /etc/b: content", "file /etc/a: mode (is 0600, want 0644)", "sysctl vm.swappiness: value (is 60, want 10)",
			"unit web.service: masked", "unit web.service: inactive (is inactive/dead, want active)", "unit api.service: failed (is failed/failed, want active)",
			"unit db.service: inactive (is inactive/dead, want active)"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("withDrift (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(&Plan{Restart: []string{"db.service"}, Files: []string{"/etc/a"}}, prev); diff != "" {
		t.Errorf("withDrift changed the plan it was called on (-want +got):\n%s", diff)
	}
	if got := (*Plan)(nil).withDrift(&agentapi.Drift{Items: []agentapi.DriftItem{{Kind: "hostname", Name: "kernel", Problem: "value", Want: "a", Got: "b"}}}); got == nil || !cmp.Equal(got.Repair, []string{"hostname kernel: value (is b, want a)"}) {
		t.Errorf("nil.withDrift = %+v, want a plan repairing the host name", got)
	}
	if got := (*Plan)(nil).withDrift(&agentapi.Drift{}); got != nil {
		t.Errorf("nil.withDrift(no drift) = %+v, want nil", got)
	}
}
