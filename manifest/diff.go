package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Changes lists the keys (paths or names) added, removed and changed in one
// section, each sorted.
type Changes struct {
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
	Changed []string `json:"changed,omitempty"`
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool { return len(c.Added)+len(c.Removed)+len(c.Changed) == 0 }

// UnitActions is what activation does to units. Every list is sorted; a unit
// appears in at most one list.
type UnitActions struct {
	Stop    []string `json:"stop,omitempty"`
	Start   []string `json:"start,omitempty"`
	Restart []string `json:"restart,omitempty"`
	Reload  []string `json:"reload,omitempty"`
	// Updated lists units that change without being started, stopped,
	// restarted or reloaded: new units without Start, and units whose
	// entry changed in nothing but WantedBy or Start.
	Updated []string `json:"updated,omitempty"`
}

// Empty reports whether no unit is touched.
func (u UnitActions) Empty() bool {
	return len(u.Stop)+len(u.Start)+len(u.Restart)+len(u.Reload)+len(u.Updated) == 0
}

// Difference is what activating one manifest after another changes.
type Difference struct {
	Hostname          [2]string   `json:"hostname,omitzero"`
	Timezone          [2]string   `json:"timezone,omitzero"`
	Agent             [2]string   `json:"agent,omitzero"`
	Packages          Changes     `json:"packages,omitzero"`
	Groups            Changes     `json:"groups,omitzero"`
	Users             Changes     `json:"users,omitzero"`
	Directories       Changes     `json:"directories,omitzero"`
	Files             Changes     `json:"files,omitzero"`
	Symlinks          Changes     `json:"symlinks,omitzero"`
	Secrets           Changes     `json:"secrets,omitzero"`
	Sysctls           Changes     `json:"sysctls,omitzero"`
	Firewall          bool        `json:"firewall,omitempty"`
	Units             UnitActions `json:"units,omitzero"`
	ActivationScripts Changes     `json:"activation_scripts,omitzero"`
	HealthChecks      Changes     `json:"health_checks,omitzero"`
	MetricGates       Changes     `json:"metric_gates,omitzero"`
	// RevokedSecrets are the revoked secret versions added or removed
	// (the host's record keeps every version it has seen either way).
	RevokedSecrets Changes `json:"revoked_secrets,omitzero"`
	// Images are the OCI images (by manifest digest) whose roots the
	// agent realizes or no longer needs.
	Images Changes `json:"images,omitzero"`
}

// Empty reports whether the two manifests describe the same state.
func (d *Difference) Empty() bool {
	return d.Hostname == [2]string{} && d.Timezone == [2]string{} && d.Agent == [2]string{} &&
		d.Packages.Empty() && d.Groups.Empty() && d.Users.Empty() && d.Directories.Empty() &&
		d.Files.Empty() && d.Symlinks.Empty() && d.Secrets.Empty() && d.Sysctls.Empty() &&
		!d.Firewall && d.Units.Empty() && d.ActivationScripts.Empty() && d.HealthChecks.Empty() && d.MetricGates.Empty() &&
		d.RevokedSecrets.Empty() && d.Images.Empty()
}

// Diff reports what activating next after prev changes. A nil prev is a
// first activation: everything in next is added and every unit with Start
// is started.
//
// Units follow the agent's rules: a unit only in prev is stopped; a unit only
// in next is started if it has Start; a unit in both is restarted when its
// RestartHash changed or when a secret it uses changed, reloaded when only
// its ReloadHash changed, and otherwise listed as Updated if anything else
// about it changed.
func Diff(prev, next *Manifest) *Difference {
	if prev == nil {
		prev = &Manifest{}
	}
	prev, next = sortedCopy(prev), sortedCopy(next)
	d := &Difference{}
	if prev.Hostname != next.Hostname {
		d.Hostname = [2]string{prev.Hostname, next.Hostname}
	}
	if prev.Timezone != next.Timezone {
		d.Timezone = [2]string{prev.Timezone, next.Timezone}
	}
	if prev.Agent != next.Agent {
		d.Agent = [2]string{prev.Agent, next.Agent}
	}
	d.Packages = changes(prev.Packages, next.Packages, func(p Package) string { return p.Name })
	d.Groups = changes(prev.Groups, next.Groups, func(g Group) string { return g.Name })
	d.Users = changes(prev.Users, next.Users, func(u User) string { return u.Name })
	d.Directories = changes(prev.Directories, next.Directories, func(x Directory) string { return x.Path })
	d.Files = changes(prev.Files, next.Files, func(f File) string { return f.Path })
	d.Symlinks = changes(prev.Symlinks, next.Symlinks, func(s Symlink) string { return s.Path })
	d.Secrets = changes(prev.Secrets, next.Secrets, func(s Secret) string { return s.Name })
	d.Sysctls = changes(prev.Sysctls, next.Sysctls, func(s Sysctl) string { return s.Key })
	d.Firewall = !equal(prev.Firewall, next.Firewall)
	d.ActivationScripts = changes(prev.ActivationScripts, next.ActivationScripts, func(a ActivationScript) string { return a.Name })
	d.HealthChecks = changes(prev.HealthChecks, next.HealthChecks, func(h HealthCheck) string { return h.Name })
	d.MetricGates = changes(prev.MetricGates, next.MetricGates, func(g MetricGate) string { return g.Name })
	d.RevokedSecrets = changes(prev.RevokedSecrets, next.RevokedSecrets, func(v string) string { return v })
	d.Images = changes(prev.Images, next.Images, func(i Image) string { return i.Digest })

	// Units restarted because a secret they use changed.
	secretRestart := map[string]bool{}
	oldSecrets := index(prev.Secrets, func(s Secret) string { return s.Name })
	for _, s := range next.Secrets {
		if o, ok := oldSecrets[s.Name]; ok && !equal(o, s) {
			for _, u := range s.Units {
				secretRestart[u] = true
			}
		}
	}
	oldUnits := index(prev.Units, func(u Unit) string { return u.Name })
	newUnits := index(next.Units, func(u Unit) string { return u.Name })
	for _, u := range next.Units {
		o, ok := oldUnits[u.Name]
		switch {
		case !ok:
			if u.Start {
				d.Units.Start = append(d.Units.Start, u.Name)
			} else {
				d.Units.Updated = append(d.Units.Updated, u.Name)
			}
		case o.RestartHash != u.RestartHash || secretRestart[u.Name]:
			d.Units.Restart = append(d.Units.Restart, u.Name)
		case o.ReloadHash != u.ReloadHash:
			d.Units.Reload = append(d.Units.Reload, u.Name)
		case !equal(o, u):
			d.Units.Updated = append(d.Units.Updated, u.Name)
		}
	}
	for _, o := range prev.Units {
		if _, ok := newUnits[o.Name]; !ok {
			d.Units.Stop = append(d.Units.Stop, o.Name)
		}
	}
	for _, l := range []*[]string{&d.Units.Stop, &d.Units.Start, &d.Units.Restart, &d.Units.Reload, &d.Units.Updated} {
		slices.Sort(*l)
	}
	return d
}

// sortedCopy returns a deep copy of m in canonical order, so that Diff
// neither depends on nor changes the order of its arguments' lists.
func sortedCopy(m *Manifest) *Manifest {
	data, err := json.Marshal(m)
	if err != nil {
		panic("manifest: encoding a Manifest cannot fail: " + err.Error())
	}
	var c Manifest
	if err := json.Unmarshal(data, &c); err != nil {
		panic("manifest: decoding an encoded Manifest cannot fail: " + err.Error())
	}
	c.Sort()
	return &c
}

func index[T any](s []T, key func(T) string) map[string]T {
	m := make(map[string]T, len(s))
	for _, x := range s {
		m[key(x)] = x
	}
	return m
}

func changes[T any](prev, next []T, key func(T) string) Changes {
	var c Changes
	old := index(prev, key)
	cur := index(next, key)
	for k, n := range cur {
		o, ok := old[k]
		switch {
		case !ok:
			c.Added = append(c.Added, k)
		case !equal(o, n):
			c.Changed = append(c.Changed, k)
		}
	}
	for k := range old {
		if _, ok := cur[k]; !ok {
			c.Removed = append(c.Removed, k)
		}
	}
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	slices.Sort(c.Changed)
	return c
}

// equal compares two entries by their JSON encoding, in which nil and empty
// lists are alike (every list field is omitempty).
func equal[T any](a, b T) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// Write prints d for a human, one line per change, in the order the agent
// applies them. It prints "no changes" when d is empty.
func (d *Difference) Write(w io.Writer) error {
	var b strings.Builder
	pair := func(what string, v [2]string) {
		if v != [2]string{} {
			fmt.Fprintf(&b, "%s: %q → %q\n", what, v[0], v[1])
		}
	}
	list := func(verb, what string, items []string) {
		for _, it := range items {
			fmt.Fprintf(&b, "%-8s %s %s\n", verb, what, it)
		}
	}
	section := func(what string, c Changes) {
		list("+", what, c.Added)
		list("-", what, c.Removed)
		list("~", what, c.Changed)
	}
	pair("hostname", d.Hostname)
	pair("timezone", d.Timezone)
	pair("agent", d.Agent)
	section("package", d.Packages)
	section("image", d.Images)
	section("group", d.Groups)
	section("user", d.Users)
	section("directory", d.Directories)
	section("file", d.Files)
	section("symlink", d.Symlinks)
	section("secret", d.Secrets)
	section("sysctl", d.Sysctls)
	if d.Firewall {
		fmt.Fprintf(&b, "%-8s firewall ruleset\n", "~")
	}
	list("stop", "unit", d.Units.Stop)
	list("start", "unit", d.Units.Start)
	list("restart", "unit", d.Units.Restart)
	list("reload", "unit", d.Units.Reload)
	list("update", "unit", d.Units.Updated)
	section("script", d.ActivationScripts)
	section("check", d.HealthChecks)
	section("gate", d.MetricGates)
	section("revoked", d.RevokedSecrets)
	if b.Len() == 0 {
		b.WriteString("no changes\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
