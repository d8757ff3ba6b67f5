package builder

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/modules"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// PackageRealizer turns a merged package resource into a store path while a
// host is evaluated, because other resources refer to package.NAME.
// [modules.PackageBuilder] implements it.
type PackageRealizer interface {
	Package(ctx context.Context, r *modules.Resource, arch string) (string, hcl.Diagnostics)
}

// ImageRealizer is a PackageRealizer that also describes the packages that
// are OCI images, for services that run in them.
type ImageRealizer interface {
	Image(path string) (*modules.Image, bool)
}

// application is a role applied to a host (or the host's and the defaults'
// own bodies), with its variables.
type application struct {
	origin string
	vars   cty.Value
	body   *scopeBody
}

func (f *Fleet) checkRoleUses() hcl.Diagnostics {
	var diags hcl.Diagnostics
	check := func(sb *scopeBody) {
		if sb == nil {
			return
		}
		for _, u := range sb.roleUses {
			if _, ok := f.Roles[u.name]; !ok {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unknown role",
					Detail:  fmt.Sprintf("%s applies role %q, which no role block defines.%s", u.where, u.name, suggest(u.name, f.roleNameList())),
					Subject: u.rng.Ptr()})
			}
		}
	}
	check(f.defaults)
	for _, h := range f.Hosts {
		check(h.body)
	}
	names := f.roleNameList()
	for _, n := range names {
		check(f.Roles[n].body)
	}
	return diags
}

func (f *Fleet) roleNameList() []string {
	names := make([]string, 0, len(f.Roles))
	for n := range f.Roles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (f *Fleet) suggestHost(name string) string {
	names := make([]string, len(f.Hosts))
	for i, h := range f.Hosts {
		names[i] = h.Name
	}
	return suggest(name, names)
}

// suggest returns ` Did you mean "x"?` for the closest of names, if close.
func suggest(name string, names []string) string {
	best, bestD := "", 4
	for _, n := range names {
		if d := editDistance(name, n); d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" || bestD > len(name)/2+1 {
		return ""
	}
	return fmt.Sprintf(" Did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// hostValue is host.* in expressions.
func (h *Host) value() cty.Value {
	tags := make([]cty.Value, len(h.Tags))
	for i, t := range h.Tags {
		tags[i] = cty.StringVal(t)
	}
	tagList := cty.ListValEmpty(cty.String)
	if len(tags) > 0 {
		tagList = cty.ListVal(tags)
	}
	meta := cty.MapValEmpty(cty.String)
	if len(h.Meta) > 0 {
		m := map[string]cty.Value{}
		for k, v := range h.Meta {
			m[k] = cty.StringVal(v)
		}
		meta = cty.MapVal(m)
	}
	return cty.ObjectVal(map[string]cty.Value{
		"name":      cty.StringVal(h.Name),
		"address":   cty.StringVal(h.Address),
		"ssh_user":  cty.StringVal(h.SSHUser),
		"port":      cty.NumberIntVal(int64(h.Port)),
		"transport": cty.StringVal(h.Transport),
		"arch":      cty.StringVal(h.Arch),
		"tags":      tagList,
		"meta":      meta,
	})
}

// applications expands the roles of h: the defaults' and the host's own
// bodies, then every role they apply, transitively, each once.
func (f *Fleet) applications(h *Host) ([]application, hcl.Diagnostics) {
	empty := cty.EmptyObjectVal
	defaults := f.defaults
	if h.roleOnly {
		defaults = &scopeBody{origin: "defaults"}
	}
	apps := []application{{origin: "defaults", vars: empty, body: defaults}, {origin: h.body.origin, vars: empty, body: h.body}}
	var diags hcl.Diagnostics
	applied := map[string]roleUse{}
	hostCtx := &hcl.EvalContext{Functions: f.funcs, Variables: map[string]cty.Value{"host": h.value()}}
	var queue []roleUse
	queue = append(queue, defaults.roleUses...)
	queue = append(queue, h.body.roleUses...)
	for len(queue) > 0 {
		u := queue[0]
		queue = queue[1:]
		role, ok := f.Roles[u.name]
		if !ok {
			continue // reported by checkRoleUses
		}
		if first, ok := applied[u.name]; ok {
			if u.args != nil && first.args != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Role applied twice",
					Detail:  fmt.Sprintf("Role %q is applied to host %q at %s and again, with arguments, here; apply it once.", u.name, h.Name, first.rng),
					Subject: u.rng.Ptr()})
			}
			if u.args != nil && first.args == nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Role applied twice",
					Detail:  fmt.Sprintf("Role %q is applied to host %q without arguments at %s and with arguments here; apply it once, with its arguments.", u.name, h.Name, first.rng),
					Subject: u.rng.Ptr()})
			}
			continue
		}
		applied[u.name] = u
		vars, d := role.bind(u, hostCtx)
		diags = append(diags, d...)
		apps = append(apps, application{origin: fmt.Sprintf("role %q", u.name), vars: vars, body: role.body})
		queue = append(queue, role.body.roleUses...)
	}
	return apps, diags
}

