package modules

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

var (
	str      = cty.String
	num      = cty.Number
	boolean  = cty.Bool
	strList  = cty.List(cty.String)
	numList  = cty.List(cty.Number)
	strMap   = cty.Map(cty.String)
	anything = cty.DynamicPseudoType
)

// Kind names.
const (
	KindPackage          = "package"
	KindFile             = "file"
	KindDirectory        = "directory"
	KindSymlink          = "symlink"
	KindUser             = "user"
	KindGroup            = "group"
	KindService          = "service"
	KindTimer            = "timer"
	KindSecret           = "secret"
	KindSysctl           = "sysctl"
	KindFirewall         = "firewall"
	KindHealthCheck      = "health_check"
	KindActivationScript = "activation_script"
	KindHostname         = "hostname"
	KindTimezone         = "timezone"
	// KindSecretsAllowTmpfs is the host setting secrets_allow_tmpfs.
	KindSecretsAllowTmpfs = "secrets_allow_tmpfs"
)

// BasicKinds are the kinds set by an attribute of a host, role or defaults
// body (hostname = "...") rather than by a block.
var BasicKinds = []string{KindHostname, KindTimezone, KindSecretsAllowTmpfs}

// Kinds returns every built-in kind, in the order they are realized. The
// kinds without a block form (hostname, timezone) are set by attributes of a
// host or role and have a single attribute "value".
func Kinds() []*Kind {
	return []*Kind{
		{Name: KindPackage, Label: "name", Doc: "software built or fetched into the store; package.NAME is its store path",
			Attrs: []Attr{
				{Name: "path", Type: str, Doc: "a directory or file inside the fleet directory, copied as is"},
				{Name: "url", Type: str, Doc: "a file to download; pinned by sha256 and deploy.lock"},
				{Name: "sha256", Type: str, Doc: "the downloaded file's SHA-256 (hex or sha256-<base64>)"},
				{Name: "executable", Type: boolean, Doc: "url: mark the file executable"},
			},
			Blocks: []Block{{Name: "go", Doc: "a reproducible go build", Attrs: []Attr{
				{Name: "src", Type: str, Required: true, Doc: "the Go module's directory inside the fleet directory"},
				{Name: "packages", Type: strList, Doc: `packages to build (default ["."]); each main package becomes bin/NAME`},
				{Name: "cgo", Type: boolean, Doc: "enable cgo (default false)"},
				{Name: "ldflags", Type: strList, Doc: "extra -ldflags"},
				{Name: "tags", Type: strList, Doc: "build tags"},
			}}},
			Check: checkPackage},
		{Name: KindGroup, Label: "name", Doc: "a Unix group",
			Attrs: []Attr{
				{Name: "gid", Type: num},
				{Name: "system", Type: boolean},
				{Name: "members", Type: strList, Merge: MergeSet},
			},
			Check: checkGroup},
		{Name: KindUser, Label: "name", Doc: "a Unix user",
			Attrs: []Attr{
				{Name: "uid", Type: num},
				{Name: "system", Type: boolean, Doc: "a system account: system UID range, no login shell"},
				{Name: "group", Type: str, Doc: "primary group (default: a group named after the user, created with it)"},
				{Name: "groups", Type: strList, Merge: MergeSet, Doc: "supplementary groups"},
				{Name: "description", Type: str},
				{Name: "home", Type: str, Doc: `default /home/NAME, or /var/empty for system users`},
				{Name: "create_home", Type: boolean, Doc: "default true for normal users, false for system users"},
				{Name: "shell", Type: str, Doc: "default /bin/bash, or /usr/sbin/nologin for system users"},
				{Name: "authorized_keys", Type: strList, Merge: MergeSet, Doc: "SSH public keys, one line each"},
			},
			Check: checkUser},
		{Name: KindDirectory, Label: "path", Doc: "a directory",
			Attrs: []Attr{
				{Name: "owner", Type: str}, {Name: "group", Type: str}, modeAttr,
			},
			Check: checkDirectory},
		{Name: KindFile, Label: "path", Doc: "a regular file with fixed content",
			Attrs: []Attr{
				{Name: "content", Type: str, Doc: "the content"},
				{Name: "source", Type: str, Doc: "a file inside the fleet directory to copy"},
				{Name: "owner", Type: str}, {Name: "group", Type: str}, modeAttr,
				{Name: "force", Type: boolean, Doc: "replace a file that deploy did not create"},
			},
			Check: checkFile},
		{Name: KindSymlink, Label: "path", Doc: "a symbolic link",
			Attrs: []Attr{
				{Name: "target", Type: str, Required: true},
				{Name: "force", Type: boolean},
			},
			Check: checkSymlink},
		{Name: KindSecret, Label: "name", Doc: "an age-encrypted file, decrypted on the host at activation",
			Attrs: []Attr{
				{Name: "source", Type: str, Required: true, Doc: "the .age file inside the fleet directory"},
				{Name: "path", Type: str, Doc: "where the plaintext goes (default /run/deploy/secrets/NAME)"},
				{Name: "owner", Type: str}, {Name: "group", Type: str}, modeAttr,
				{Name: "units", Type: strList, Merge: MergeSet, Doc: "units to restart when it changes (services mentioning its path are added)"},
			},
			Check: checkSecret},
		{Name: KindSysctl, Label: "key", Doc: "a kernel parameter",
			Attrs: []Attr{{Name: "value", Type: anything, Required: true}},
			Check: checkSysctl},
		{Name: KindFirewall, Doc: "the host firewall (nftables table inet deploy)",
			Attrs: []Attr{
				{Name: "enable", Type: boolean, Doc: "default true"},
				{Name: "allowed_tcp_ports", Type: numList, Merge: MergeSet},
				{Name: "allowed_udp_ports", Type: numList, Merge: MergeSet},
				{Name: "trusted_interfaces", Type: strList, Merge: MergeSet},
				{Name: "allow_ping", Type: boolean, Doc: "default true"},
				{Name: "allow_ssh", Type: boolean, Doc: "accept the host's SSH port (default true), so a deploy cannot lock itself out"},
				{Name: "extra_input_rules", Type: strList, Merge: MergeSet, Doc: "nft rules added to the input chain"},
			},
			Check: checkFirewall},
		{Name: KindService, Label: "name", Doc: "a systemd service",
			Attrs: []Attr{
				{Name: "description", Type: str},
				{Name: "type", Type: str, Doc: "Type= (default simple)"},
				{Name: "exec_start", Type: str},
				{Name: "exec_start_pre", Type: strList},
				{Name: "exec_reload", Type: str},
				{Name: "exec_stop", Type: str},
				{Name: "user", Type: str}, {Name: "group", Type: str},
				{Name: "working_directory", Type: str},
				{Name: "environment", Type: strMap, Merge: MergeMap},
				{Name: "environment_files", Type: strList, Merge: MergeSet},
				{Name: "restart", Type: str, Doc: "Restart= (default on-failure)"},
				{Name: "restart_sec", Type: str},
				{Name: "after", Type: strList, Merge: MergeSet},
				{Name: "wants", Type: strList, Merge: MergeSet},
				{Name: "requires", Type: strList, Merge: MergeSet},
				{Name: "wanted_by", Type: strList, Merge: MergeSet, Doc: `default ["multi-user.target"], or none when a timer starts it`},
				{Name: "supplementary_groups", Type: strList, Merge: MergeSet},
				{Name: "restart_triggers", Type: strList, Merge: MergeSet, Doc: "values whose change restarts the service"},
				{Name: "reload_triggers", Type: strList, Merge: MergeSet, Doc: "values whose change reloads the service"},
				{Name: "enable", Type: boolean, Doc: "start it on activation (default true, false when a timer starts it)"},
			},
			Blocks: []Block{{Name: "unit", Free: anything, Doc: "raw unit file sections: Section = { Key = value or [values] }"}},
			Check:  checkService},
		{Name: KindTimer, Label: "name", Doc: "a systemd timer",
			Attrs: []Attr{
				{Name: "description", Type: str},
				{Name: "unit", Type: str, Doc: "the unit to start (default NAME.service)"},
				{Name: "on_calendar", Type: strList, Merge: MergeSet},
				{Name: "on_boot_sec", Type: str},
				{Name: "on_active_sec", Type: str},
				{Name: "on_unit_active_sec", Type: str},
				{Name: "randomized_delay_sec", Type: str},
				{Name: "persistent", Type: boolean},
				{Name: "wanted_by", Type: strList, Merge: MergeSet, Doc: `default ["timers.target"]`},
			},
			Check: checkTimer},
		{Name: KindActivationScript, Label: "name", Doc: "a script run at the end of activation",
			Attrs: []Attr{
				{Name: "script", Type: str, Doc: "the script text (#!/bin/sh with set -eu unless it has a #! line)"},
				{Name: "source", Type: str, Doc: "an executable file inside the fleet directory"},
				{Name: "after", Type: strList, Merge: MergeSet, Doc: "activation scripts to run first"},
			},
			Check: checkActivationScript},
		{Name: KindHealthCheck, Label: "name", Doc: "a check run after activation",
			Attrs: []Attr{
				{Name: "type", Type: str, Doc: "http, tcp, command or unit_active (default: from the attribute given)"},
				{Name: "url", Type: str}, {Name: "expect_status", Type: num},
				{Name: "address", Type: str},
				{Name: "command", Type: strList},
				{Name: "unit", Type: str},
				{Name: "timeout", Type: str, Doc: "how long the check may take to pass (default 30s)"},
				{Name: "interval", Type: str, Doc: "pause between attempts (default 1s)"},
				{Name: "attempt_timeout", Type: str, Doc: "how long one attempt may take before it is stopped and retried (default: max(interval, 5s), at most timeout)"},
			},
			Check: checkHealthCheck},
		{Name: KindHostname, Doc: "the host name (attribute hostname = \"...\")",
			Attrs: []Attr{{Name: "value", Type: str, Required: true}},
			Check: checkHostname},
		{Name: KindTimezone, Doc: "the time zone (attribute timezone = \"...\")",
			Attrs: []Attr{{Name: "value", Type: str, Required: true}},
			Check: checkTimezone},
		{Name: KindSecretsAllowTmpfs, Doc: "allow secrets on a tmpfs, which can swap, where a ramfs cannot be mounted (attribute secrets_allow_tmpfs = true)",
			Attrs: []Attr{{Name: "value", Type: boolean, Required: true}}},
	}
}

