package modules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Config is the evaluated, merged configuration of one host.
type Config struct {
	// Host is the host's name.
	Host string
	// Arch is the target's GOARCH ("amd64").
	Arch string
	// SSHPort is the port the firewall keeps open for deploy (allow_ssh).
	SSHPort int
	// Resources are sorted by kind (in [Kinds] order), then name.
	Resources []*Resource
	// Packages maps each package's name to its store path.
	Packages map[string]string
}

// Objects adds content to a store. The implementation finds the store paths
// that content refers to.
type Objects interface {
	// AddFile stores content as a regular file and returns its store path.
	AddFile(ctx context.Context, name string, content []byte, executable bool) (string, error)
}

// Realizer turns a host's configuration into a manifest, adding every file
// content, unit file, secret ciphertext and script to the store through
// Objects.
type Realizer struct {
	// FleetDir is the fleet directory that source attributes are relative
	// to.
	FleetDir string
	// StoreDir is the logical store directory.
	StoreDir string
	// Objects receives the content.
	Objects Objects
}

// Realize returns the manifest of cfg, whose deploy-agent is the store path
// agent.
func (z *Realizer) Realize(ctx context.Context, cfg *Config, agent string) (*manifest.Manifest, hcl.Diagnostics) {
	m := &manifest.Manifest{SchemaVersion: manifest.SchemaVersion, Host: cfg.Host, StoreDir: z.StoreDir, Agent: agent}
	var diags hcl.Diagnostics
	add := func(r *Resource, name string, content []byte, exec bool, attr string) string {
		p, err := z.Objects.AddFile(ctx, name, content, exec)
		if err != nil {
			diags = append(diags, errAt(r.Range(attr), "Cannot store "+r.Kind.Name, "Storing %s failed: %s.", r.Key(), err))
		}
		return p
	}
	read := func(r *Resource, attr string) ([]byte, bool) {
		data, err := ReadFleetFile(z.FleetDir, r.String(attr, ""))
		if err != nil {
			diags = append(diags, errAt(r.Range(attr), "Cannot read "+attr, "%s: %s.", r.Key(), err))
			return nil, false
		}
		return data, true
	}
	for name, p := range cfg.Packages {
		m.Packages = append(m.Packages, manifest.Package{Name: name, Path: p})
	}
	byKind := map[string][]*Resource{}
	for _, r := range cfg.Resources {
		byKind[r.Kind.Name] = append(byKind[r.Kind.Name], r)
	}
	groups := map[string]bool{}
	for _, r := range byKind[KindGroup] {
		g := manifest.Group{Name: r.Name, System: r.Bool("system", false), Members: r.Strings("members")}
		if gid, ok := r.Int("gid"); ok {
			g.GID = &gid
		}
		groups[r.Name] = true
		m.Groups = append(m.Groups, g)
	}
	for _, r := range byKind[KindUser] {
		sys := r.Bool("system", false)
		u := manifest.User{Name: r.Name, System: sys, Group: r.String("group", r.Name), Groups: r.Strings("groups"),
			Description: r.String("description", "")}
		if uid, ok := r.Int("uid"); ok {
			u.UID = &uid
		}
		if sys {
			u.Home, u.Shell = r.String("home", "/var/empty"), r.String("shell", "/usr/sbin/nologin")
			u.CreateHome = r.Bool("create_home", false)
		} else {
			u.Home, u.Shell = r.String("home", "/home/"+r.Name), r.String("shell", "/bin/bash")
			u.CreateHome = r.Bool("create_home", true)
		}
		if r.Has("authorized_keys") {
			u.AuthorizedKeys = r.Strings("authorized_keys")
		}
		if u.Group == r.Name && !groups[r.Name] {
			groups[r.Name] = true
			m.Groups = append(m.Groups, manifest.Group{Name: r.Name, System: sys})
		}
		m.Users = append(m.Users, u)
	}
	for _, r := range byKind[KindDirectory] {
		mode, _ := NormalizeMode(r.String("mode", "0755"))
		m.Directories = append(m.Directories, manifest.Directory{Path: r.Name, Owner: r.String("owner", "root"),
			Group: r.String("group", "root"), Mode: mode})
	}
	for _, r := range byKind[KindFile] {
		var content []byte
		attr := "content"
		if r.Has("source") {
			attr = "source"
			var ok bool
			if content, ok = read(r, "source"); !ok {
				continue
			}
		} else {
			content = []byte(r.String("content", ""))
		}
		mode, _ := NormalizeMode(r.String("mode", "0644"))
		src := add(r, StoreName(path.Base(r.Name), "file"), content, false, attr)
		m.Files = append(m.Files, manifest.File{Path: r.Name, Source: src, Owner: r.String("owner", "root"),
			Group: r.String("group", "root"), Mode: mode, Force: r.Bool("force", false)})
	}
	for _, r := range byKind[KindSymlink] {
		m.Symlinks = append(m.Symlinks, manifest.Symlink{Path: r.Name, Target: r.String("target", ""), Force: r.Bool("force", false)})
	}
	for _, r := range byKind[KindSysctl] {
		v, _ := SysctlValue(r)
		m.Sysctls = append(m.Sysctls, manifest.Sysctl{Key: r.Name, Value: v})
	}
	for _, r := range byKind[KindFirewall] {
		if !r.Bool("enable", true) {
			continue
		}
		src := add(r, "nftables-"+StoreName(cfg.Host, "host")+".conf", []byte(FirewallRuleset(r, cfg.SSHPort)), false, "enable")
		m.Firewall = &manifest.Firewall{Ruleset: src, Table: FirewallTable}
	}

	// Units. A service started by a timer is not started or wanted by
	// itself unless the configuration says so.
	timed := map[string]bool{}
	for _, r := range byKind[KindTimer] {
		timed[r.String("unit", r.Name+".service")] = true
	}
	unitText := map[string]string{}
	for _, r := range byKind[KindService] {
		name := r.Name + ".service"
		text := ServiceUnit(r, timed[name])
		wanted := []string{"multi-user.target"}
		if timed[name] {
			wanted = nil
		}
		if r.Has("wanted_by") {
			wanted = r.Strings("wanted_by")
		}
		u := manifest.Unit{Name: name, WantedBy: wanted, Start: r.Bool("enable", !timed[name]),
			RestartHash: triggerHash(append([]string{text}, r.Strings("restart_triggers")...)),
		}
		if r.Has("reload_triggers") {
			u.ReloadHash = triggerHash(r.Strings("reload_triggers"))
		}
		u.Source = add(r, StoreName(name, "unit"), []byte(text), false, "exec_start")
		unitText[name] = text
		m.Units = append(m.Units, u)
	}
	for _, r := range byKind[KindTimer] {
		name := r.Name + ".timer"
		text := TimerUnit(r)
		wanted := []string{"timers.target"}
		if r.Has("wanted_by") {
			wanted = r.Strings("wanted_by")
		}
		u := manifest.Unit{Name: name, WantedBy: wanted, Start: true, RestartHash: triggerHash([]string{text})}
		u.Source = add(r, StoreName(name, "unit"), []byte(text), false, "unit")
		m.Units = append(m.Units, u)
	}
	unitNames := make([]string, 0, len(unitText))
	for n := range unitText {
		unitNames = append(unitNames, n)
	}
	sort.Strings(unitNames)
	for _, r := range byKind[KindSecret] {
		data, ok := read(r, "source")
		if !ok {
			continue
		}
		mode, _ := NormalizeMode(r.String("mode", "0400"))
		s := manifest.Secret{Name: r.Name, Path: SecretPath(r), Owner: r.String("owner", "root"),
			Group: r.String("group", "root"), Mode: mode, Units: r.Strings("units")}
		for _, n := range unitNames {
			if strings.Contains(unitText[n], s.Path) {
				s.Units = append(s.Units, n)
			}
		}
		s.Source = add(r, StoreName(r.Name+".age", "secret"), data, false, "source")
		m.Secrets = append(m.Secrets, s)
	}
	scripts := map[string]bool{}
	for _, r := range byKind[KindActivationScript] {
		scripts[r.Name] = true
	}
	for _, r := range byKind[KindActivationScript] {
		var content []byte
		attr := "script"
		if r.Has("source") {
			attr = "source"
			var ok bool
			if content, ok = read(r, "source"); !ok {
				continue
			}
		} else {
			s := r.String("script", "")
			if !strings.HasPrefix(s, "#!") {
				s = "#!/bin/sh\nset -eu\n" + s
			}
			content = []byte(s)
		}
		for _, a := range r.Strings("after") {
			if !scripts[a] {
				diags = append(diags, errAt(r.Range("after"), "Unknown activation script",
					"Activation script %q runs after %q, which this host does not define.", r.Name, a))
			}
		}
		src := add(r, StoreName(r.Name, "script"), content, true, attr)
		m.ActivationScripts = append(m.ActivationScripts, manifest.ActivationScript{Name: r.Name, Source: src, After: r.Strings("after")})
	}
	diags = append(diags, checkScriptCycles(m.ActivationScripts, byKind[KindActivationScript])...)
	for _, r := range byKind[KindHealthCheck] {
		h := manifest.HealthCheck{Name: r.Name, Type: HealthCheckType(r), URL: r.String("url", ""),
			Address: r.String("address", ""), Command: r.Strings("command"), Unit: r.String("unit", ""),
			TimeoutMS: durationMS(r.String("timeout", "30s")), IntervalMS: durationMS(r.String("interval", "1s"))}
		if r.Has("attempt_timeout") {
			h.AttemptTimeoutMS = durationMS(r.String("attempt_timeout", ""))
		}
		if h.Type == manifest.CheckHTTP {
			h.ExpectStatus = 200
			if s, ok := r.Int("expect_status"); ok {
				h.ExpectStatus = s
			}
		}
		m.HealthChecks = append(m.HealthChecks, h)
	}
	for _, r := range byKind[KindHostname] {
		m.Hostname = r.String("value", "")
	}
	for _, r := range byKind[KindTimezone] {
		m.Timezone = r.String("value", "")
	}
	for _, r := range byKind[KindSecretsAllowTmpfs] {
		m.SecretsAllowTmpfs = r.Bool("value", false)
	}
	m.Sort()
	return m, diags
}