// bind evaluates a role use's arguments against the role's variables.
func (r *Role) bind(u roleUse, ctx *hcl.EvalContext) (cty.Value, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	args := map[string]*hcl.Attribute{}
	if u.args != nil {
		attrs, d := u.args.JustAttributes()
		diags = append(diags, d...)
		args = attrs
	}
	vars := map[string]cty.Value{}
	known := map[string]bool{}
	names := []string{}
	for _, v := range r.Variables {
		known[v.Name] = true
		names = append(names, v.Name)
		a, given := args[v.Name]
		if !given {
			if v.Default == cty.NilVal {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing role argument",
					Detail:  fmt.Sprintf("Role %q has variable %q without a default; set it where the role is applied: role %q { %s = ... }.", r.Name, v.Name, r.Name, v.Name),
					Subject: u.rng.Ptr()})
				vars[v.Name] = cty.DynamicVal
				continue
			}
			vars[v.Name] = v.Default
			continue
		}
		val, d := a.Expr.Value(ctx)
		diags = append(diags, d...)
		if d.HasErrors() {
			vars[v.Name] = cty.DynamicVal
			continue
		}
		cv, err := convert.Convert(val, v.Type)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid role argument",
				Detail:  fmt.Sprintf("Variable %q of role %q: %s.", v.Name, r.Name, err),
				Subject: a.Expr.Range().Ptr()})
			cv = cty.DynamicVal
		}
		vars[v.Name] = cv
	}
	argNames := make([]string, 0, len(args))
	for n := range args {
		argNames = append(argNames, n)
	}
	sort.Strings(argNames)
	for _, n := range argNames {
		if !known[n] {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unsupported role argument",
				Detail:  fmt.Sprintf("Role %q has no variable %q.%s", r.Name, n, suggest(n, names)),
				Subject: args[n].NameRange.Ptr()})
		}
	}
	return cty.ObjectVal(vars), diags
}

type defKey struct{ kind, name string }

// phase decodes and merges the definitions of the given kinds across apps.
func (f *Fleet) phase(apps []application, kinds map[string]bool, ctxFor func(application) *hcl.EvalContext) ([]*modules.Resource, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	defs := map[defKey][]*modules.Definition{}
	var order []defKey
	addDef := func(def *modules.Definition) {
		k := defKey{def.Kind.Name, def.Name}
		if _, ok := defs[k]; !ok {
			order = append(order, k)
		}
		defs[k] = append(defs[k], def)
	}
	for _, app := range apps {
		ctx := ctxFor(app)
		for _, b := range app.body.blocks {
			if !kinds[b.Type] {
				continue
			}
			kind, ok := modules.Lookup(b.Type)
			if !ok {
				continue
			}
			name := ""
			if len(b.Labels) > 0 {
				name = b.Labels[0]
			}
			def, d := modules.Decode(kind, name, b.Body, b.DefRange, app.origin, ctx)
			diags = append(diags, d...)
			if def != nil && !d.HasErrors() {
				addDef(def)
			}
		}
		for _, n := range modules.BasicKinds {
			a, ok := app.body.basics[n]
			if !ok || !kinds[n] {
				continue
			}
			kind, _ := modules.Lookup(n)
			v, d := a.Expr.Value(ctx)
			diags = append(diags, d...)
			if d.HasErrors() {
				continue
			}
			ty, what := cty.String, "a string"
			if n == modules.KindSecretsAllowTmpfs {
				ty, what = cty.Bool, "true or false"
			}
			sv, err := convert.Convert(v, ty)
			if err != nil || sv.IsNull() {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Incorrect attribute value type",
					Detail: fmt.Sprintf("%s must be %s.", n, what), Subject: a.Expr.Range().Ptr()})
				continue
			}
			addDef(&modules.Definition{Kind: kind, Priority: modules.PriorityNormal, DefRange: a.NameRange, Origin: app.origin,
				Attrs: map[string]modules.Value{"value": {V: sv, Range: a.Expr.Range()}}})
		}
	}
	var out []*modules.Resource
	for _, k := range order {
		r, d := modules.MergeDefinitions(defs[k])
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		if r.Kind.Check != nil {
			cd := r.Kind.Check(r)
			diags = append(diags, cd...)
			if cd.HasErrors() {
				continue
			}
		}
		out = append(out, r)
	}
	return out, diags
}

