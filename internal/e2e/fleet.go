package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/vmtest"
)

// Fleet is a fleet directory written by a test for test hosts, and the
// client key that reaches them.
type Fleet struct {
	// Dir is the fleet directory.
	Dir string
	// Key is a file holding the network's client key (root's key on every
	// host), for --identity.
	Key string
	// Hosts are the hosts the fleet is written for: the network's, unless
	// [NewFleet] was given some.
	Hosts []*vmtest.Host
}

// NewFleet makes an empty fleet directory and the client key file for
// hosts of nw (all of nw's hosts when none are given).
func NewFleet(tb testing.TB, nw *vmtest.Network, hosts ...*vmtest.Host) *Fleet {
	tb.Helper()
	if len(hosts) == 0 {
		hosts = nw.Hosts
	}
	f := &Fleet{Dir: tb.TempDir(), Key: filepath.Join(tb.TempDir(), "id_ed25519"), Hosts: hosts}
	if err := os.WriteFile(f.Key, nw.ClientKeyPEM(), 0o600); err != nil {
		tb.Fatal(err)
	}
	return f
}

// HostBlock is the HCL block of h: its address, its pinned host key, then
// body (attributes and blocks, indented by the caller).
func HostBlock(h *vmtest.Host, body string) string {
	return fmt.Sprintf("host %q {\n  address  = %q\n  host_key = %q\n%s}\n", h.Name(), h.Addr().String(), h.HostKeyLine(), body)
}

// WriteHosts writes hosts.hcl: a block per host of the fleet with its
// address, pinned key, the tag "test" and body, then extra.
func (f *Fleet) WriteHosts(tb testing.TB, body, extra string) {
	tb.Helper()
	var b strings.Builder
	for _, h := range f.Hosts {
		b.WriteString(HostBlock(h, "  tags     = [\"test\"]\n"+body))
		b.WriteString("\n")
	}
	b.WriteString(extra)
	f.Write(tb, "hosts.hcl", b.String())
}

// Write writes a file of the fleet (name relative to Dir, directories
// made as needed).
func (f *Fleet) Write(tb testing.TB, name, content string) {
	tb.Helper()
	p := filepath.Join(f.Dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// Read reads a file of the fleet.
func (f *Fleet) Read(tb testing.TB, name string) string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(f.Dir, name))
	if err != nil {
		tb.Fatal(err)
	}
	return string(data)
}

// Edit replaces the first old in a file of the fleet with new; old must be
// there.
func (f *Fleet) Edit(tb testing.TB, name, old, new string) {
	tb.Helper()
	text := f.Read(tb, name)
	if !strings.Contains(text, old) {
		tb.Fatalf("%s does not contain %q:\n%s", name, old, text)
	}
	f.Write(tb, name, strings.Replace(text, old, new, 1))
}

// Target is the target DIR#sel of the fleet (a deployment, host names, or
// @tag).
func (f *Fleet) Target(sel string) string { return f.Dir + "#" + sel }

// Names is the fleet's host names as an HCL list's items: "h1", "h2".
func (f *Fleet) Names() string { return QuotedNames(f.Hosts) }

// QuotedNames is the names of hosts as an HCL list's items: "h1", "h2".
func QuotedNames(hosts []*vmtest.Host) string {
	var q []string
	for _, h := range hosts {
		q = append(q, fmt.Sprintf("%q", h.Name()))
	}
	return strings.Join(q, ", ")
}

// Commit commits everything in the fleet directory to its git repository
// (made on the first call) and returns the commit.
func (f *Fleet) Commit(tb testing.TB, msg string) string {
	tb.Helper()
	git := func(args ...string) string {
		tb.Helper()
		out, err := exec.Command("git", append([]string{"-C", f.Dir}, args...)...).CombinedOutput()
		if err != nil {
			tb.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if _, err := os.Stat(filepath.Join(f.Dir, ".git")); err != nil {
		git("init", "-q")
	}
	git("add", "-A")
	git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", msg)
	return strings.TrimSpace(git("rev-parse", "HEAD"))
}