func checkScriptCycles(scripts []manifest.ActivationScript, rs []*Resource) hcl.Diagnostics {
	after := map[string][]string{}
	for _, s := range scripts {
		after[s.Name] = s.After
	}
	state := map[string]int{}
	var cyc string
	var visit func(n string) bool
	visit = func(n string) bool {
		switch state[n] {
		case 1:
			cyc = n
			return true
		case 2:
			return false
		}
		state[n] = 1
		for _, a := range after[n] {
			if visit(a) {
				return true
			}
		}
		state[n] = 2
		return false
	}
	names := make([]string, 0, len(after))
	for n := range after {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if visit(n) {
			for _, r := range rs {
				if r.Name == cyc {
					return hcl.Diagnostics{errAt(r.Range("after"), "Activation script cycle",
						"Activation script %q runs, through its after list, after itself.", cyc)}
				}
			}
		}
	}
	return nil
}

func durationMS(s string) int64 {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0
	}
	return d.Milliseconds()
}

func triggerHash(values []string) string {
	h := sha256.New()
	for _, v := range values {
		fmt.Fprintf(h, "%d:%s\n", len(v), v)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// StoreName turns s into a valid store path name: characters Nix does not
// allow become "_", leading periods are dropped, and an empty result is def.
func StoreName(s, def string) string {
	b := []byte(strings.TrimLeft(s, "."))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return def
	}
	if len(b) > 180 {
		b = b[:180]
	}
	return string(b)
}

// ReadFleetFile reads the file rel of the fleet directory. rel must be
// relative and stay inside the directory after resolving symlinks.
func ReadFleetFile(fleetDir, rel string) ([]byte, error) {
	p, err := FleetPath(fleetDir, rel)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading %q: %w", rel, unwrapPath(err))
	}
	return data, nil
}

