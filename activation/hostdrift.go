package activation

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
)

// The host's kernel and account state that [Layout.Drift] compares besides
// files and units: sysctls, supplementary group memberships, the nftables
// table of the generation's firewall and the host name. Each is compared
// the way [Apply] converges it, so that what a deploy repairs is what is
// reported and nothing a deploy leaves as it is.

// membershipsDrift adds the items of m's supplementary group memberships.
func membershipsDrift(m *manifest.Manifest, add addFunc) {
	if groups, err := readGroupFile("/etc/group"); err != nil {
		add(agentapi.DriftGroup, "/etc/group", "unreadable", "", err.Error())
	} else {
		membershipDrift(m, groups, add)
	}
}

// kernelDrift adds the items of m's sysctls and firewall.
func kernelDrift(ctx context.Context, m *manifest.Manifest, realPath func(string) string, add addFunc) {
	sysctlDrift(m.Sysctls, readSysctl, add)
	if f := m.Firewall; f != nil {
		want, werr := firewallWant(ctx, realPath(f.Ruleset), f.Table)
		got, gerr := firewallLive(ctx, f.Table)
		firewallDrift(f.Table, want, werr, got, gerr, add)
	}
}

// hostnameOf adds the items of m's host name.
func hostnameOf(m *manifest.Manifest, add addFunc) {
	if h := m.Hostname; h != "" {
		kernel, _ := os.Hostname()
		static, err := os.ReadFile("/etc/hostname")
		hostnameDrift(h, kernel, string(static), err, add)
	}
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(key))
	return string(b), err
}

// sysctlValue is a sysctl's value as compared: its fields joined by one
// space (the kernel separates a vector's values with tabs).
func sysctlValue(s string) string { return strings.Join(strings.Fields(s), " ") }

// sysctlDrift adds an item per sysctl whose value is not the manifest's.
// Sysctls set only at boot are left out: a deploy does not set them (the
// host reports that it needs a reboot instead).
func sysctlDrift(sysctls []manifest.Sysctl, read func(key string) (string, error), add addFunc) {
	for _, s := range sysctls {
		if s.Boot {
			continue
		}
		got, err := read(s.Key)
		switch {
		case err != nil:
			add(agentapi.DriftSysctl, s.Key, problemOf(err), sysctlValue(s.Value), err.Error())
		case sysctlValue(got) != sysctlValue(s.Value):
			add(agentapi.DriftSysctl, s.Key, "value", sysctlValue(s.Value), sysctlValue(got))
		}
	}
}

// groupEntry is a line of /etc/group: a group's name, GID and members.
type groupEntry struct {
	name, gid string
	members   []string
}

func readGroupFile(p string) ([]groupEntry, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseGroupFile(f)
}

// parseGroupFile parses group(5) lines; comments, blank lines and NIS
// lines (+, -) are skipped.
func parseGroupFile(r io.Reader) ([]groupEntry, error) {
	var out []groupEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		fs := strings.Split(line, ":")
		if len(fs) != 4 {
			continue
		}
		e := groupEntry{name: fs[0], gid: fs[2]}
		for _, m := range strings.Split(fs[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				e.members = append(e.members, m)
			}
		}
		slices.Sort(e.members)
		out = append(out, e)
	}
	return out, sc.Err()
}

// membershipDrift compares supplementary group memberships with what an
// activation makes of them: a declared group with members has exactly
// those (gpasswd -M, applied after the users); any other group has a
// declared user as a member exactly when the user lists it. A membership
// is reported once: under its group when the group declares its members,
// else under the user. A user's primary group is not a supplementary one.
func membershipDrift(m *manifest.Manifest, groups []groupEntry, add addFunc) {
	byName := map[string]groupEntry{}
	for _, g := range groups {
		byName[g.name] = g
	}
	declared := map[string]bool{} // groups whose members the manifest sets
	for _, g := range m.Groups {
		if len(g.Members) == 0 {
			continue
		}
		declared[g.Name] = true
		got, ok := byName[g.Name]
		if !ok {
			continue // reported missing by accountDrift
		}
		if !slices.Equal(got.members, g.Members) {
			add(agentapi.DriftGroup, g.Name, "members", listOrNone(g.Members), listOrNone(got.members))
		}
	}
	for _, u := range m.Users {
		primary := ""
		for _, g := range groups {
			if g.name == u.Group {
				primary = g.name
			}
		}
		var want, got []string
		for _, x := range u.Groups {
			if !declared[x] && x != primary {
				want = append(want, x)
			}
		}
		for _, g := range groups {
			if !declared[g.name] && g.name != primary && slices.Contains(g.members, u.Name) {
				got = append(got, g.name)
			}
		}
		slices.Sort(want)
		want = slices.Compact(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			add(agentapi.DriftUser, u.Name, "groups", listOrNone(want), listOrNone(got))
		}
	}
}

