package manifest

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const sd = "/var/lib/deploy/store"

func sp(name string) string { return sd + "/" + strings.Repeat("a", 32) + "-" + name }

func sample() *Manifest {
	uid := 990
	return &Manifest{
		SchemaVersion: SchemaVersion,
		Host:          "web1",
		StoreDir:      sd,
		Agent:         sp("deploy-agent"),
		Hostname:      "web1",
		Timezone:      "UTC",
		Packages:      []Package{{Name: "hello", Path: sp("hello")}, {Name: "curl", Path: sp("curl")}},
		Groups:        []Group{{Name: "hello", System: true}},
		Users: []User{{Name: "hello", UID: &uid, System: true, Group: "hello", Groups: []string{"b", "a", "b"},
			Home: "/var/empty", Shell: "/usr/sbin/nologin"}},
		Directories: []Directory{{Path: "/var/lib/hello", Owner: "hello", Group: "hello", Mode: "0750"}},
		Files: []File{
			{Path: "/etc/z.conf", Source: sp("z.conf"), Owner: "root", Group: "root", Mode: "0644"},
			{Path: "/etc/a.conf", Source: sp("a.conf"), Owner: "root", Group: "root", Mode: "0644"},
		},
		Symlinks: []Symlink{{Path: "/usr/local/bin/hello", Target: sp("hello") + "/bin/hello"}},
		Secrets: []Secret{{Name: "db", Source: sp("db.age"), Path: "/run/deploy/secrets/db", Owner: "hello",
			Group: "hello", Mode: "0400", Units: []string{"hello.service"}}},
		Sysctls:  []Sysctl{{Key: "net.ipv4.ip_forward", Value: "1"}},
		Firewall: &Firewall{Ruleset: sp("nftables.conf"), Table: "inet deploy"},
		Units: []Unit{{Name: "hello.service", Source: sp("hello.service"), WantedBy: []string{"multi-user.target"},
			Start: true, RestartHash: strings.Repeat("0", 64)}},
		ActivationScripts: []ActivationScript{{Name: "migrate", Source: sp("migrate")}},
		HealthChecks: []HealthCheck{{Name: "http", Type: CheckHTTP, URL: "http://localhost:8080/", ExpectStatus: 200,
			TimeoutMS: 10000, IntervalMS: 500}},
		MetricGates: []MetricGate{{Name: "errors", RunOn: GateOnOperator, URL: "http://prometheus:9090", Query: "sum(rate(e[1m]))",
			Max: &gateMax, WindowMS: 60000, IntervalMS: 10000, MinSamples: 4, QueryTimeoutMS: 10000}},
	}
}

var gateMax = 0.05

func TestMarshalRoundTrip(t *testing.T) {
	m := sample()
	data, err := m.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse(Marshal()) = %v", err)
	}
	if diff := cmp.Diff(m, got); diff != "" {
		t.Errorf("Parse(Marshal(m)) differs from m (-want +got):\n%s", diff)
	}
	if m.Files[0].Path != "/etc/a.conf" || m.Users[0].Groups[0] != "a" || len(m.Users[0].Groups) != 2 {
		t.Errorf("Marshal did not sort: files %v, groups %v", m.Files, m.Users[0].Groups)
	}
	if !bytes.HasSuffix(data, []byte("}\n")) || !bytes.Contains(data, []byte(`"schema_version": 1`)) {
		t.Errorf("Marshal() = %s, want indented JSON with schema_version and a final newline", data)
	}
}

