package activation

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
	"github.com/google/go-cmp/cmp"
)

func collect(items *[]agentapi.DriftItem) addFunc {
	return func(kind, name, problem, want, got string) {
		*items = append(*items, agentapi.DriftItem{Kind: kind, Name: name, Problem: problem, Want: want, Got: got})
	}
}

func TestParseGroupFile(t *testing.T) {
	in := "# comment\nroot:x:0:\n\nadm:x:4:syslog,alice\n+nis\nbad line\nops:x:1001:bob, alice\n"
	got, err := parseGroupFile(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []groupEntry{{name: "root", gid: "0"}, {name: "adm", gid: "4", members: []string{"alice", "syslog"}},
		{name: "ops", gid: "1001", members: []string{"alice", "bob"}}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(groupEntry{})); diff != "" {
		t.Errorf("parseGroupFile (-want +got):\n%s", diff)
	}
}

// Memberships are compared as an activation converges them: a group that
// declares members has exactly those; other groups have a declared user
// exactly when the user lists them; each difference is reported once.
func TestMembershipDrift(t *testing.T) {
	m := &manifest.Manifest{
		Groups: []manifest.Group{{Name: "ops", Members: []string{"alice", "bob"}}, {Name: "empty"}},
		Users: []manifest.User{
			{Name: "alice", Group: "alice", Groups: []string{"adm", "alice", "ops"}},
			{Name: "bob", Group: "users"},
		},
	}
	clean := []groupEntry{{name: "alice", gid: "1000"}, {name: "users", gid: "100"}, {name: "adm", gid: "4", members: []string{"alice", "syslog"}},
		{name: "ops", gid: "1001", members: []string{"alice", "bob"}}, {name: "empty", gid: "1002"}}
	tests := []struct {
		name   string
		groups func([]groupEntry) []groupEntry
		want   []agentapi.DriftItem
	}{
		{"clean", nil, nil},
		{"gpasswd -d alice ops", func(g []groupEntry) []groupEntry {
			g[3].members = []string{"bob"}
			return g
		}, []agentapi.DriftItem{{Kind: "group", Name: "ops", Problem: "members", Want: "alice,bob", Got: "bob"}}},
		{"a member added to ops by hand", func(g []groupEntry) []groupEntry {
			g[3].members = []string{"alice", "bob", "mallory"}
			return g
		}, []agentapi.DriftItem{{Kind: "group", Name: "ops", Problem: "members", Want: "alice,bob", Got: "alice,bob,mallory"}}},
		{"gpasswd -d alice adm", func(g []groupEntry) []groupEntry {
			g[2].members = []string{"syslog"}
			return g
		}, []agentapi.DriftItem{{Kind: "user", Name: "alice", Problem: "groups", Want: "adm", Got: "(none)"}}},
		{"usermod -aG empty bob", func(g []groupEntry) []groupEntry {
			g[4].members = []string{"bob"}
			return g
		}, []agentapi.DriftItem{{Kind: "user", Name: "bob", Problem: "groups", Want: "(none)", Got: "empty"}}},
		{"ops emptied", func(g []groupEntry) []groupEntry {
			g[3].members = nil
			return g
		}, []agentapi.DriftItem{{Kind: "group", Name: "ops", Problem: "members", Want: "alice,bob", Got: "(none)"}}},
		{"ops gone (reported as missing elsewhere)", func(g []groupEntry) []groupEntry {
			return append(g[:3], g[4])
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			groups := make([]groupEntry, len(clean))
			for i, g := range clean {
				groups[i] = groupEntry{name: g.name, gid: g.gid, members: append([]string(nil), g.members...)}
			}
			if tt.groups != nil {
				groups = tt.groups(groups)
			}
			var got []agentapi.DriftItem
			membershipDrift(m, groups, collect(&got))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("membershipDrift (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSysctlDrift(t *testing.T) {
	live := map[string]string{"net.core.somaxconn": "4096\n", "net.ipv4.ip_local_port_range": "32768\t60999\n", "vm.swappiness": "60\n"}
	read := func(key string) (string, error) {
		v, ok := live[key]
		if !ok {
			return "", &fs.PathError{Op: "open", Path: sysctlPath(key), Err: fs.ErrNotExist}
		}
		return v, nil
	}
	sysctls := []manifest.Sysctl{
		{Key: "net.core.somaxconn", Value: "4096"},
		{Key: "net.ipv4.ip_local_port_range", Value: "32768 60999"}, // a vector, tab-separated by the kernel
		{Key: "vm.swappiness", Value: "10"},
		{Key: "kernel.nope", Value: "1"},
		{Key: "vm.nr_hugepages", Value: "8", Boot: true}, // set at boot only: not a deploy's to repair
	}
	var got []agentapi.DriftItem
	sysctlDrift(sysctls, read, collect(&got))
	want := []agentapi.DriftItem{
		{Kind: "sysctl", Name: "vm.swappiness", Problem: "value", Want: "10", Got: "60"},
		{Kind: "sysctl", Name: "kernel.nope", Problem: "missing", Want: "1", Got: "open /proc/sys/kernel/nope: file does not exist"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sysctlDrift (-want +got):\n%s", diff)
	}
}

func TestHostnameDrift(t *testing.T) {
	tests := []struct {
		kernel, static string
		staticErr      error
		want           []agentapi.DriftItem
	}{
		{"box1", "box1\n", nil, nil},
		{"other", "box1\n", nil, []agentapi.DriftItem{{Kind: "hostname", Name: "kernel", Problem: "value", Want: "box1", Got: "other"}}},
		{"box1", "other\n", nil, []agentapi.DriftItem{{Kind: "hostname", Name: "/etc/hostname", Problem: "value", Want: "box1", Got: "other"}}},
		{"box1", "", fs.ErrNotExist, []agentapi.DriftItem{{Kind: "hostname", Name: "/etc/hostname", Problem: "missing", Want: "box1"}}},
	}
	for _, tt := range tests {
		var got []agentapi.DriftItem
		hostnameDrift("box1", tt.kernel, tt.static, tt.staticErr, collect(&got))
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("hostnameDrift(box1, %q, %q) (-want +got):\n%s", tt.kernel, tt.static, diff)
		}
	}
}

func TestFirewallDrift(t *testing.T) {
	want := "table inet deploy {\nchain input {\ntype filter hook input priority filter; policy drop;\ntcp dport { 22, 8080 } accept\n}\n}"
	tests := []struct {
		name string
		got  string
		gerr error
		werr error
		item *agentapi.DriftItem
	}{
		{"same", want, nil, nil, nil},
		{"flushed", "table inet deploy {\nchain input {\ntype filter hook input priority filter; policy drop;\n}\n}", nil, nil,
			&agentapi.DriftItem{Kind: "firewall", Name: "inet deploy", Problem: "rules", Got: `lacks ["tcp dport { 22, 8080 } accept"]`}},
		{"policy", strings.Replace(want, "policy drop", "policy accept", 1), nil, nil,
			&agentapi.DriftItem{Kind: "firewall", Name: "inet deploy", Problem: "rules",
				Got: `has ["type filter hook input priority filter; policy accept;"]; lacks ["type filter hook input priority filter; policy drop;"]`}},
		{"table deleted", "", errNoTable, nil, &agentapi.DriftItem{Kind: "firewall", Name: "inet deploy", Problem: "missing"}},
		{"nft fails", "", errors.New("nft list tables: exit status 1"), nil,
			&agentapi.DriftItem{Kind: "firewall", Name: "inet deploy", Problem: "unreadable", Got: "nft list tables: exit status 1"}},
		{"ruleset unloadable", want, nil, errors.New("loading x: exit status 1"),
			&agentapi.DriftItem{Kind: "firewall", Name: "inet deploy", Problem: "unreadable", Got: "loading x: exit status 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []agentapi.DriftItem
			firewallDrift("inet deploy", want, tt.werr, tt.got, tt.gerr, collect(&got))
			var w []agentapi.DriftItem
			if tt.item != nil {
				w = append(w, *tt.item)
			}
			if diff := cmp.Diff(w, got); diff != "" {
				t.Errorf("firewallDrift (-want +got):\n%s", diff)
			}
		})
	}
}

// firewallWant lists a ruleset as nft loads it, in a network namespace of
// its own: the real nft, as root. The listing of the same ruleset is the
// same each time, another ruleset's differs, and the host's own network
// namespace gets no table.
func TestFirewallWantRealNft(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace of its own")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	dir := t.TempDir()
	write := func(name string, ports []string) string {
		p := filepath.Join(dir, name)
		rules := "table inet deploytest\ndelete table inet deploytest\ntable inet deploytest {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\ttcp dport { " + strings.Join(ports, ", ") + " } accept\n\t}\n}\n"
		if err := os.WriteFile(p, []byte(rules), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := write("a.nft", []string{"8080", "22"}), write("b.nft", []string{"22"})
	ctx := context.Background()
	la, err := firewallWant(ctx, a, "inet deploytest")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(la, "tcp dport { 22, 8080 } accept") || !strings.Contains(la, "policy drop") {
		t.Errorf("firewallWant(a) = %q, want nft's listing of the table", la)
	}
	if again, err := firewallWant(ctx, a, "inet deploytest"); err != nil || again != la {
		t.Errorf("firewallWant(a) again = %q, %v; want %q", again, err, la)
	}
	if lb, err := firewallWant(ctx, b, "inet deploytest"); err != nil || lb == la {
		t.Errorf("firewallWant(b) = %q, %v; want another listing than a's", lb, err)
	}
	if _, err := firewallLive(ctx, "inet deploytest"); !errors.Is(err, errNoTable) {
		t.Errorf("firewallLive after firewallWant = %v, want %v: the scratch namespace's table leaked into the host's", err, errNoTable)
	}
	if _, err := firewallWant(ctx, filepath.Join(dir, "nope.nft"), "inet deploytest"); err == nil {
		t.Error("firewallWant of a missing ruleset succeeded")
	}
}
