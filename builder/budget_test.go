package builder

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const budgetHosts = `
host "db1" {
  address = "10.0.0.1"
  tags    = ["db", "prod"]
}
host "db2" {
  address = "10.0.0.2"
  tags    = ["db", "prod"]
}
host "db3" {
  address = "10.0.0.3"
  tags    = ["db", "prod"]
}
host "web1" {
  address = "10.0.0.4"
  tags    = ["web", "prod"]
}
host "web2" {
  address = "10.0.0.5"
  tags    = ["web", "prod"]
}
host "other" {
  address = "10.0.0.6"
  tags    = ["web"]
}
`

func TestMaxUnavailable(t *testing.T) {
	for _, tt := range []struct {
		name  string
		value string
		want  []Budget
	}{
		{"number", `2`, []Budget{{Hosts: []string{"db1", "db2", "db3", "web1", "web2"}, Max: 2, Spec: "2"}}},
		{"percent", `"40%"`, []Budget{{Hosts: []string{"db1", "db2", "db3", "web1", "web2"}, Max: 2, Spec: "40%"}}},
		{"groups", `{ "@web" = "50%", "@db" = 1 }`, []Budget{
			{Group: "@db", Hosts: []string{"db1", "db2", "db3"}, Max: 1, Spec: "1"},
			// other has the tag but is not in the deployment.
			{Group: "@web", Hosts: []string{"web1", "web2"}, Max: 1, Spec: "50%"},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := load(t, writeFleet(t, map[string]string{"fleet.hcl": budgetHosts + `
deployment "prod" {
  selector        = "@prod"
  max_unavailable = ` + tt.value + `
}
`}))
			d, _ := f.Deployment("prod")
			if diff := cmp.Diff(tt.want, d.MaxUnavailable); diff != "" {
				t.Errorf("budgets (-want +got):\n%s", diff)
			}
		})
	}
}

// Each mistake is an error at the attribute's value, saying what is wrong
// and what to write.
func TestMaxUnavailableErrors(t *testing.T) {
	for _, tt := range []struct {
		value, want string
	}{
		{`0`, `fleet.hcl:29,21-22: Invalid max_unavailable; Deployment "prod": max_unavailable = "0" is not a positive number of hosts`},
		{`"150%"`, `max_unavailable = "150%" is not a positive number`},
		{`{ "db" = 1 }`, `max_unavailable key "db" is not a tag selector like "@db"`},
		{`{ "@cache" = 1 }`, `none of its hosts has the tag "cache", so the budget for @cache limits nothing. Remove it, or tag the hosts it is meant for.`},
		{`{ "@db" = [1] }`, `max_unavailable for @db is not a number or a percentage`},
		{`["@db"]`, `Deployment "prod": max_unavailable is not a number or a percentage`},
	} {
		dir := writeFleet(t, map[string]string{"fleet.hcl": budgetHosts + `
deployment "prod" {
  selector        = "@prod"
  max_unavailable = ` + tt.value + `
}
`})
		_, diags := Load(dir)
		if !diags.HasErrors() || !strings.Contains(diags.Error(), tt.want) {
			t.Errorf("max_unavailable = %s: %v, want an error containing %q", tt.value, diags, tt.want)
		}
		if tt.value != `{ "@cache" = 1 }` && !strings.Contains(diags.Error(), `Write a number of hosts or a percentage of them ("25%"), or an object of tag selectors`) {
			t.Errorf("max_unavailable = %s: %v lacks the hint", tt.value, diags)
		}
	}
}