// The encoding is canonical: the order entries were added in does not
// matter, and empty lists are present.
func TestMarshalCanonical(t *testing.T) {
	a, b := sample(), sample()
	b.Files[0], b.Files[1] = b.Files[1], b.Files[0]
	b.Packages[0], b.Packages[1] = b.Packages[1], b.Packages[0]
	ja, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	jb, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ja, jb) {
		t.Errorf("Marshal depends on input order:\n%s\n%s", ja, jb)
	}
	empty := &Manifest{SchemaVersion: SchemaVersion, Host: "h", StoreDir: sd, Agent: sp("deploy-agent")}
	je, err := empty.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"files": []`, `"units": []`, `"health_checks": []`} {
		if !bytes.Contains(je, []byte(key)) {
			t.Errorf("Marshal(empty) = %s, want it to contain %s", je, key)
		}
	}
}

func TestParseRejects(t *testing.T) {
	good, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, data, want string
	}{
		{"newer version", strings.Replace(string(good), `"schema_version": 1`, `"schema_version": 2`, 1), "schema_version 2 is not supported"},
		{"no version", `{"host":"x"}`, "no schema_version"},
		{"unknown field", strings.Replace(string(good), `"host":`, `"hots": "x", "host":`, 1), `unknown field "hots"`},
		{"not json", `{`, "manifest:"},
		{"trailing", string(good) + "{}", "after top-level value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(m *Manifest)
		want   string // "" = valid
	}{
		{"sample", func(m *Manifest) {}, ""},
		{"relative file", func(m *Manifest) { m.Files[0].Path = "etc/x" }, `file path "etc/x" is not absolute`},
		{"unclean path", func(m *Manifest) { m.Directories[0].Path = "/var/../etc" }, "not absolute and clean"},
		{"bad mode", func(m *Manifest) { m.Files[0].Mode = "644" }, `mode "644" is not four octal digits`},
		{"non-octal mode", func(m *Manifest) { m.Files[0].Mode = "0948" }, "not four octal digits"},
		{"source outside store", func(m *Manifest) { m.Files[0].Source = "/tmp/x" }, `"/tmp/x" is not a store path`},
		{"same path twice", func(m *Manifest) { m.Symlinks[0].Path = m.Files[0].Path }, `duplicate path "/etc/z.conf"`},
		{"duplicate unit", func(m *Manifest) { m.Units = append(m.Units, m.Units[0]) }, `duplicate unit "hello.service"`},
		{"unit without suffix", func(m *Manifest) { m.Units[0].Name = "hello" }, "no unit type suffix"},
		{"bad check", func(m *Manifest) { m.HealthChecks[0].Type = "ping" }, `unknown type "ping"`},
		{"http check without url", func(m *Manifest) { m.HealthChecks[0].URL = "" }, "http check without url"},
		{"zero timeout", func(m *Manifest) { m.HealthChecks[0].TimeoutMS = 0 }, "timeout_ms must be positive"},
		{"user without group", func(m *Manifest) { m.Users[0].Group = "" }, "no primary group"},
		{"bad sysctl", func(m *Manifest) { m.Sysctls[0].Key = "net/ipv4" }, "not a dotted parameter name"},
		{"no agent", func(m *Manifest) { m.Agent = "" }, "agent:"},
		{"gate named as a check", func(m *Manifest) { m.MetricGates[0].Name = "http" }, `duplicate health check "http"`},
		{"gate without threshold", func(m *Manifest) { m.MetricGates[0].Max = nil }, "without min or max"},
		{"gate run where", func(m *Manifest) { m.MetricGates[0].RunOn = "ci" }, `run_on "ci" is not host or operator`},
		{"gate min_samples", func(m *Manifest) { m.MetricGates[0].MinSamples = 8 }, "min_samples 8 is not between 1 and the 7 evaluations"},
		{"gate url", func(m *Manifest) { m.MetricGates[0].URL = "prometheus:9090" }, "is not http(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sample()
			tt.change(m)
			err := m.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestStorePaths(t *testing.T) {
	got := sample().StorePaths()
	want := []string{sp("a.conf"), sp("curl"), sp("db.age"), sp("deploy-agent"), sp("hello"), sp("hello.service"),
		sp("migrate"), sp("nftables.conf"), sp("z.conf")}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("StorePaths() mismatch (-want +got):\n%s", diff)
	}
}

// ParseLenient reads a manifest with fields added by a newer version;
// Parse refuses it; neither reads another schema version.
func TestParseLenient(t *testing.T) {
	m := &Manifest{SchemaVersion: SchemaVersion, Host: "h", StoreDir: "/var/lib/deploy/store",
		Agent: "/var/lib/deploy/store/00000000000000000000000000000000-deploy-agent"}
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	newer := bytes.Replace(data, []byte(`"host": "h",`), []byte(`"host": "h", "field_of_the_future": {"x": 1},`), 1)
	if _, err := Parse(newer); err == nil {
		t.Fatal("Parse accepted an unknown field")
	}
	if got, err := ParseLenient(newer); err != nil || got.Host != "h" {
		t.Fatalf("ParseLenient = %+v, %v", got, err)
	}
	other := bytes.Replace(data, []byte(`"schema_version": 1`), []byte(`"schema_version": 2`), 1)
	if _, err := ParseLenient(other); err == nil {
		t.Fatal("ParseLenient accepted schema_version 2")
	}
}

// An older agent reads a newer manifest leniently (a rollback): a
// metric gate is a field of its own, so such an agent ignores it rather
// than refusing an unknown health check type. Simulated by a manifest
// whose gate field this version does not know either.
func TestMetricGatesIgnoredLeniently(t *testing.T) {
	data, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	renamed := bytes.Replace(data, []byte(`"metric_gates"`), []byte(`"metric_gates_of_the_future"`), 1)
	got, err := ParseLenient(renamed)
	if err != nil || len(got.MetricGates) != 0 || len(got.HealthChecks) != 1 {
		t.Fatalf("ParseLenient(a manifest with gates it does not know) = %+v, %v; want the health checks only", got, err)
	}
	if d := Diff(got, sample()); !slices.Equal(d.MetricGates.Added, []string{"errors"}) {
		t.Errorf("Diff(without, with the gate).MetricGates = %+v, want errors added", d.MetricGates)
	}
}

// revoked_secrets: Marshal sorts and dedupes it, Parse reads it back, and
// Validate refuses a malformed or unsorted list; absent, the encoding is
// what it was before the field existed.
func TestRevokedSecretsField(t *testing.T) {
	a, b := SecretVersion([]byte("a")), SecretVersion([]byte("b"))
	m := sample()
	plain, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(plain), "revoked_secrets") {
		t.Errorf("a manifest without revocations mentions them:\n%s", plain)
	}
	m.RevokedSecrets = []string{b, a, b}
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{a, b}
	if b < a {
		want = []string{b, a}
	}
	if diff := cmp.Diff(want, got.RevokedSecrets); diff != "" {
		t.Errorf("revoked_secrets after a round trip (-want +got):\n%s", diff)
	}
	for _, bad := range [][]string{{"sha256:00"}, {"md5:" + strings.Repeat("0", 64)}, {want[1], want[0]}, {a, a}} {
		m := sample()
		m.RevokedSecrets = bad
		if err := m.Validate(); err == nil {
			t.Errorf("Validate accepts revoked_secrets %q", bad)
		}
	}
}
