package builder

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// SecretUses: every host's secrets with their files and the host's key; a
// source outside the fleet directory is one diagnostic at its attribute,
// however many hosts share it.
func TestSecretUses(t *testing.T) {
	dir := writeFleet(t, map[string]string{"fleet.hcl": `
role "app" {
  secret "db" {
    source = "./secrets/../secrets/db.age"
  }
  secret "escape" {
    source = "../outside.age"
  }
}
host "web1" {
  address  = "192.0.2.1"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEu0BqJdsVDc7rrgjEPA8T4Alwhu4THg3Rga+dDscdKW"
  roles    = [role.app]
}
host "web2" {
  address = "192.0.2.2"
  roles   = [role.app]
  secret "token" {
    source = "secrets/token.age"
  }
}
`, "secrets/stray.age": "x", "secrets/db.age": "x", "secrets/notes.txt": "x"})
	f := load(t, dir)
	uses, diags := SecretUses(context.Background(), f)
	if len(diags) != 1 || diags[0].Summary != "Secret source outside the fleet directory" || diags[0].Subject == nil ||
		diags[0].Subject.Filename != "fleet.hcl" || diags[0].Subject.Start.Line != 7 {
		t.Fatalf("SecretUses() diagnostics = %v, want one at fleet.hcl:7", diags)
	}
	type use struct{ Secret, Source, Host, HostKey string }
	var got []use
	for _, u := range uses {
		got = append(got, use{u.Secret, u.Source, u.Host, u.HostKey})
		if u.Range.Filename != "fleet.hcl" {
			t.Errorf("use %v has range %v, want its source attribute in fleet.hcl", u, u.Range)
		}
	}
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEu0BqJdsVDc7rrgjEPA8T4Alwhu4THg3Rga+dDscdKW"
	want := []use{{"db", "secrets/db.age", "web1", key}, {"db", "secrets/db.age", "web2", ""}, {"token", "secrets/token.age", "web2", ""}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("SecretUses() mismatch (-want +got):\n%s", diff)
	}
	if got, want := f.SecretFiles(), []string{"secrets/db.age", "secrets/stray.age"}; !cmp.Equal(got, want) {
		t.Errorf("SecretFiles() = %q, want %q", got, want)
	}
	os.RemoveAll(filepath.Join(dir, "secrets"))
	if got := f.SecretFiles(); len(got) != 0 {
		t.Errorf("SecretFiles() without secrets/ = %q, want none", got)
	}
}
