package builder

import (
	"errors"
	"strings"
	"testing"
)

const imageHostFleet = `
role "web" {
  service "web" {
    exec_start = "/bin/sleep infinity"
  }
}
role "two" {
  service "a" {
    exec_start = "/bin/sleep 1"
  }
  service "b" {
    exec_start = "/bin/sleep 2"
  }
}
role "db" {}
host "web1" {
  address = "192.0.2.1"
  roles   = [role.web]
}
host "web2" {
  address = "192.0.2.2"
  arch    = "arm64"
  roles   = [role.web]
}
host "db" {
  address = "192.0.2.3"
  roles   = [role.db]
}
deployment "prod" {
  hosts = ["web1", "web2"]
}
`

// ImageHost: a host by its name, a role alone as a host, a host before a
// role of the same name; a name that selects other than one host or an
// architecture that is not the host's is the request's error, an unknown
// name the fleet's diagnostic.
func TestImageHost(t *testing.T) {
	f := load(t, writeFleet(t, map[string]string{"fleet.hcl": imageHostFleet}))
	for _, tt := range []struct {
		name, arch     string
		host, hostArch string
		err, diag      string
	}{
		{name: "web1", host: "web1", hostArch: "amd64"},
		{name: "web2", arch: "arm64", host: "web2", hostArch: "arm64"},
		{name: "web", host: "role-web", hostArch: "amd64"},
		{name: "two", arch: "riscv64", host: "role-two", hostArch: "riscv64"},
		{name: "db", host: "db", hostArch: "amd64"},
		{name: "prod", err: `"prod" selects 2 hosts; name one host or role`},
		{name: "web2", arch: "amd64", err: "--arch amd64: host web2 is arm64"},
		{name: "nope", diag: "nope"},
	} {
		h, diags, err := f.ImageHost(tt.name, tt.arch)
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ImageHost(%q, %q) = %v, want error %q", tt.name, tt.arch, err, tt.err)
			}
		case tt.diag != "":
			if !diags.HasErrors() || !strings.Contains(diags.Error(), tt.diag) {
				t.Errorf("ImageHost(%q, %q) = %v, want a diagnostic naming %q", tt.name, tt.arch, diags, tt.diag)
			}
		case err != nil || diags.HasErrors():
			t.Errorf("ImageHost(%q, %q) = %v, %v", tt.name, tt.arch, diags, err)
		case h.Name != tt.host || h.Arch != tt.hostArch:
			t.Errorf("ImageHost(%q, %q) = host %s (%s), want %s (%s)", tt.name, tt.arch, h.Name, h.Arch, tt.host, tt.hostArch)
		}
	}
}

// ImageConfig runs the only service, or the one named; with several and
// none named, nothing, and says so.
func TestImageConfig(t *testing.T) {
	f := load(t, writeFleet(t, map[string]string{"fleet.hcl": imageHostFleet}))
	b := newTestBuilder(t, t.TempDir())
	web := build(t, b, f, "web1")
	cfg, notes, err := b.ImageConfig(web, "")
	if err != nil || len(cfg.Entrypoint) != 2 || cfg.Entrypoint[0] != "/bin/sleep" || cfg.Labels["dev.deploy.service"] != "web.service" || len(notes) != 0 {
		t.Errorf("ImageConfig(web1) = %+v, %q, %v; want web.service's command", cfg, notes, err)
	}
	if _, _, err := b.ImageConfig(web, "db"); !errors.As(err, new(*NoServiceError)) {
		t.Errorf("ImageConfig(web1, db) = %v, want a *NoServiceError", err)
	}
	h, _, _ := f.ImageHost("two", "")
	two := build(t, b, f, h.Name)
	cfg, notes, err = b.ImageConfig(two, "")
	if err != nil || cfg.Entrypoint != nil || len(notes) != 1 || !strings.Contains(notes[0], "has 2 services") {
		t.Errorf("ImageConfig(role two) = %+v, %q, %v; want no entrypoint and a note", cfg, notes, err)
	}
	if cfg, _, err = b.ImageConfig(two, "b"); err != nil || cfg.Labels["dev.deploy.service"] != "b.service" {
		t.Errorf("ImageConfig(role two, b) = %+v, %v; want b.service", cfg, err)
	}
}