// Evaluate evaluates host: it applies its roles, decodes and merges every
// resource, realizes packages through pkgs (their store paths are needed by
// the rest) and returns the host's configuration.
//
// Evaluation runs in three phases, because later ones refer to earlier
// ones: packages (which may use var and host), then secrets (which may also
// use package), then everything else (which may use secret too).
func (f *Fleet) Evaluate(ctx context.Context, host string, pkgs PackageRealizer) (*modules.Config, hcl.Diagnostics) {
	h, ok := f.Host(host)
	if !ok {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Unknown host",
			Detail: fmt.Sprintf("No host block defines %q.%s", host, f.suggestHost(host))}}
	}
	apps, diags := f.applications(h)
	if diags.HasErrors() {
		return nil, diags
	}
	hostVal := h.value()
	vars := func(app application, extra map[string]cty.Value) *hcl.EvalContext {
		v := map[string]cty.Value{"var": app.vars, "host": hostVal}
		for k, x := range extra {
			v[k] = x
		}
		return &hcl.EvalContext{Functions: f.funcs, Variables: v}
	}
	cfg := &modules.Config{Host: h.Name, Arch: h.Arch, SSHPort: h.Port, Packages: map[string]string{}, Images: map[string]*modules.Image{}}
	if f.Cache != nil {
		cfg.Cache = &modules.CacheRef{URL: f.Cache.URL, FetchURL: f.Cache.FetchURL, PublicKeys: f.Cache.PublicKeys}
	}
	for _, n := range f.Notify {
		cfg.Notify = append(cfg.Notify, agentapi.NotifyTarget{Name: n.Name, URL: n.URL, Format: n.Format, On: n.On})
	}

	// Phase 1: packages.
	pkgRes, d := f.phase(apps, map[string]bool{modules.KindPackage: true}, func(a application) *hcl.EvalContext { return vars(a, nil) })
	diags = append(diags, d...)
	pkgVals := map[string]cty.Value{}
	for _, r := range pkgRes {
		p, d := pkgs.Package(ctx, r, h.Arch)
		diags = append(diags, d...)
		if d.HasErrors() {
			pkgVals[r.Name] = cty.UnknownVal(cty.String)
			continue
		}
		cfg.Packages[r.Name] = p
		pkgVals[r.Name] = cty.StringVal(p)
		if ir, ok := pkgs.(ImageRealizer); ok && r.Has("oci") {
			if img, ok := ir.Image(p); ok {
				cfg.Images[p] = img
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Evaluation interrupted", Detail: err.Error()})
	}
	if diags.HasErrors() {
		// Everything else may refer to the packages.
		return nil, dedupe(diags)
	}
	pkgObj := cty.EmptyObjectVal
	if len(pkgVals) > 0 {
		pkgObj = cty.ObjectVal(pkgVals)
	}

	// Phase 2: secrets.
	secRes, d := f.phase(apps, map[string]bool{modules.KindSecret: true}, func(a application) *hcl.EvalContext {
		return vars(a, map[string]cty.Value{"package": pkgObj})
	})
	diags = append(diags, d...)
	secVals := map[string]cty.Value{}
	for _, r := range secRes {
		secVals[r.Name] = cty.ObjectVal(map[string]cty.Value{
			"name": cty.StringVal(r.Name),
			"path": cty.StringVal(modules.SecretPath(r)),
		})
	}
	secObj := cty.EmptyObjectVal
	if len(secVals) > 0 {
		secObj = cty.ObjectVal(secVals)
	}

	// Phase 3: everything else.
	rest := map[string]bool{}
	for _, k := range modules.Kinds() {
		if k.Name != modules.KindPackage && k.Name != modules.KindSecret {
			rest[k.Name] = true
		}
	}
	other, d := f.phase(apps, rest, func(a application) *hcl.EvalContext {
		return vars(a, map[string]cty.Value{"package": pkgObj, "secret": secObj})
	})
	diags = append(diags, d...)
	kindOrder := map[string]int{}
	for i, k := range modules.Kinds() {
		kindOrder[k.Name] = i
	}
	cfg.Resources = append(append(append(cfg.Resources, pkgRes...), secRes...), other...)
	sort.SliceStable(cfg.Resources, func(i, j int) bool {
		a, b := cfg.Resources[i], cfg.Resources[j]
		if a.Kind.Name != b.Kind.Name {
			return kindOrder[a.Kind.Name] < kindOrder[b.Kind.Name]
		}
		return a.Name < b.Name
	})
	diags = append(diags, crossChecks(cfg)...)
	return cfg, dedupe(diags)
}

// crossChecks validates references between resources: users' groups, unit
// users, files under paths other resources own.
func crossChecks(cfg *modules.Config) hcl.Diagnostics {
	var diags hcl.Diagnostics
	paths := map[string]*modules.Resource{}
	for _, r := range cfg.Resources {
		switch r.Kind.Name {
		case modules.KindFile, modules.KindDirectory, modules.KindSymlink:
			if o, ok := paths[r.Name]; ok {
				first, second := o, r
				if before(r.DefRange, o.DefRange) {
					first, second = r, o
				}
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Path defined twice",
					Detail:  fmt.Sprintf("%s and %s (at %s) both manage the path %q; remove one.", second.Key(), first.Key(), first.DefRange, r.Name),
					Subject: second.DefRange.Ptr()})
				continue
			}
			paths[r.Name] = r
		}
	}
	for _, r := range cfg.Resources {
		if r.Kind.Name != modules.KindFile && r.Kind.Name != modules.KindSymlink {
			continue
		}
		for dir := parentDir(r.Name); dir != "/"; dir = parentDir(dir) {
			if o, ok := paths[dir]; ok && o.Kind.Name != modules.KindDirectory {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Path inside a non-directory",
					Detail:  fmt.Sprintf("%s is inside %q, which %s (at %s) makes a %s.", r.Key(), dir, o.Key(), o.DefRange, o.Kind.Name),
					Subject: r.DefRange.Ptr()})
			}
		}
	}
	for _, r := range cfg.Resources {
		if r.Kind.Name == modules.KindSecret {
			if o, ok := paths[modules.SecretPath(r)]; ok {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Path defined twice",
					Detail:  fmt.Sprintf("%s decrypts to %q, which %s (at %s) also manages.", r.Key(), modules.SecretPath(r), o.Key(), o.DefRange),
					Subject: r.Range("path")})
			}
		}
	}
	return diags
}

// before reports whether a starts before b (by file name, then offset).
func before(a, b hcl.Range) bool {
	if a.Filename != b.Filename {
		return a.Filename < b.Filename
	}
	return a.Start.Byte < b.Start.Byte
}

func parentDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// dedupe drops diagnostics repeated with the same summary and range: a role
// applied to several hosts reports its problem once per evaluation.
func dedupe(diags hcl.Diagnostics) hcl.Diagnostics {
	seen := map[string]bool{}
	var out hcl.Diagnostics
	for _, d := range diags {
		k := d.Summary + "\x00" + d.Detail
		if d.Subject != nil {
			k += "\x00" + d.Subject.String()
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, d)
	}
	return out
}
