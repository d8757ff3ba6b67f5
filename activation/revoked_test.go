package activation

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/declarative/deploy/manifest"
)

// The decision: a secret whose version is revoked keeps the machine's
// version of the same secret when that one is not revoked, else the
// activation is refused naming the secret and the version.
func TestDecideSecrets(t *testing.T) {
	store := t.TempDir()
	src := func(content string) string {
		p := filepath.Join(store, content+".age")
		if err := os.WriteFile(p, []byte(content), 0o444); err != nil {
			t.Fatal(err)
		}
		return p
	}
	v := func(content string) string { return manifest.SecretVersion([]byte(content)) }
	sec := func(name, content string) manifest.Secret {
		return manifest.Secret{Name: name, Source: src(content), Path: "/run/deploy/secrets/" + name, Owner: "app", Group: "root", Mode: "0400"}
	}
	man := func(ss ...manifest.Secret) *manifest.Manifest { return &manifest.Manifest{Secrets: ss} }
	tests := []struct {
		name       string
		prev, next *manifest.Manifest
		revoked    []string
		want       map[string]string // name → the content installed
		kept       []string
		wantErr    string // the secret refused
	}{
		{"nothing revoked", man(sec("db", "v1")), man(sec("db", "v2")), nil, map[string]string{"db": "v2"}, nil, ""},
		{"another version revoked", man(sec("db", "v1")), man(sec("db", "v2")), []string{v("v0")}, map[string]string{"db": "v2"}, nil, ""},
		{"rollback to a revoked version keeps the running one", man(sec("db", "v2"), sec("api", "a1")), man(sec("db", "v1"), sec("api", "a1")),
			[]string{v("v1")}, map[string]string{"db": "v2", "api": "a1"}, []string{"db"}, ""},
		{"the running version is revoked too", man(sec("db", "v2")), man(sec("db", "v1")), []string{v("v1"), v("v2")}, nil, nil, "db"},
		{"the machine has no such secret", man(sec("api", "a1")), man(sec("db", "v1")), []string{v("v1")}, nil, nil, "db"},
		{"first activation", nil, man(sec("db", "v1")), []string{v("v1")}, nil, nil, "db"},
		{"same version on both sides", man(sec("db", "v1")), man(sec("db", "v1")), []string{v("v1")}, nil, nil, "db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := decideSecrets(tt.prev, tt.next, 1, tt.revoked, nil)
			if tt.wantErr != "" {
				var re *RevokedSecretError
				if !errors.As(err, &re) || re.Secret != tt.wantErr || re.Generation != 1 || !slices.Contains(tt.revoked, re.Version) {
					t.Fatalf("decideSecrets = %v, %v; want a *RevokedSecretError for %q", p, err, tt.wantErr)
				}
				for _, want := range []string{`secret "` + tt.wantErr + `" of generation 1`, re.Version, "deploy secrets edit " + tt.wantErr} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q lacks %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("decideSecrets = %v", err)
			}
			got := map[string]string{}
			for _, s := range p.Secrets {
				data, _ := os.ReadFile(s.Source)
				got[s.Name] = string(data)
				if s.Owner != "app" || s.Path != "/run/deploy/secrets/"+s.Name {
					t.Errorf("secret %q lost the generation's owner or path: %+v", s.Name, s)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("installed (-want +got):\n%s", diff)
			}
			var kept []string
			for _, k := range p.Kept {
				kept = append(kept, k.Secret)
				if k.Revoked != v("v1") || k.Kept != v("v2") {
					t.Errorf("kept %+v, want revoked v1 and kept v2", k)
				}
			}
			if !slices.Equal(kept, tt.kept) {
				t.Errorf("kept = %q, want %q", kept, tt.kept)
			}
		})
	}
}

// planSecrets records the generation's list in the host's union first (an
// older generation's shorter list shrinks nothing), and the machine
// manifest remembers a kept version, so that re-applying the generation
// (at boot, say) keeps it again instead of failing.
func TestPlanSecretsRecordAndKeep(t *testing.T) {
	store := t.TempDir()
	l := Layout{StateDir: t.TempDir(), RunDir: t.TempDir()}
	src := func(content string) string {
		p := filepath.Join(store, content+".age")
		os.WriteFile(p, []byte(content), 0o444)
		return p
	}
	v1 := manifest.SecretVersion([]byte("v1"))
	gen3 := &manifest.Manifest{Secrets: []manifest.Secret{{Name: "db", Source: src("v2")}}, RevokedSecrets: []string{v1}}
	gen1 := &manifest.Manifest{Secrets: []manifest.Secret{{Name: "db", Source: src("v1")}}}
	if _, err := l.planSecrets(nil, gen3, 3, nil); err != nil {
		t.Fatal(err)
	}
	p, err := l.planSecrets(gen3, gen1, 1, nil)
	if err != nil || len(p.Kept) != 1 || !slices.Equal(p.Revoked, []string{v1}) {
		t.Fatalf("planSecrets(gen3 → gen1) = %+v, %v; want v2 kept (the record of gen3's list)", p, err)
	}
	if got, err := l.RevokedSecrets(); err != nil || !slices.Equal(got, []string{v1}) {
		t.Errorf("the host's record = %q, %v; want [%s]", got, err, v1)
	}
	// What the machine runs after that: gen1 with v2 kept.
	machine := withKeptSources(gen1, p.sources())
	if _, err := l.planSecrets(machine, gen1, 1, nil); err != nil {
		t.Errorf("re-applying generation 1 over itself with v2 kept = %v, want v2 kept again", err)
	}
	if _, err := l.planSecrets(gen1, gen1, 1, nil); err == nil {
		t.Errorf("re-applying generation 1 over its own manifest succeeded; the decision needs the kept source")
	}
}
