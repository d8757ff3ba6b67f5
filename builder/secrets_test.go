package builder

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/secrets"
	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/hcl/v2"
	"golang.org/x/crypto/ssh"
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

// sshKey returns a new ssh-ed25519 public key line.
func sshKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// Check reads each used secret file's header, without decrypting: a host
// that could not decrypt a file is an error at the secret's source naming
// the host and what is missing; a file stale only for admins is a warning.
func TestCheckSecrets(t *testing.T) {
	k1, k2, admin, gone := sshKey(t), sshKey(t), sshKey(t), sshKey(t)
	encrypt := func(keys ...string) string {
		var rs []secrets.Recipient
		for _, k := range keys {
			rs = append(rs, secrets.Recipient{Owner: "x", Key: k})
		}
		b, err := secrets.Encrypt([]byte("s3cret"), rs)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	fleet := fmt.Sprintf(`
admin "alice" {
  keys = [%q]
}
role "app" {
  secret "good" {
    source = "secrets/good.age"
  }
}
host "web1" {
  address  = "192.0.2.1"
  host_key = %q
  roles    = [role.app]
  secret "admins-only" {
    source = "secrets/admins-only.age"
  }
  secret "admin-stale" {
    source = "secrets/admin-stale.age"
  }
}
host "web2" {
  address  = "192.0.2.2"
  host_key = "%s web2"
  roles    = [role.app]
  secret "placeholder" {
    source = "secrets/placeholder.age"
  }
  secret "missing" {
    source = "secrets/missing.age"
  }
}
host "web3" {
  address  = "192.0.2.3"
  roles    = [role.app]
}
`, admin, k1, k2)
	dir := writeFleet(t, map[string]string{"fleet.hcl": fleet,
		// web3 has no host key: only web1 and web2 can read it.
		"secrets/good.age":        encrypt(k1, k2, admin),
		"secrets/admins-only.age": encrypt(admin),
		"secrets/admin-stale.age": encrypt(k1, gone),
		"secrets/placeholder.age": "-----BEGIN AGE ENCRYPTED FILE-----\n" + base64.StdEncoding.EncodeToString([]byte("PLACEHOLDER: run deploy secrets edit placeholder\n")) + "\n-----END AGE ENCRYPTED FILE-----\n",
	})
	f := load(t, dir)
	diags := Check(context.Background(), f, "")
	type diag struct {
		Severity hcl.DiagnosticSeverity
		Summary  string
		Line     int
	}
	var got []diag
	details := map[string]string{}
	for _, d := range diags {
		got = append(got, diag{d.Severity, d.Summary, d.Subject.Start.Line})
		details[fmt.Sprint(d.Subject.Start.Line)] += d.Detail
	}
	want := []diag{
		{hcl.DiagError, "Secret a host cannot decrypt", 7},  // good.age: web3 has no host_key
		{hcl.DiagError, "Secret a host cannot decrypt", 15}, // admins-only.age: web1's key missing
		{hcl.DiagWarning, "Stale secret file", 18},          // admin-stale.age: alice missing, gone's key extra
		{hcl.DiagError, "Secret file is a placeholder", 26}, // placeholder.age
		{hcl.DiagError, "Cannot read source", 29},           // missing.age, as before (realizing the host)
	}
	if fp := keyFingerprint(k1); !strings.HasPrefix(fp, "ssh-ed25519 SHA256:") {
		t.Errorf("keyFingerprint = %q, want ssh-ed25519 SHA256:...", fp)
	}
	sortDiags := func(d []diag) {
		slices.SortFunc(d, func(a, b diag) int { return a.Line - b.Line })
	}
	sortDiags(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Check() diagnostics mismatch (-want +got):\n%s\n%v", diff, diags)
	}
	for line, words := range map[string][]string{
		"7":  {`Host "web3"`, "no ssh-ed25519 host_key", "secrets/good.age"},
		"15": {`Host "web1" cannot decrypt secrets/admins-only.age`, keyFingerprint(k1)},
		"18": {"not encrypted to admin alice", "no longer a recipient (tag "},
		"26": {"placeholder", "deploy secrets edit placeholder"},
	} {
		for _, w := range words {
			if !strings.Contains(details[line], w) {
				t.Errorf("line %s: %q does not say %q", line, details[line], w)
			}
		}
	}
}
