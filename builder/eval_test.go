package builder

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/modules"
	"github.com/google/go-cmp/cmp"
)

const evalFleet = `
defaults {
  ssh_user = "deploy"
  roles    = [role.base]
}

host "web1" {
  address = "10.0.0.1"
  tags    = ["web", "prod"]
  meta    = { rack = "r1" }
  roles   = [role.web]
}

host "web2" {
  address = "10.0.0.2"
  tags    = ["web"]
  role "web" {
    port = 9090
  }
  file "/etc/motd" {
    priority = "force"
    content  = "web2 only"
  }
}

host "db1" {
  address = "10.0.0.3"
  tags    = ["db", "prod"]
  port    = 2222
}

deployment "prod" {
  selector = "@prod"
}

role "base" {
  user "ops" {
    groups          = ["wheel"]
    authorized_keys = ["ssh-ed25519 AAAAbase ops@base"]
  }
  file "/etc/motd" {
    priority = "default"
    content  = "welcome to ${host.name} (${join(",", host.tags)})"
  }
  service "agent" {
    exec_start  = "/usr/bin/agent"
    environment = { BASE = "1" }
  }
  firewall {
    allowed_tcp_ports = [9100]
  }
}

role "web" {
  variable "port" {
    type    = number
    default = 8080
  }
  roles = [role.logging]
  user "ops" {
    groups = ["www-data"]
  }
  service "agent" {
    environment = { WEB_PORT = tostring(var.port) }
  }
  firewall {
    allowed_tcp_ports = [var.port, 443]
  }
  secret "tls" {
    source = "secrets/tls.age"
  }
  file "/etc/web/port" {
    content = format("%d %s %s", var.port, secret.tls.path, lookup(host.meta, "rack", "none"))
  }
}

role "logging" {
  file "/etc/logging" {
    content = "on"
  }
}
`

func TestEvaluate(t *testing.T) {
	dir := writeFleet(t, map[string]string{"fleet.hcl": evalFleet, "secrets/tls.age": "ciphertext"})
	f := load(t, dir)
	pb := &modules.PackageBuilder{Store: newTestBuilder(t, t.TempDir()).Store, FleetDir: f.Dir, DryRun: true}
	eval := func(host string) map[string]*modules.Resource {
		cfg, diags := f.Evaluate(context.Background(), host, pb)
		if diags.HasErrors() {
			t.Fatalf("Evaluate(%q) = %v", host, diags)
		}
		out := map[string]*modules.Resource{}
		for _, r := range cfg.Resources {
			out[r.Key()] = r
		}
		return out
	}
	web1, web2, db1 := eval("web1"), eval("web2"), eval("db1")
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"default priority loses to nothing else: host and tags", web1[`file "/etc/motd"`].String("content", ""), "welcome to web1 (prod,web)"},
		{"force wins over default", web2[`file "/etc/motd"`].String("content", ""), "web2 only"},
		{"set-like groups merge across roles", web1[`user "ops"`].Strings("groups"), []string{"wheel", "www-data"}},
		{"base role alone", db1[`user "ops"`].Strings("groups"), []string{"wheel"}},
		{"environment maps merge", web1[`service "agent"`].Map("environment"), map[string]string{"BASE": "1", "WEB_PORT": "8080"}},
		{"role argument overrides the default", web2[`service "agent"`].Map("environment")["WEB_PORT"], "9090"},
		{"ports merge as a numeric set", web1[`firewall ""`].Strings("allowed_tcp_ports"), []string{"443", "8080", "9100"}},
		{"secret path and host meta", web1[`file "/etc/web/port"`].String("content", ""), "8080 /run/deploy/secrets/tls r1"},
		{"lookup default", web2[`file "/etc/web/port"`].String("content", ""), "9090 /run/deploy/secrets/tls none"},
		{"nested role applied", web1[`file "/etc/logging"`] != nil, true},
		{"nested role not on db1", db1[`file "/etc/logging"`] == nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if h, _ := f.Host("db1"); h.Port != 2222 || h.SSHUser != "deploy" || h.Arch != "amd64" {
		t.Errorf("host db1 = %+v, want port 2222, ssh_user from defaults, arch amd64", h)
	}
	d, _ := f.Deployment("prod")
	if diff := cmp.Diff([]string{"db1", "web1"}, d.Hosts); diff != "" {
		t.Errorf("deployment prod hosts (-want +got):\n%s", diff)
	}
}

