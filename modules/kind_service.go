package modules

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// serviceKind is a systemd service.
func serviceKind() *Kind {
	return &Kind{Name: KindService, Label: "name", Doc: "a systemd service",
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
			{Name: "root", Type: str, Doc: "an oci package (package.NAME): the service runs in the image's root filesystem, realized by the agent, read-only (RootDirectory=, ProtectSystem=strict)"},
			{Name: "root_writable", Type: boolean, Doc: "with root: leave the image's root writable (no ProtectSystem=strict); what the service writes stays in the realized root that every generation with this image shares"},
			{Name: "bind", Type: strList, Merge: MergeSet, Doc: `host paths made visible inside: "PATH", "PATH:rw", "SRC:DST", "SRC:DST:rw" (read-only unless :rw; "-SRC" when it may be missing)`},
			{Name: "state_directory", Type: strList, Merge: MergeSet, Doc: "StateDirectory=: directories under /var/lib that systemd creates for the service"},
			{Name: "runtime_directory", Type: strList, Merge: MergeSet, Doc: "RuntimeDirectory=: directories under /run"},
			{Name: "cache_directory", Type: strList, Merge: MergeSet, Doc: "CacheDirectory=: directories under /var/cache"},
			{Name: "logs_directory", Type: strList, Merge: MergeSet, Doc: "LogsDirectory=: directories under /var/log"},
		},
		Blocks:  []Block{{Name: "unit", Free: anything, Doc: "raw unit file sections: Section = { Key = value or [values] }"}},
		Check:   checkService,
		Realize: realizeServices,
	}
}