// Lookup returns the built-in kind called name.
func Lookup(name string) (*Kind, bool) {
	for _, k := range Kinds() {
		if k.Name == name {
			return k, true
		}
	}
	return nil, false
}

func errAt(rng *hcl.Range, summary, detail string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(detail, args...), Subject: rng}
}

// defRangeOf is where to report a problem with the resource's name.
func (r *Resource) nameRange() *hcl.Range { return &r.DefRange }

func checkAbsPath(r *Resource) hcl.Diagnostics {
	if !path.IsAbs(r.Name) || path.Clean(r.Name) != r.Name || r.Name == "/" {
		return hcl.Diagnostics{errAt(r.nameRange(), "Invalid path",
			"The %s path %q must be absolute and clean, like \"/etc/hello/config.toml\".", r.Kind.Name, r.Name)}
	}
	return nil
}

// NormalizeMode returns mode as four octal digits, accepting three.
func NormalizeMode(mode string) (string, bool) {
	if len(mode) == 3 {
		mode = "0" + mode
	}
	if len(mode) != 4 {
		return "", false
	}
	if _, err := strconv.ParseUint(mode, 8, 32); err != nil {
		return "", false
	}
	return mode, true
}

func checkMode(r *Resource) hcl.Diagnostics {
	if !r.Has("mode") {
		return nil
	}
	if _, ok := NormalizeMode(r.String("mode", "")); !ok {
		return hcl.Diagnostics{errAt(r.Range("mode"), "Invalid mode",
			"The mode %q is not an octal permission like \"0644\"; write it as a string of three or four octal digits.", r.String("mode", ""))}
	}
	return nil
}

var accountRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}\$?$`)

func checkAccount(r *Resource, what, name string, rng *hcl.Range) hcl.Diagnostics {
	if !accountRe.MatchString(name) {
		return hcl.Diagnostics{errAt(rng, "Invalid "+what+" name",
			"%q is not a valid %s name: use lowercase letters, digits, _ and -, starting with a letter or _, at most 32 characters.", name, what)}
	}
	return nil
}

func checkOwner(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, a := range []string{"owner", "group"} {
		if r.Has(a) {
			what := "user"
			if a == "group" {
				what = "group"
			}
			diags = append(diags, checkAccount(r, what, r.String(a, ""), r.Range(a))...)
		}
	}
	return diags
}

func checkPackage(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	n := 0
	for _, a := range []string{"path", "url", "go"} {
		if r.Has(a) {
			n++
		}
	}
	if n != 1 {
		diags = append(diags, errAt(r.nameRange(), "Invalid package source",
			"Package %q needs exactly one source: a go { src = \"./dir\" } block, path = \"./dir\", or url = \"https://...\" with sha256.", r.Name))
	}
	if r.Has("sha256") && !r.Has("url") {
		diags = append(diags, errAt(r.Range("sha256"), "Unexpected sha256", "sha256 pins a url; package %q has no url.", r.Name))
	}
	if r.Has("executable") && !r.Has("url") {
		diags = append(diags, errAt(r.Range("executable"), "Unexpected executable", "executable applies to url packages; package %q has no url.", r.Name))
	}
	if r.Has("url") {
		u := r.String("url", "")
		if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			diags = append(diags, errAt(r.Range("url"), "Invalid url", "The url %q must start with https:// or http://.", u))
		}
		if r.Has("sha256") {
			if _, err := ParseSHA256(r.String("sha256", "")); err != nil {
				diags = append(diags, errAt(r.Range("sha256"), "Invalid sha256", "%s.", err))
			}
		}
	}
	return diags
}

func checkGroup(r *Resource) hcl.Diagnostics {
	diags := checkAccount(r, "group", r.Name, r.nameRange())
	if gid, ok := r.Int("gid"); ok && (gid < 0 || gid > 65534) {
		diags = append(diags, errAt(r.Range("gid"), "Invalid gid", "The gid %d is outside 0–65534.", gid))
	}
	for _, m := range r.Strings("members") {
		diags = append(diags, checkAccount(r, "user", m, r.Range("members"))...)
	}
	return diags
}

func checkUser(r *Resource) hcl.Diagnostics {
	diags := checkAccount(r, "user", r.Name, r.nameRange())
	if uid, ok := r.Int("uid"); ok && (uid < 0 || uid > 65534) {
		diags = append(diags, errAt(r.Range("uid"), "Invalid uid", "The uid %d is outside 0–65534.", uid))
	}
	if r.Has("group") {
		diags = append(diags, checkAccount(r, "group", r.String("group", ""), r.Range("group"))...)
	}
	for _, g := range r.Strings("groups") {
		diags = append(diags, checkAccount(r, "group", g, r.Range("groups"))...)
	}
	for _, a := range []string{"home", "shell"} {
		if p := r.String(a, ""); r.Has(a) && (!path.IsAbs(p) || path.Clean(p) != p) {
			diags = append(diags, errAt(r.Range(a), "Invalid "+a, "The %s %q must be an absolute, clean path.", a, p))
		}
	}
	for _, k := range r.Strings("authorized_keys") {
		if strings.ContainsAny(k, "\n\r") || len(strings.Fields(k)) < 2 {
			diags = append(diags, errAt(r.Range("authorized_keys"), "Invalid authorized key",
				"Each authorized key is one line like \"ssh-ed25519 AAAA... comment\"; got %q.", k))
		}
	}
	return diags
}

func checkDirectory(r *Resource) hcl.Diagnostics {
	return append(append(checkAbsPath(r), checkMode(r)...), checkOwner(r)...)
}

func checkFile(r *Resource) hcl.Diagnostics {
	diags := append(append(checkAbsPath(r), checkMode(r)...), checkOwner(r)...)
	if r.Has("content") == r.Has("source") {
		diags = append(diags, errAt(r.nameRange(), "Invalid file content",
			"File %q needs exactly one of content = \"...\" or source = \"./path\".", r.Name))
	}
	return diags
}

func checkSymlink(r *Resource) hcl.Diagnostics {
	diags := checkAbsPath(r)
	if t := r.String("target", ""); t == "" || strings.ContainsRune(t, 0) {
		diags = append(diags, errAt(r.Range("target"), "Invalid symlink target", "The target of symlink %q must not be empty.", r.Name))
	}
	return diags
}

// SecretPath returns where secret r's plaintext goes on the host.
func SecretPath(r *Resource) string {
	return r.String("path", "/run/deploy/secrets/"+r.Name)
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9+._=-]*$`)