func TestSelect(t *testing.T) {
	dir := writeFleet(t, map[string]string{"fleet.hcl": evalFleet, "secrets/tls.age": "x"})
	f := load(t, dir)
	tests := []struct {
		names   []string
		want    []string
		wantErr string
	}{
		{nil, []string{"db1", "web1", "web2"}, ""},
		{[]string{"web2"}, []string{"web2"}, ""},
		{[]string{"@web"}, []string{"web1", "web2"}, ""},
		{[]string{"prod"}, []string{"db1", "web1"}, ""},
		{[]string{"prod", "web2", "@db"}, []string{"db1", "web1", "web2"}, ""},
		{[]string{"web3"}, nil, `Did you mean "web1"?`},
		{[]string{"@nothing"}, nil, `No host has the tag "nothing"`},
	}
	for _, tt := range tests {
		hosts, diags := f.Select(tt.names)
		var got []string
		for _, h := range hosts {
			got = append(got, h.Name)
		}
		if tt.wantErr != "" {
			if !diags.HasErrors() || !strings.Contains(diags.Error(), tt.wantErr) {
				t.Errorf("Select(%q) = %v, want an error containing %q", tt.names, diags, tt.wantErr)
			}
			continue
		}
		if diags.HasErrors() || !cmp.Equal(got, tt.want) {
			t.Errorf("Select(%q) = %v, %v; want %v", tt.names, got, diags, tt.want)
		}
	}
}

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in      string
		want    Selector
		wantErr bool
	}{
		{".#web1", Selector{Dir: ".", Names: []string{"web1"}}, false},
		{"#web1", Selector{Dir: ".", Names: []string{"web1"}}, false},
		{"fleet#@web,db1", Selector{Dir: "fleet", Names: []string{"@web", "db1"}}, false},
		{"fleet", Selector{Dir: "fleet"}, false},
		{".#", Selector{}, true},
		{".#web1,", Selector{}, true},
		{".#@", Selector{}, true},
	}
	for _, tt := range tests {
		got, err := ParseSelector(tt.in)
		if (err != nil) != tt.wantErr || !cmp.Equal(got, tt.want) {
			t.Errorf("ParseSelector(%q) = %+v, %v; want %+v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// Purity: no function reads the environment or files outside the fleet.
func TestEvaluationIsPure(t *testing.T) {
	tests := []struct{ expr, want string }{
		{`env("HOME")`, "Call to unknown function"},
		{`file("/etc/hostname")`, "is absolute"},
		{`file("../outside")`, "outside the fleet directory"},
		{`templatefile("link", {})`, "outside the fleet directory"},
		{`timestamp()`, "Call to unknown function"},
	}
	for _, tt := range tests {
		dir := writeFleet(t, map[string]string{"fleet.hcl": `
host "h" {
  address = "10.0.0.1"
  file "/etc/x" {
    content = ` + tt.expr + `
  }
}`})
		if err := symlinkOutside(dir); err != nil {
			t.Fatal(err)
		}
		f := load(t, dir)
		diags := Check(context.Background(), f, "")
		if !diags.HasErrors() || !strings.Contains(diags.Error(), tt.want) {
			t.Errorf("evaluating %s = %v, want an error containing %q", tt.expr, diags, tt.want)
		}
	}
}

// symlinkOutside makes dir/link point outside the fleet directory.
func symlinkOutside(dir string) error {
	return os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
}

func TestParseBatchSize(t *testing.T) {
	for _, tt := range []struct {
		in    string
		hosts int // out of 10 hosts
	}{
		{"1", 1}, {"3", 3}, {"40%", 4}, {"1%", 1}, {"100%", 10}, {"25%", 2},
	} {
		b, err := ParseBatchSize(tt.in)
		if err != nil {
			t.Errorf("ParseBatchSize(%q): %v", tt.in, err)
			continue
		}
		if got := b.Of(10); got != tt.hosts {
			t.Errorf("ParseBatchSize(%q).Of(10) = %d, want %d", tt.in, got, tt.hosts)
		}
		if b.String() != tt.in {
			t.Errorf("ParseBatchSize(%q).String() = %q", tt.in, b.String())
		}
	}
	for _, bad := range []string{"", "0", "-1", "0%", "101%", "x", "2.5"} {
		if _, err := ParseBatchSize(bad); err == nil {
			t.Errorf("ParseBatchSize(%q) succeeded", bad)
		}
	}
}

// boot_attempts and boot_timeout: a host's own, else from defaults; a
// deployment's of its own (the fleet session applies it to hosts that
// set none).
func TestBootSettings(t *testing.T) {
	dir := writeFleet(t, map[string]string{"fleet.hcl": `
defaults {
  boot_timeout = "2m"
}
host "a" {
  address       = "10.0.0.1"
  boot_attempts = 5
}
host "b" {
  address      = "10.0.0.2"
  boot_timeout = "90s"
}
deployment "prod" {
  hosts         = ["a", "b"]
  boot_attempts = 2
  boot_timeout  = "10m"
}
`})
	f := load(t, dir)
	got := map[string][2]any{}
	for _, h := range f.Hosts {
		got[h.Name] = [2]any{h.BootAttempts, h.BootTimeout.String()}
	}
	for _, d := range f.Deployments {
		got["deployment "+d.Name] = [2]any{d.BootAttempts, d.BootTimeout.String()}
	}
	want := map[string][2]any{"a": {5, "2m0s"}, "b": {0, "1m30s"}, "deployment prod": {2, "10m0s"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("boot settings (-want +got):\n%s", diff)
	}
}