// FleetPath resolves rel inside fleetDir. It refuses absolute paths and
// paths that leave the directory, directly or through a symlink, because a
// build may read only the fleet's own files.
func FleetPath(fleetDir, rel string) (string, error) {
	if rel == "" {
		return "", fmt.Errorf("empty path")
	}
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%q is absolute; paths are relative to the fleet directory, which a build may not leave", rel)
	}
	root, err := filepath.EvalSymlinks(fleetDir)
	if err != nil {
		return "", fmt.Errorf("fleet directory: %w", err)
	}
	joined := filepath.Join(root, rel)
	real, err := filepath.EvalSymlinks(joined)
	if err != nil {
		if !strings.HasPrefix(joined, root+string(filepath.Separator)) {
			return "", fmt.Errorf("%q is outside the fleet directory, which a build may not leave", rel)
		}
		return "", fmt.Errorf("%q: %w", rel, unwrapPath(err))
	}
	if real != root && !strings.HasPrefix(real, root+string(filepath.Separator)) {
		return "", fmt.Errorf("%q is outside the fleet directory, which a build may not leave", rel)
	}
	return real, nil
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// unitValues returns a raw unit value as the lines' values.
func unitValues(v cty.Value) ([]string, bool) {
	if v.IsNull() {
		return nil, true
	}
	ty := v.Type()
	switch {
	case ty == cty.String:
		return []string{v.AsString()}, !strings.ContainsAny(v.AsString(), "\n")
	case ty == cty.Number:
		return []string{v.AsBigFloat().Text('f', -1)}, true
	case ty == cty.Bool:
		if v.True() {
			return []string{"yes"}, true
		}
		return []string{"no"}, true
	case ty.IsListType() || ty.IsTupleType() || ty.IsSetType():
		var out []string
		for it := v.ElementIterator(); it.Next(); {
			_, e := it.Element()
			if e.Type().IsListType() || e.Type().IsTupleType() || e.Type().IsObjectType() || e.Type().IsMapType() {
				return nil, false
			}
			vs, ok := unitValues(e)
			if !ok {
				return nil, false
			}
			out = append(out, vs...)
		}
		return out, true
	}
	return nil, false
}

