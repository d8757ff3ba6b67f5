package builder

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/secrets"
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

// The fleet's secrets/revoked reaches every manifest (sorted), a new line
// there changes the system path, and a secret whose ciphertext is revoked
// does not build.
func TestBuildCarriesRevokedSecrets(t *testing.T) {
	v1, v2 := "age ciphertext v1", "age ciphertext v2"
	other := "sha256:" + strings.Repeat("2", 64)
	fleet := `
host "web1" {
  address = "192.0.2.1"
  secret "db" {
    source = "secrets/db.age"
  }
}
`
	dir := writeFleet(t, map[string]string{"fleet.hcl": fleet, "secrets/db.age": v2})
	b := newTestBuilder(t, t.TempDir())
	before := build(t, b, load(t, dir), "web1")
	if len(before.Manifest.RevokedSecrets) != 0 {
		t.Fatalf("without secrets/revoked: RevokedSecrets = %v, want none", before.Manifest.RevokedSecrets)
	}
	revoked := func(vs ...string) string {
		s := "# comment\n\n"
		for _, v := range vs {
			s += v + " secrets/db.age 2026-12-07T04:00:00Z\n"
		}
		return s
	}
	old := manifest.SecretVersion([]byte(v1))
	if err := os.WriteFile(filepath.Join(dir, secrets.RevokedFile), []byte(revoked(other, old)), 0o644); err != nil {
		t.Fatal(err)
	}
	after := build(t, b, load(t, dir), "web1")
	want := []string{old, other}
	slices.Sort(want)
	if diff := cmp.Diff(want, after.Manifest.RevokedSecrets); diff != "" {
		t.Errorf("RevokedSecrets (-want +got):\n%s", diff)
	}
	if after.SystemPath == before.SystemPath {
		t.Errorf("system path %s did not change with the revocation list", after.SystemPath)
	}
	data, err := os.ReadFile(b.Store.RealPath(after.SystemPath) + "/" + manifest.FileName)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"revoked_secrets"`) || !strings.Contains(string(data), old) {
		t.Errorf("manifest.json of %s lacks the revocation list:\n%s", after.SystemPath, data)
	}

	// The current version revoked: a build error at the source.
	if err := os.WriteFile(filepath.Join(dir, secrets.RevokedFile), []byte(revoked(old, manifest.SecretVersion([]byte(v2)))), 0o644); err != nil {
		t.Fatal(err)
	}
	_, diags := b.Build(context.Background(), load(t, dir), "web1")
	if !diags.HasErrors() || diags[0].Summary != "Revoked secret version" || diags[0].Subject == nil {
		t.Errorf("Build with the current version revoked = %v, want the error \"Revoked secret version\" at the source", diags)
	}
	// A malformed list: a load error naming its line.
	if err := os.WriteFile(filepath.Join(dir, secrets.RevokedFile), []byte("sha256:00 secrets/db.age 2026-12-07T04:00:00Z\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, diags := Load(dir); !diags.HasErrors() || diags[0].Subject == nil || diags[0].Subject.Start.Line != 1 {
		t.Errorf("Load with a malformed secrets/revoked = %v, want an error at line 1", diags)
	}
}