func checkName(r *Resource) hcl.Diagnostics {
	if !nameRe.MatchString(r.Name) || len(r.Name) > 180 {
		return hcl.Diagnostics{errAt(r.nameRange(), "Invalid "+strings.ReplaceAll(r.Kind.Name, "_", " ")+" name",
			"%q must start with a letter or digit and contain only letters, digits and + . _ = -.", r.Name)}
	}
	return nil
}

func checkSecret(r *Resource) hcl.Diagnostics {
	diags := append(append(checkName(r), checkMode(r)...), checkOwner(r)...)
	if p := SecretPath(r); !path.IsAbs(p) || path.Clean(p) != p {
		diags = append(diags, errAt(r.Range("path"), "Invalid path", "The secret path %q must be absolute and clean.", p))
	}
	if s := r.String("source", ""); !strings.HasSuffix(s, ".age") {
		diags = append(diags, errAt(r.Range("source"), "Invalid secret source",
			"The secret source %q must be an age-encrypted file ending in .age (create it with deploy secrets edit).", s))
	}
	return diags
}

var sysctlRe = regexp.MustCompile(`^[a-z0-9_]+(\.[A-Za-z0-9_*-]+)+$`)

func checkSysctl(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !sysctlRe.MatchString(r.Name) {
		diags = append(diags, errAt(r.nameRange(), "Invalid sysctl key",
			"%q is not a kernel parameter name in dotted form, like \"net.ipv4.ip_forward\".", r.Name))
	}
	if _, ok := SysctlValue(r); !ok {
		diags = append(diags, errAt(r.Range("value"), "Invalid sysctl value", "The value must be a string, number or bool."))
	}
	return diags
}

