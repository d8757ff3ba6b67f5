package manifest

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDiff(t *testing.T) {
	hash := func(c string) string { return strings.Repeat(c, 64) }
	unit := func(name, restart, reload string) Unit {
		return Unit{Name: name, Source: sp(name), Start: true, RestartHash: restart, ReloadHash: reload}
	}
	tests := []struct {
		name       string
		prev, next func(m *Manifest)
		want       Difference
	}{
		{"identical", func(*Manifest) {}, func(*Manifest) {}, Difference{}},
		{
			"file content changed, added, removed",
			func(m *Manifest) {},
			func(m *Manifest) {
				m.Sort()
				m.Files[0].Source = sp("a2.conf")
				m.Files = append(m.Files[:1], File{Path: "/etc/new", Source: sp("new"), Owner: "root", Group: "root", Mode: "0600"})
			},
			Difference{Files: Changes{Added: []string{"/etc/new"}, Removed: []string{"/etc/z.conf"}, Changed: []string{"/etc/a.conf"}}},
		},
		{
			"unit actions",
			func(m *Manifest) {
				m.Units = []Unit{unit("a.service", hash("1"), ""), unit("b.service", hash("1"), hash("1")),
					unit("c.service", hash("1"), ""), unit("gone.service", hash("1"), ""), unit("hello.service", hash("0"), "")}
			},
			func(m *Manifest) {
				b := unit("b.service", hash("1"), hash("2"))
				c := unit("c.service", hash("1"), "")
				c.WantedBy = []string{"multi-user.target"}
				idle := unit("idle.service", hash("1"), "")
				idle.Start = false
				m.Units = []Unit{unit("a.service", hash("2"), ""), b, c, unit("new.service", hash("1"), ""), idle, unit("hello.service", hash("0"), "")}
			},
			Difference{Units: UnitActions{
				Stop: []string{"gone.service"}, Start: []string{"new.service"}, Restart: []string{"a.service"},
				Reload: []string{"b.service"}, Updated: []string{"c.service", "idle.service"},
			}},
		},
		{
			"changed secret restarts its units",
			func(m *Manifest) { m.Units = append(m.Units, unit("other.service", hash("0"), "")) },
			func(m *Manifest) {
				m.Units = append(m.Units, unit("other.service", hash("0"), ""))
				m.Secrets[0].Source = sp("db2.age")
			},
			Difference{Secrets: Changes{Changed: []string{"db"}}, Units: UnitActions{Restart: []string{"hello.service"}}},
		},
		{
			"packages, host basics, firewall",
			func(m *Manifest) {},
			func(m *Manifest) {
				m.Packages = append(m.Packages[:1], Package{Name: "jq", Path: sp("jq")})
				m.Packages[0].Path = sp("hello2")
				m.Hostname = "web1.example"
				m.Firewall = nil
			},
			Difference{
				Hostname: [2]string{"web1", "web1.example"},
				Packages: Changes{Added: []string{"jq"}, Removed: []string{"curl"}, Changed: []string{"hello"}},
				Firewall: true,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev, next := sample(), sample()
			tt.prev(prev)
			tt.next(next)
			got := Diff(prev, next)
			if diff := cmp.Diff(&tt.want, got); diff != "" {
				t.Errorf("Diff() mismatch (-want +got):\n%s", diff)
			}
			if got.Empty() != (tt.name == "identical") {
				t.Errorf("Diff().Empty() = %v, want %v", got.Empty(), tt.name == "identical")
			}
		})
	}
}

func TestDiffFirstActivation(t *testing.T) {
	next := sample()
	d := Diff(nil, next)
	if diff := cmp.Diff([]string{"hello.service"}, d.Units.Start); diff != "" {
		t.Errorf("Diff(nil, m).Units.Start mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"/etc/a.conf", "/etc/z.conf"}, d.Files.Added); diff != "" {
		t.Errorf("Diff(nil, m).Files.Added mismatch (-want +got):\n%s", diff)
	}
}

func TestDifferenceWrite(t *testing.T) {
	var b strings.Builder
	if err := (&Difference{}).Write(&b); err != nil || b.String() != "no changes\n" {
		t.Errorf("Difference{}.Write() = %q, %v; want %q", b.String(), err, "no changes\n")
	}
	b.Reset()
	d := &Difference{Files: Changes{Changed: []string{"/etc/a"}}, Units: UnitActions{Restart: []string{"x.service"}}}
	if err := d.Write(&b); err != nil {
		t.Fatal(err)
	}
	want := "~        file /etc/a\nrestart  unit x.service\n"
	if b.String() != want {
		t.Errorf("Write() = %q, want %q", b.String(), want)
	}
}

// A new revocation list is a difference, shown as "+ revoked VERSION".
func TestDiffRevokedSecrets(t *testing.T) {
	v := SecretVersion([]byte("v1"))
	prev := &Manifest{}
	next := &Manifest{RevokedSecrets: []string{v}}
	d := Diff(prev, next)
	if d.Empty() || len(d.RevokedSecrets.Added) != 1 || d.RevokedSecrets.Added[0] != v {
		t.Fatalf("Diff(none, [%s]) = %+v, want %s added", v, d.RevokedSecrets, v)
	}
	var b strings.Builder
	d.Write(&b)
	if want := "+        revoked " + v + "\n"; b.String() != want {
		t.Errorf("Write = %q, want %q", b.String(), want)
	}
	if !ValidSecretVersion(v) || ValidSecretVersion("sha256:"+strings.Repeat("A", 64)) || ValidSecretVersion("sha256:ab") {
		t.Errorf("ValidSecretVersion disagrees with SecretVersion's format")
	}
}

func TestDiffImages(t *testing.T) {
	a, b := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	prev := &Manifest{Images: []Image{{Digest: a, Path: "/s/a"}}}
	next := &Manifest{Images: []Image{{Digest: b, Path: "/s/b"}}}
	d := Diff(prev, next)
	if !slices.Equal(d.Images.Added, []string{b}) || !slices.Equal(d.Images.Removed, []string{a}) || d.Empty() {
		t.Errorf("Diff(images %s -> %s) = %+v", a, b, d.Images)
	}
	if d := Diff(prev, prev); !d.Empty() {
		t.Errorf("Diff(same images) = %+v, want empty", d)
	}
}
