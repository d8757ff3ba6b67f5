package builder

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// examples/inventory, whose hosts come from a recorded terraform output
// -json through hosts_from (from the file, and from a command printing
// it), makes the hosts that the same hand-written host blocks make, and
// they build the same systems.
func TestHostsFromTerraform(t *testing.T) {
	example := filepath.Join("..", "examples", "inventory")
	read := func(name string) string {
		data, err := os.ReadFile(filepath.Join(example, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	roles, inventory := read("roles.hcl"), read("hosts.hcl")
	byHand := `
host "web-1" {
  address  = "203.0.113.11"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEwOr/07GSd2uKe/mtaW7R+szfAMzg4hdi7e9OBdXEeA"
  tags     = ["web", "prod", "eu-central-1"]
  meta     = { az = "eu-central-1a", private_ip = "10.0.1.11" }
  hostname = "web-1.example"
  role "web" {
    size = "large"
  }
}

host "web-2" {
  address  = "203.0.113.12"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHuRyhVfXy8756aAbsLJesCAKzUIZtmn2SxWRoUVSrKj"
  tags     = ["web", "prod", "eu-central-1"]
  meta     = { az = "eu-central-1b", private_ip = "10.0.2.12" }
  hostname = "web-2.example"
  role "web" {
    size = "small"
  }
}

host "db-1" {
  address  = "10.0.3.21"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjNe/wOfdVpMy5Z8DJE5nwjPi1r8M4jicLp5nr6T9Tb"
  tags     = ["db", "prod"]
  roles    = [role.db]
}
`
	want := load(t, writeFleet(t, map[string]string{"roles.hcl": roles, "hosts.hcl": byHand}))
	b := newTestBuilder(t, t.TempDir())
	fromCommand := strings.ReplaceAll(inventory, `source   = "terraform-output.json"`, `command  = ["cat", "terraform-output.json"]`)
	if fromCommand == inventory {
		t.Fatal("examples/inventory/hosts.hcl no longer reads terraform-output.json")
	}
	for _, tt := range []struct{ name, hosts string }{{"source", inventory}, {"command", fromCommand}} {
		got := load(t, writeFleet(t, map[string]string{"roles.hcl": roles, "hosts.hcl": tt.hosts, "terraform-output.json": read("terraform-output.json")}))
		if !cmp.Equal(names(got.Hosts), names(want.Hosts)) {
			t.Fatalf("%s: hosts %v, want %v", tt.name, names(got.Hosts), names(want.Hosts))
		}
		for i, w := range want.Hosts {
			g := got.Hosts[i]
			type basics struct {
				Name, Address, HostKey, SSHUser, Transport, Arch string
				Port                                             int
				Tags                                             []string
				Meta                                             map[string]string
			}
			of := func(h *Host) basics {
				return basics{h.Name, h.Address, h.HostKey, h.SSHUser, h.Transport, h.Arch, h.Port, h.Tags, h.Meta}
			}
			if diff := cmp.Diff(of(w), of(g)); diff != "" {
				t.Errorf("%s: host %s (-hand-written +inventory):\n%s", tt.name, w.Name, diff)
			}
			ws, gs := build(t, b, want, w.Name).SystemPath, build(t, b, got, g.Name).SystemPath
			if ws != gs {
				t.Errorf("%s: host %s builds %s, the hand-written one %s", tt.name, w.Name, gs, ws)
			}
		}
		if d, ok := got.Deployment("prod"); !ok || !cmp.Equal(d.Hosts, []string{"db-1", "web-1", "web-2"}) {
			t.Errorf("%s: deployment prod selects %v, want every host (@prod)", tt.name, d)
		}
	}
	// The systems differ by what the document says: not one path for
	// every host.
	if a, c := build(t, b, want, "web-1").SystemPath, build(t, b, want, "web-2").SystemPath; a == c {
		t.Errorf("web-1 and web-2 build one system %s", a)
	}
}

func names(hs []*Host) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out
}

// Every mistake names the inventory, the document and, for an element's,
// the element.
func TestHostsFromErrors(t *testing.T) {
	doc := `{"servers": {"value": [{"name": "a", "ip": "10.0.0.1"}, {"name": "b"}]}}`
	for _, tt := range []struct {
		name, body, want string
	}{
		{"missing-field", `source = "inv.json"
  for_each = document.servers.value
  name     = each.value.name
  address  = each.value.ip`, `fleet.hcl:7,24-27: Unsupported attribute; This object does not have an attribute named "ip". (hosts_from "x": inv.json, element [1] of for_each)`},
		{"not-a-list", `source = "inv.json"
  for_each = document.servers.value[0].name
  name     = each.value.name
  address  = "10.0.0.1"`, `hosts_from "x": for_each must be a list or an object of inv.json (one host per element), not string`},
		{"both", `source = "inv.json"
  command  = ["cat", "inv.json"]
  for_each = document.servers.value
  name     = each.value.name`, `needs one of source = "FILE.json"`},
		{"no-name", `source = "inv.json"
  for_each = document.servers.value`, `needs for_each = document.SOME.LIST`},
		{"not-json", `source = "fleet.hcl"
  for_each = document.servers.value
  name     = each.value.name`, `hosts_from "x": fleet.hcl is not a JSON document`},
		{"no-file", `source = "nope.json"
  for_each = document.servers.value
  name     = each.value.name`, `hosts_from "x": open `},
		{"command-fails", `command = ["sh", "-c", "echo terraform: no state >&2; exit 1"]
  for_each = document.servers.value
  name     = each.value.name`, `sh -c echo terraform: no state >&2; exit 1: exit status 1: terraform: no state`},
		{"bad-name", `source = "inv.json"
  for_each = document.servers.value
  name     = "-${each.value.name}"
  address  = "10.0.0.1"`, `"-a" is not a valid host name`},
		{"duplicate", `source = "inv.json"
  for_each = document.servers.value
  name     = "h"
  address  = "10.0.0.1"`, `hosts_from "x" makes host "h", which is already defined at`},
		{"resource", `source = "inv.json"
  for_each = document.servers.value
  name     = each.value.name
  address  = "10.0.0.1"
  file "/etc/x" {
    content = "x"
  }`, `a file block here would be evaluated without each`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fleet := `host "h" {
  address = "10.0.0.9"
}
hosts_from "x" {
  ` + tt.body + `
}
`
			if tt.name == "missing-field" {
				fleet = "hosts_from \"x\" {\n  " + tt.body + "\n}\n"
				fleet = "\n\n" + fleet
			}
			_, diags := Load(writeFleet(t, map[string]string{"fleet.hcl": fleet, "inv.json": doc}))
			if !diags.HasErrors() {
				t.Fatalf("no error")
			}
			want := tt.want
			if !strings.Contains(diags.Error(), want) {
				t.Errorf("%v\nwant an error containing %q", diags, want)
			}
		})
	}
}