// SysctlValue returns a sysctl's value as the kernel takes it.
func SysctlValue(r *Resource) (string, bool) {
	v := r.Attrs["value"].V
	switch {
	case v.IsNull():
		return "", false
	case v.Type() == cty.String:
		return v.AsString(), !strings.ContainsAny(v.AsString(), "\n\x00")
	case v.Type() == cty.Number:
		return v.AsBigFloat().Text('f', -1), true
	case v.Type() == cty.Bool:
		if v.True() {
			return "1", true
		}
		return "0", true
	}
	return "", false
}

func checkFirewall(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, a := range []string{"allowed_tcp_ports", "allowed_udp_ports"} {
		for _, p := range r.Strings(a) {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				diags = append(diags, errAt(r.Range(a), "Invalid port", "%s: %s is not a port number between 1 and 65535.", a, p))
			}
		}
	}
	for _, i := range r.Strings("trusted_interfaces") {
		if i == "" || len(i) > 15 || strings.ContainsAny(i, "\"\\ /\n") {
			diags = append(diags, errAt(r.Range("trusted_interfaces"), "Invalid interface name", "%q is not a network interface name.", i))
		}
	}
	for _, rule := range r.Strings("extra_input_rules") {
		if strings.ContainsAny(rule, "\n{};") {
			diags = append(diags, errAt(r.Range("extra_input_rules"), "Invalid firewall rule",
				"Each extra input rule is one nft rule on one line without braces or ';'; got %q.", rule))
		}
	}
	return diags
}