// listOrNone joins names with commas; none is "(none)".
func listOrNone(names []string) string {
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(names, ",")
}

// The firewall is compared as nftables lists it: the live table
// (`nft -s list table T`, -s leaving counters and quotas out) against the
// same listing of the generation's ruleset loaded into a new, empty network
// namespace. Both are printed by the same nft from the same kernel, so
// formatting, the order of rules and nft's own rewriting of expressions
// (a set of ports, a "priority filter") are the same on both sides, and
// any difference is a rule added, removed or changed, a chain's policy, or
// a table gone.

// firewallWant lists table as the ruleset at path loads it, in a new
// network namespace (the host's is untouched).
func firewallWant(ctx context.Context, ruleset, table string) (string, error) {
	ft := strings.Fields(table)
	if len(ft) != 2 {
		return "", fmt.Errorf("firewall table %q is not \"FAMILY NAME\"", table)
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", `nft -f "$1" && nft -s list table "$2" "$3"`, "sh", ruleset, ft[0], ft[1])
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	return nftOutput(cmd, "loading "+ruleset+" in a scratch network namespace")
}

// errNoTable is firewallLive's error when the table is not loaded.
var errNoTable = errors.New("not loaded")

// firewallLive lists table as the kernel has it now.
func firewallLive(ctx context.Context, table string) (string, error) {
	out, err := exec.CommandContext(ctx, "nft", "list", "tables").Output()
	if err != nil {
		return "", fmt.Errorf("nft list tables: %w", err)
	}
	if !slices.Contains(strings.Split(strings.TrimSpace(string(out)), "\n"), "table "+table) {
		return "", errNoTable
	}
	return nftOutput(exec.CommandContext(ctx, "nft", append([]string{"-s", "list", "table"}, strings.Fields(table)...)...), "nft list table "+table)
}

func nftOutput(cmd *exec.Cmd, what string) (string, error) {
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return "", fmt.Errorf("%s: %w: %s", what, err, msg)
		}
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return normalizeListing(out.String()), nil
}

// normalizeListing drops blank lines and the whitespace around each line.
func normalizeListing(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// firewallDrift adds an item when the live table is not the ruleset's:
// missing, or "rules" naming the first lines that differ.
func firewallDrift(table, want string, werr error, got string, gerr error, add addFunc) {
	switch {
	case werr != nil:
		add(agentapi.DriftFirewall, table, "unreadable", "", werr.Error())
	case errors.Is(gerr, errNoTable):
		add(agentapi.DriftFirewall, table, "missing", "", "")
	case gerr != nil:
		add(agentapi.DriftFirewall, table, "unreadable", "", gerr.Error())
	case want != got:
		add(agentapi.DriftFirewall, table, "rules", "", listingDiff(want, got))
	}
}

// listingDiff describes how got differs from want in one line: the lines
// only one of them has, at most three of each.
func listingDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var extra, lacking []string
	for _, l := range g {
		if !slices.Contains(w, l) {
			extra = append(extra, l)
		}
	}
	for _, l := range w {
		if !slices.Contains(g, l) {
			lacking = append(lacking, l)
		}
	}
	short := func(ls []string) string {
		if len(ls) > 3 {
			return fmt.Sprintf("%q and %d more", ls[:3], len(ls)-3)
		}
		return fmt.Sprintf("%q", ls)
	}
	var parts []string
	if len(extra) > 0 {
		parts = append(parts, "has "+short(extra))
	}
	if len(lacking) > 0 {
		parts = append(parts, "lacks "+short(lacking))
	}
	if len(parts) == 0 {
		return "its rules are in another order"
	}
	return strings.Join(parts, "; ")
}

// hostnameDrift compares the kernel's host name and the static one in
// /etc/hostname with want.
func hostnameDrift(want, kernel, static string, staticErr error, add addFunc) {
	if kernel != want {
		add(agentapi.DriftHostname, "kernel", "value", want, kernel)
	}
	switch {
	case staticErr != nil:
		add(agentapi.DriftHostname, "/etc/hostname", problemOf(staticErr), want, "")
	case strings.TrimSpace(static) != want:
		add(agentapi.DriftHostname, "/etc/hostname", "value", want, strings.TrimSpace(static))
	}
}