// unitFile is an ordered INI-style unit file.
type unitFile struct {
	sections []*unitSection
}

type unitSection struct {
	name  string
	lines [][2]string
}

func (u *unitFile) section(name string) *unitSection {
	for _, s := range u.sections {
		if s.name == name {
			return s
		}
	}
	s := &unitSection{name: name}
	u.sections = append(u.sections, s)
	return s
}

func (u *unitFile) set(section, key string, values ...string) {
	s := u.section(section)
	for _, v := range values {
		s.lines = append(s.lines, [2]string{key, v})
	}
}

// replace sets key to values where it first was (or at the end), dropping
// what was there.
func (u *unitFile) replace(section, key string, values []string) {
	s := u.section(section)
	at := slices.IndexFunc(s.lines, func(l [2]string) bool { return l[0] == key })
	s.lines = slices.DeleteFunc(s.lines, func(l [2]string) bool { return l[0] == key })
	if at < 0 {
		at = len(s.lines)
	}
	lines := make([][2]string, len(values))
	for i, v := range values {
		lines[i] = [2]string{key, v}
	}
	s.lines = slices.Insert(s.lines, at, lines...)
}

func (u *unitFile) String() string {
	var b strings.Builder
	b.WriteString("# Generated by deploy; changes are overwritten at the next activation.\n")
	for _, s := range u.sections {
		if len(s.lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n[%s]\n", s.name)
		for _, l := range s.lines {
			fmt.Fprintf(&b, "%s=%s\n", l[0], l[1])
		}
	}
	return b.String()
}

func (u *unitFile) applyRaw(r *Resource) {
	raw, ok := r.Block("unit")
	if !ok {
		return
	}
	secs := make([]string, 0, len(raw.Attrs))
	for s := range raw.Attrs {
		secs = append(secs, s)
	}
	sort.Strings(secs)
	for _, sec := range secs {
		v := raw.Attrs[sec].V
		if !v.CanIterateElements() {
			continue
		}
		for it := v.ElementIterator(); it.Next(); {
			k, e := it.Element()
			vals, _ := unitValues(e)
			u.replace(sec, k.AsString(), vals)
		}
	}
}

func quoteEnv(k, v string) string {
	s := k + "=" + v
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	s = strings.ReplaceAll(s, "%", "%%")
	return `"` + s + `"`
}

// ServiceUnit renders a service resource's unit file.
func ServiceUnit(r *Resource, timed bool) string {
	u := &unitFile{}
	u.set("Unit", "Description", r.String("description", r.Name))
	for _, a := range []struct{ attr, key string }{{"after", "After"}, {"wants", "Wants"}, {"requires", "Requires"}} {
		if vs := r.Strings(a.attr); len(vs) > 0 {
			u.set("Unit", a.key, strings.Join(vs, " "))
		}
	}
	u.set("Service", "Type", r.String("type", "simple"))
	for _, a := range []struct{ attr, key string }{{"user", "User"}, {"group", "Group"}, {"working_directory", "WorkingDirectory"}} {
		if r.Has(a.attr) {
			u.set("Service", a.key, r.String(a.attr, ""))
		}
	}
	if vs := r.Strings("supplementary_groups"); len(vs) > 0 {
		u.set("Service", "SupplementaryGroups", strings.Join(vs, " "))
	}
	env := r.Map("environment")
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		u.set("Service", "Environment", quoteEnv(k, env[k]))
	}
	u.set("Service", "EnvironmentFile", r.Strings("environment_files")...)
	u.set("Service", "ExecStartPre", r.Strings("exec_start_pre")...)
	for _, a := range []struct{ attr, key string }{{"exec_start", "ExecStart"}, {"exec_reload", "ExecReload"}, {"exec_stop", "ExecStop"}} {
		if r.Has(a.attr) {
			u.set("Service", a.key, r.String(a.attr, ""))
		}
	}
	if !timed || r.Has("restart") {
		u.set("Service", "Restart", r.String("restart", "on-failure"))
	}
	if r.Has("restart_sec") {
		u.set("Service", "RestartSec", r.String("restart_sec", ""))
	}
	wanted := []string{"multi-user.target"}
	if timed {
		wanted = nil
	}
	if r.Has("wanted_by") {
		wanted = r.Strings("wanted_by")
	}
	if len(wanted) > 0 {
		u.set("Install", "WantedBy", strings.Join(wanted, " "))
	}
	u.applyRaw(r)
	return u.String()
}