var unitNameRe = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]+$`)

func checkUnitName(r *Resource) hcl.Diagnostics {
	if !unitNameRe.MatchString(r.Name) || strings.Contains(r.Name, ".service") || strings.Contains(r.Name, ".timer") {
		return hcl.Diagnostics{errAt(r.nameRange(), "Invalid "+r.Kind.Name+" name",
			"%q is not a unit name: use letters, digits and :_.@-, without the .%s suffix (it is added).", r.Name, r.Kind.Name)}
	}
	return nil
}

func checkService(r *Resource) hcl.Diagnostics {
	diags := checkUnitName(r)
	raw, _ := r.Block("unit")
	hasRawExec := false
	if raw != nil {
		if svc, ok := raw.Attrs["Service"]; ok && svc.V.CanIterateElements() && svc.V.Type().IsObjectType() && svc.V.Type().HasAttribute("ExecStart") {
			hasRawExec = true
		}
		diags = append(diags, checkRawUnit(raw)...)
	}
	if !r.Has("exec_start") && !hasRawExec {
		diags = append(diags, errAt(r.nameRange(), "Missing exec_start",
			"Service %q needs exec_start = \"...\" (or ExecStart in its unit { Service = {...} } block).", r.Name))
	}
	if rs := r.String("restart", "on-failure"); !oneOf(rs, "no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog") {
		diags = append(diags, errAt(r.Range("restart"), "Invalid restart",
			"restart = %q is not one of no, always, on-success, on-failure, on-abnormal, on-abort, on-watchdog.", rs))
	}
	if t := r.String("type", "simple"); !oneOf(t, "simple", "exec", "forking", "oneshot", "dbus", "notify", "notify-reload", "idle") {
		diags = append(diags, errAt(r.Range("type"), "Invalid service type", "type = %q is not a systemd service Type=.", t))
	}
	for k := range r.Map("environment") {
		if k == "" || strings.ContainsAny(k, "= \n\"") {
			diags = append(diags, errAt(r.Range("environment"), "Invalid environment variable", "%q is not an environment variable name.", k))
		}
	}
	for _, a := range []string{"exec_start", "exec_reload", "exec_stop", "description", "working_directory"} {
		if strings.ContainsAny(r.String(a, ""), "\n") {
			diags = append(diags, errAt(r.Range(a), "Invalid "+a, "%s must be one line.", a))
		}
	}
	return diags
}

func checkRawUnit(raw *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for sec, v := range raw.Attrs {
		if !v.V.Type().IsObjectType() && !v.V.Type().IsMapType() {
			diags = append(diags, errAt(&v.Range, "Invalid unit section",
				"unit { %s = ... } must be an object of keys, like %s = { Key = \"value\" }.", sec, sec))
			continue
		}
		for it := v.V.ElementIterator(); it.Next(); {
			k, e := it.Element()
			if _, ok := unitValues(e); !ok {
				diags = append(diags, errAt(&v.Range, "Invalid unit value",
					"unit { %s = { %s = ... } } must be a string, number, bool or a list of them.", sec, k.AsString()))
			}
		}
	}
	return diags
}

func checkTimer(r *Resource) hcl.Diagnostics {
	diags := checkUnitName(r)
	if !r.Has("on_calendar") && !r.Has("on_boot_sec") && !r.Has("on_active_sec") && !r.Has("on_unit_active_sec") {
		diags = append(diags, errAt(r.nameRange(), "Timer never fires",
			"Timer %q needs on_calendar, on_boot_sec, on_active_sec or on_unit_active_sec.", r.Name))
	}
	return diags
}

func checkActivationScript(r *Resource) hcl.Diagnostics {
	diags := checkName(r)
	if r.Has("script") == r.Has("source") {
		diags = append(diags, errAt(r.nameRange(), "Invalid activation script",
			"Activation script %q needs exactly one of script = \"...\" or source = \"./file\".", r.Name))
	}
	for _, a := range r.Strings("after") {
		if a == r.Name {
			diags = append(diags, errAt(r.Range("after"), "Invalid after", "Activation script %q cannot run after itself.", r.Name))
		}
	}
	return diags
}

// HealthCheckType returns the type of a health check: its type attribute, or
// the one implied by which of url, address, command and unit it sets.
func HealthCheckType(r *Resource) string {
	if r.Has("type") {
		return r.String("type", "")
	}
	for a, t := range map[string]string{"url": "http", "address": "tcp", "command": "command", "unit": "unit_active"} {
		if r.Has(a) {
			return t
		}
	}
	return ""
}

func checkHealthCheck(r *Resource) hcl.Diagnostics {
	diags := checkName(r)
	set := 0
	for _, a := range []string{"url", "address", "command", "unit"} {
		if r.Has(a) {
			set++
		}
	}
	typ := HealthCheckType(r)
	need := map[string]string{"http": "url", "tcp": "address", "command": "command", "unit_active": "unit"}[typ]
	switch {
	case set != 1:
		diags = append(diags, errAt(r.nameRange(), "Invalid health check",
			"Health check %q needs exactly one of url (http), address (tcp), command or unit (unit_active).", r.Name))
	case need == "":
		diags = append(diags, errAt(r.Range("type"), "Invalid health check type",
			"type = %q is not one of http, tcp, command, unit_active.", typ))
	case !r.Has(need):
		diags = append(diags, errAt(r.Range("type"), "Invalid health check",
			"A %s health check needs %s.", typ, need))
	}
	if u := r.String("url", ""); r.Has("url") && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		diags = append(diags, errAt(r.Range("url"), "Invalid url", "The health check url %q must start with http:// or https://.", u))
	}
	if a := r.String("address", ""); r.Has("address") && !strings.Contains(a, ":") {
		diags = append(diags, errAt(r.Range("address"), "Invalid address", "The address %q must be host:port.", a))
	}
	if s, ok := r.Int("expect_status"); ok && (s < 100 || s > 599) {
		diags = append(diags, errAt(r.Range("expect_status"), "Invalid expect_status", "%d is not an HTTP status.", s))
	}
	durations := map[string]time.Duration{}
	for _, a := range []string{"timeout", "interval", "attempt_timeout"} {
		if r.Has(a) {
			d, err := time.ParseDuration(r.String(a, ""))
			if err != nil || d <= 0 {
				diags = append(diags, errAt(r.Range(a), "Invalid duration",
					"%s = %q is not a positive duration like \"10s\" or \"1m30s\".", a, r.String(a, "")))
				continue
			}
			durations[a] = d
		}
	}
	if at, ok := durations["attempt_timeout"]; ok {
		timeout := 30 * time.Second
		if d, ok := durations["timeout"]; ok {
			timeout = d
		}
		if at > timeout {
			diags = append(diags, errAt(r.Range("attempt_timeout"), "Invalid attempt_timeout",
				"attempt_timeout = %q is longer than the check's timeout (%v): one attempt cannot take longer than the whole check; raise timeout or lower attempt_timeout.", r.String("attempt_timeout", ""), timeout))
		}
	}
	return diags
}

var hostnameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

func checkHostname(r *Resource) hcl.Diagnostics {
	if h := r.String("value", ""); !hostnameRe.MatchString(h) || len(h) > 253 {
		return hcl.Diagnostics{errAt(r.Range("value"), "Invalid hostname", "%q is not a valid host name.", h)}
	}
	return nil
}

var tzRe = regexp.MustCompile(`^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$`)

func checkTimezone(r *Resource) hcl.Diagnostics {
	if tz := r.String("value", ""); !tzRe.MatchString(tz) || strings.Contains(tz, "..") {
		return hcl.Diagnostics{errAt(r.Range("value"), "Invalid timezone", "%q is not an IANA time zone name like \"Europe/Berlin\" or \"UTC\".", tz)}
	}
	return nil
}

func oneOf(s string, options ...string) bool {
	for _, o := range options {
		if s == o {
			return true
		}
	}
	return false
}