// timerKind is a systemd timer.
func timerKind() *Kind {
	return &Kind{Name: KindTimer, Label: "name", Doc: "a systemd timer",
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
		Check:   checkTimer,
		Realize: realizeTimers,
	}
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
	if !r.Has("exec_start") && !hasRawExec && !r.Has("root") {
		diags = append(diags, errAt(r.nameRange(), "Missing exec_start",
			"Service %q needs exec_start = \"...\" (or ExecStart in its unit { Service = {...} } block).", r.Name))
	}
	if root := r.String("root", ""); r.Has("root") && (!path.IsAbs(root) || path.Clean(root) != root) {
		diags = append(diags, errAt(r.Range("root"), "Invalid root",
			"root = %q is not a store path: write root = package.NAME for a package with an oci { } block.", root))
	}
	for _, b := range r.Strings("bind") {
		if _, err := parseBind(b); err != nil {
			diags = append(diags, errAt(r.Range("bind"), "Invalid bind", "bind %q: %s.", b, err))
		}
	}
	for _, a := range execDirectories {
		for _, d := range r.Strings(a.attr) {
			if d == "" || path.IsAbs(d) || path.Clean(d) != d || strings.HasPrefix(d, "..") || strings.ContainsAny(d, " \t\n%") {
				diags = append(diags, errAt(r.Range(a.attr), "Invalid "+a.attr,
					"%s %q must be a clean relative path (it is below %s), without spaces or %%.", a.attr, d, a.base))
			}
		}
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

// timedServices returns the units that a timer starts: such a service is
// not started or wanted by itself unless the configuration says so.
func (c *Realization) timedServices() map[string]bool {
	timed := map[string]bool{}
	for _, r := range c.Resources(KindTimer) {
		timed[r.String("unit", r.Name+".service")] = true
	}
	return timed
}

// renderedUnit is a service's unit file, rendered once per realization.
type renderedUnit struct {
	name string
	r    *Resource
	text string
}

// serviceUnits renders every service's unit file once, sorted by unit
// name; services and secrets (which restart the units that mention them)
// share the result.
func (c *Realization) serviceUnits() []renderedUnit {
	if c.units != nil {
		return c.units
	}
	timed := c.timedServices()
	c.units = []renderedUnit{}
	for _, r := range c.Resources(KindService) {
		name := r.Name + ".service"
		var img *Image
		if r.Has("root") {
			var ok bool
			if img, ok = c.Config.Images[r.String("root", "")]; !ok {
				c.diags = append(c.diags, errAt(r.Range("root"), "Invalid root",
					"Service %q: root = %q is not the store path of one of this host's oci packages; write root = package.NAME for a package with an oci { } block.", r.Name, r.String("root", "")))
				continue
			}
		}
		text, diags := serviceUnit(r, timed[name], img)
		c.diags = append(c.diags, diags...)
		if img != nil && img.Known {
			c.addImage(r, img)
		}
		c.units = append(c.units, renderedUnit{name: name, r: r, text: text})
	}
	sort.Slice(c.units, func(i, j int) bool { return c.units[i].name < c.units[j].name })
	return c.units
}

// addImage lists img in the manifest, with its user when service r runs as
// the image's user.
func (c *Realization) addImage(r *Resource, img *Image) {
	i := slices.IndexFunc(c.Manifest.Images, func(i manifest.Image) bool { return i.Digest == img.Digest })
	if i < 0 {
		c.Manifest.Images = append(c.Manifest.Images, manifest.Image{Digest: img.Digest, Path: img.Path})
		i = len(c.Manifest.Images) - 1
	}
	if r.Has("user") {
		return
	}
	if u, err := imageUserOf(img); err == nil && u != nil {
		c.Manifest.Images[i].User = u
	}
}

func realizeServices(c *Realization, _ []*Resource) {
	timed := c.timedServices()
	for _, su := range c.serviceUnits() {
		r, name, text := su.r, su.name, su.text
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
		u.Source = c.add(r, StoreName(name, "unit"), []byte(text), false, "exec_start")
		c.Manifest.Units = append(c.Manifest.Units, u)
	}
}

func realizeTimers(c *Realization, rs []*Resource) {
	for _, r := range rs {
		name := r.Name + ".timer"
		text := TimerUnit(r)
		wanted := []string{"timers.target"}
		if r.Has("wanted_by") {
			wanted = r.Strings("wanted_by")
		}
		u := manifest.Unit{Name: name, WantedBy: wanted, Start: true, RestartHash: triggerHash([]string{text})}
		u.Source = c.add(r, StoreName(name, "unit"), []byte(text), false, "unit")
		c.Manifest.Units = append(c.Manifest.Units, u)
	}
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

// ServiceUnit renders the unit file of a service resource that does not run
// in an image.
func ServiceUnit(r *Resource, timed bool) string {
	text, _ := serviceUnit(r, timed, nil)
	return text
}

// serviceUnit renders a service's unit file; img is the image of its root,
// or nil.
func serviceUnit(r *Resource, timed bool, img *Image) (string, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	var run *imageRun
	if img != nil {
		run, diags = imageRunOf(r, img)
	}
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
	if run != nil {
		run.render(u, r)
	}
	for _, a := range execDirectories {
		if vs := r.Strings(a.attr); len(vs) > 0 {
			u.set("Service", a.key, strings.Join(vs, " "))
		}
	}
	var ro, rw []string
	for _, b := range r.Strings("bind") {
		if bd, err := parseBind(b); err == nil {
			if bd.rw {
				rw = append(rw, bd.unitValue())
			} else {
				ro = append(ro, bd.unitValue())
			}
		}
	}
	if len(ro) > 0 {
		u.set("Service", "BindReadOnlyPaths", strings.Join(ro, " "))
	}
	if len(rw) > 0 {
		u.set("Service", "BindPaths", strings.Join(rw, " "))
	}
	env := r.Map("environment")
	if run != nil {
		env = run.env(env)
	}
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
		} else if a.attr == "exec_start" && run != nil && run.execStart != "" {
			u.set("Service", a.key, run.execStart)
		}
	}
	if run != nil && run.stopSignal != "" {
		u.set("Service", "KillSignal", run.stopSignal)
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
	return u.String(), diags
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