// TimerUnit renders a timer resource's unit file.
func TimerUnit(r *Resource) string {
	u := &unitFile{}
	u.set("Unit", "Description", r.String("description", r.Name+" timer"))
	u.set("Timer", "OnCalendar", r.Strings("on_calendar")...)
	for _, a := range []struct{ attr, key string }{{"on_boot_sec", "OnBootSec"}, {"on_active_sec", "OnActiveSec"},
		{"on_unit_active_sec", "OnUnitActiveSec"}, {"randomized_delay_sec", "RandomizedDelaySec"}} {
		if r.Has(a.attr) {
			u.set("Timer", a.key, r.String(a.attr, ""))
		}
	}
	if r.Has("persistent") {
		u.set("Timer", "Persistent", strconv.FormatBool(r.Bool("persistent", false)))
	}
	u.set("Timer", "Unit", r.String("unit", r.Name+".service"))
	wanted := []string{"timers.target"}
	if r.Has("wanted_by") {
		wanted = r.Strings("wanted_by")
	}
	u.set("Install", "WantedBy", strings.Join(wanted, " "))
	return u.String()
}

// FirewallTable is the nftables table deploy owns.
const FirewallTable = "inet deploy"

// FirewallRuleset renders the firewall resource as an nftables script that
// replaces table inet deploy atomically (nft -f applies a file as one
// transaction).
func FirewallRuleset(r *Resource, sshPort int) string {
	var b strings.Builder
	b.WriteString("#!/usr/sbin/nft -f\n# Generated by deploy.\n")
	fmt.Fprintf(&b, "table %s\ndelete table %s\ntable %s {\n", FirewallTable, FirewallTable, FirewallTable)
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n")
	b.WriteString("\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tiif \"lo\" accept\n")
	if ifs := r.Strings("trusted_interfaces"); len(ifs) > 0 {
		q := make([]string, len(ifs))
		for i, s := range ifs {
			q[i] = strconv.Quote(s)
		}
		fmt.Fprintf(&b, "\t\tiifname { %s } accept\n", strings.Join(q, ", "))
	}
	if r.Bool("allow_ping", true) {
		// nft's own keywords, not /etc/protocols names (minimal hosts
		// have no /etc/protocols).
		b.WriteString("\t\tmeta l4proto { icmp, icmpv6 } accept\n")
	}
	tcp := r.Strings("allowed_tcp_ports")
	if r.Bool("allow_ssh", true) {
		if sshPort == 0 {
			sshPort = 22
		}
		tcp = append(tcp, strconv.Itoa(sshPort))
	}
	tcp = sortedPorts(tcp)
	if len(tcp) > 0 {
		fmt.Fprintf(&b, "\t\ttcp dport { %s } accept\n", strings.Join(tcp, ", "))
	}
	if udp := sortedPorts(r.Strings("allowed_udp_ports")); len(udp) > 0 {
		fmt.Fprintf(&b, "\t\tudp dport { %s } accept\n", strings.Join(udp, ", "))
	}
	for _, rule := range r.Strings("extra_input_rules") {
		fmt.Fprintf(&b, "\t\t%s\n", rule)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func sortedPorts(ps []string) []string {
	slices.SortFunc(ps, compareNatural)
	return slices.Compact(ps)
}
