package builder

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/secrets"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"golang.org/x/crypto/ssh"
)

// Fleet is a loaded fleet directory: its hosts, roles and deployments, not
// yet evaluated per host.
type Fleet struct {
	// Dir is the fleet directory, absolute.
	Dir string
	// Files are the parsed files by name, for printing diagnostics with
	// source snippets (hcl.NewDiagnosticTextWriter).
	Files map[string]*hcl.File
	// Hosts, sorted by name.
	Hosts []*Host
	// Roles by name.
	Roles map[string]*Role
	// Deployments, sorted by name.
	Deployments []*Deployment
	// Lock is deploy.lock.
	Lock *modules.Lock
	// Admins, sorted by name: the people whose keys every secret is
	// encrypted to, besides the hosts that use it.
	Admins []*Admin
	// Cache is the fleet's binary cache, nil when it has none.
	Cache *Cache
	// Notify are the webhooks told of runs that change hosts.
	Notify []*Notify
	// RevokedSecrets are the secret versions the fleet revoked
	// (secrets/revoked), sorted: every host's manifest carries them, and
	// no secret may use one.
	RevokedSecrets []string

	defaults     *scopeBody
	defaultsHost *Host
	funcs        map[string]function.Function
	kinds        []*modules.Kind
	roleNames    cty.Value
}

// Host is a host block.
type Host struct {
	Name      string
	Address   string
	SSHUser   string
	Port      int
	HostKey   string
	Transport string
	// ProxyJump lists jump hosts ("[user@]host[:port],..."); "" means
	// ~/.ssh/config's. Not set by the fleet language (deploy copy --jump).
	ProxyJump string
	Sudo      bool
	Tags      []string
	// Arch is the target's GOARCH (default amd64).
	Arch string
	// Meta is free-form metadata, host.meta in expressions.
	Meta map[string]string
	// BootAttempts and BootTimeout set boot counting for a generation
	// activated for boot: how many of its boots may fail to confirm
	// before the host boots its previous generation again, and how long
	// each boot has to confirm (0: the deployment's, else the agent's
	// defaults, 3 and 5m; docs/activation.md).
	BootAttempts int
	BootTimeout  time.Duration
	DefRange     hcl.Range

	body     *scopeBody
	roleOnly bool // a RoleHost: no defaults
}

// Cache is the cache block: a binary cache in Nix's format that deploy
// pushes closures to once and hosts fetch from.
type Cache struct {
	// URL is where the operator pushes: s3://BUCKET[/PREFIX]?endpoint=...,
	// or file:///DIR.
	URL string
	// FetchURL is where hosts fetch from (http(s):// or file://): an
	// endpoint, a CDN or a mirror of the same cache. Default: the S3
	// endpoint's path-style URL of the bucket and prefix.
	FetchURL string
	// PublicKeys are the trusted keys ("name:base64"): hosts accept only
	// paths signed by one of them.
	PublicKeys []string
	DefRange   hcl.Range
}

// Notify is a notify block: a webhook that runs which change hosts
// (deploy, rollback, reboot, publish --wait) post to when they start,
// halt, roll a host back and end.
type Notify struct {
	Name string
	// URL receives a POST per event (http or https).
	URL string
	// Format is "json" (the run's lifecycle events) or "text" (one line,
	// {"text": "..."}, as chat webhooks take it).
	Format string
	// On are the events posted: "start", "halt", "rollback", "done".
	On       []string
	DefRange hcl.Range
}

// NotifyEvents are the events a notify block can be posted.
var NotifyEvents = []string{"start", "halt", "rollback", "done"}

// loadNotify decodes notify "NAME" { url, format, on }.
func (f *Fleet) loadNotify(b *hcl.Block) (*Notify, hcl.Diagnostics) {
	n := &Notify{Name: b.Labels[0], Format: "json", On: NotifyEvents, DefRange: b.DefRange}
	content, diags := b.Body.Content(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "url", Required: true}, {Name: "format"}, {Name: "on"}}})
	if content == nil || diags.HasErrors() {
		return nil, diags
	}
	str := func(name string) (string, *hcl.Attribute, bool) {
		a, ok := content.Attributes[name]
		if !ok {
			return "", nil, false
		}
		v, d := a.Expr.Value(f.staticCtx())
		diags = append(diags, d...)
		if d.HasErrors() || v.IsNull() || !v.IsKnown() || v.Type() != cty.String {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid " + name, Detail: name + " must be a string.", Subject: a.Expr.Range().Ptr()})
			return "", a, false
		}
		return v.AsString(), a, true
	}
	if u, a, ok := str("url"); ok {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid notify url",
				Detail: fmt.Sprintf("Notify %q: url = %q: want an http:// or https:// URL (a webhook).", n.Name, u), Subject: a.Expr.Range().Ptr()})
		}
		n.URL = u
	}
	if v, a, ok := str("format"); ok {
		if v != "json" && v != "text" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid notify format",
				Detail: fmt.Sprintf("Notify %q: format = %q: want \"json\" (the run's events) or \"text\" (one line, for chat).", n.Name, v), Subject: a.Expr.Range().Ptr()})
		}
		n.Format = v
	}
	if a, ok := content.Attributes["on"]; ok {
		v, d := a.Expr.Value(f.staticCtx())
		diags = append(diags, d...)
		cv, err := convert.Convert(v, cty.List(cty.String))
		if d.HasErrors() || err != nil || cv.IsNull() || !cv.IsWhollyKnown() || cv.LengthInt() == 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid notify on",
				Detail: fmt.Sprintf("Notify %q: on must list some of %q.", n.Name, NotifyEvents), Subject: a.Expr.Range().Ptr()})
		} else {
			n.On = nil
			for i, e := range cv.AsValueSlice() {
				if !slices.Contains(NotifyEvents, e.AsString()) {
					diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid notify on",
						Detail: fmt.Sprintf("Notify %q: %q is not one of %q.", n.Name, e.AsString(), NotifyEvents), Subject: elemRange(a.Expr, i)})
					continue
				}
				n.On = append(n.On, e.AsString())
			}
		}
	}
	return n, diags
}

// Admin is an admin block: a person who can edit and rekey secrets.
type Admin struct {
	Name string
	// Keys are age recipients ("age1...") or SSH public keys
	// ("ssh-ed25519 AAAA...", "ssh-rsa AAAA...").
	Keys     []string
	DefRange hcl.Range
}

// Role is a role block: a reusable, parametrised set of resources.
type Role struct {
	Name      string
	Variables []*Variable
	DefRange  hcl.Range

	body *scopeBody
}

// Variable is a role's variable block.
type Variable struct {
	Name        string
	Type        cty.Type
	Default     cty.Value
	Description string
	DefRange    hcl.Range
}

// Deployment is a deployment block: a named set of hosts and how to roll out
// to them.
type Deployment struct {
	Name string
	// Hosts are the host names given by hosts and selector, sorted.
	Hosts []string
	// BatchSize is the number of hosts per batch, or a percentage of
	// them ("25%"); default 1 host.
	BatchSize BatchSize
	// Canary is the number of hosts that go first, in a batch of their
	// own, before the batches of BatchSize (default 1; 0 for none).
	Canary         int
	MaxFailures    int
	ConfirmTimeout time.Duration
	// Rollback is "all" (default) or "host".
	Rollback string
	// Transport, when set ("ssh" or "tailscale"), is how every host of the
	// deployment is reached, overriding each host's own transport.
	Transport string
	// WaveTimeout is how long each wave of a pull-mode release has to
	// report before the later waves stop (default 30m; docs/pull.md).
	WaveTimeout time.Duration
	// BootAttempts and BootTimeout are its hosts' boot counting settings
	// where a host sets none (0: the agent's defaults, 3 and 5m).
	BootAttempts int
	BootTimeout  time.Duration
	// Window, when set, is when the deployment's hosts may change (push:
	// deploy and reboot refuse or wait outside it).
	Window *Window
	// MaxUnavailable are the deployment's disruption budgets
	// (max_unavailable): at most so many of a group's hosts changing, or
	// down, at once, whatever the batches hold.
	MaxUnavailable []Budget
	DefRange       hcl.Range
}

// Budget is one disruption budget of a deployment (max_unavailable): at
// most Max of Hosts changing or down at once.
type Budget struct {
	// Group is the tag selector ("@db"), or "" for all the deployment's
	// hosts.
	Group string
	// Hosts are the deployment's hosts in the group, sorted.
	Hosts []string
	// Max is the number the budget allows (a percentage of Hosts,
	// resolved; at least 1).
	Max int
	// Spec is the value as written ("1", "25%").
	Spec string
}

// Name is the budget's group as the operator wrote it ("@db", or
// "the deployment").
func (b Budget) Name() string {
	if b.Group == "" {
		return "the deployment"
	}
	return b.Group
}

// BatchSize is a deployment's batch_size: a number of hosts, or a
// percentage of the deployment's hosts.
type BatchSize struct {
	Hosts   int // hosts per batch, when Percent is 0
	Percent int // 1 to 100
}

// ParseBatchSize reads a batch size: "3" hosts, or "25%" of them.
func ParseBatchSize(s string) (BatchSize, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		pct, err := strconv.Atoi(p)
		if err != nil || pct <= 0 || pct > 100 {
			return BatchSize{}, fmt.Errorf("batch_size %q: want a percentage from 1%% to 100%%", s)
		}
		return BatchSize{Percent: pct}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return BatchSize{}, fmt.Errorf("batch_size %q: want a positive number or a percentage", s)
	}
	return BatchSize{Hosts: n}, nil
}

// Of is the number of hosts per batch out of hosts (at least 1).
func (b BatchSize) Of(hosts int) int {
	if b.Percent > 0 {
		return max(1, hosts*b.Percent/100)
	}
	return max(1, b.Hosts)
}

func (b BatchSize) String() string {
	if b.Percent > 0 {
		return strconv.Itoa(b.Percent) + "%"
	}
	return strconv.Itoa(b.Hosts)
}

// scopeBody is the part of a host, role or defaults block that contributes
// resources: resource blocks, role uses and the host-basics attributes.
type scopeBody struct {
	origin   string
	blocks   []*hcl.Block // resource blocks
	roleUses []roleUse
	basics   map[string]*hcl.Attribute // hostname, timezone, ... (modules.BasicKinds)
}

type roleUse struct {
	name  string
	args  hcl.Body // nil when used through roles = [...]
	rng   hcl.Range
	where string
}

var hostNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Load parses every *.hcl file of dir and the lock file. The diagnostics
// carry file:line:column ranges; Files renders them with source snippets.
// The fleet is returned even with errors, as far as it could be read.
func Load(dir string) (*Fleet, hcl.Diagnostics) {
	f := &Fleet{Dir: dir, Files: map[string]*hcl.File{}, Roles: map[string]*Role{}, kinds: modules.Kinds()}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
		f.Dir = abs
	}
	f.funcs = functions(dir)
	// ReadDir, not Glob: Glob hides why a directory cannot be read (it
	// would report an unreadable fleet directory as one without files).
	entries, err := os.ReadDir(dir)
	if err != nil {
		return f, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Cannot read the fleet directory",
			Detail: fmt.Sprintf("%v. The fleet directory must be a directory this user can read.", err)}}
	}
	var matches []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".hcl") && !e.IsDir() {
			matches = append(matches, filepath.Join(dir, e.Name()))
		}
	}
	if len(matches) == 0 {
		return f, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "No configuration files",
			Detail: fmt.Sprintf("The fleet directory %q has no *.hcl files.", dir)}}
	}
	sort.Strings(matches)
	p := hclparse.NewParser()
	var diags hcl.Diagnostics
	var bodies []hcl.Body
	for _, m := range matches {
		name := m
		if rel, err := filepath.Rel(dir, m); err == nil {
			name = rel
		}
		src, err := os.ReadFile(m)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read configuration file", Detail: err.Error()})
			continue
		}
		file, d := p.ParseHCL(src, name)
		diags = append(diags, d...)
		if file != nil {
			f.Files[name] = file
			bodies = append(bodies, file.Body)
		}
	}
	lock, err := modules.ReadLock(dir)
	if err != nil {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid deploy.lock",
			Detail: err.Error() + ". Run `deploy lock` to rewrite it."})
		lock = &modules.Lock{Version: modules.LockVersion, Inputs: map[string]modules.LockedInput{}}
	}
	f.Lock = lock
	revoked, err := secrets.ReadRevocations(dir)
	if err != nil {
		d := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid " + secrets.RevokedFile,
			Detail: err.Error() + ". Lines are \"sha256:HEX FILE TIME\", as deploy secrets revoke writes them."}
		if re := (*secrets.RevocationError)(nil); errors.As(err, &re) {
			pos := hcl.Pos{Line: re.Line, Column: 1}
			d.Subject = &hcl.Range{Filename: secrets.RevokedFile, Start: pos, End: pos}
		}
		diags = append(diags, d)
	}
	f.RevokedSecrets = secrets.Versions(revoked)
	if diags.HasErrors() {
		return f, diags
	}
	top := &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
		{Type: "deployment", LabelNames: []string{"name"}},
		{Type: "host", LabelNames: []string{"name"}},
		{Type: "role", LabelNames: []string{"name"}},
		{Type: "defaults"},
		{Type: "admin", LabelNames: []string{"name"}},
		{Type: "cache"},
		{Type: "notify", LabelNames: []string{"name"}},
		{Type: "hosts_from", LabelNames: []string{"name"}},
	}}
	var hostBlocks, deployBlocks, roleBlocks, defaultsBlocks, cacheBlocks, inventoryBlocks []*hcl.Block
	for _, body := range bodies {
		content, d := body.Content(top)
		diags = append(diags, d...)
		if content == nil {
			continue
		}
		for _, b := range content.Blocks {
			switch b.Type {
			case "role":
				roleBlocks = append(roleBlocks, b)
			case "host":
				hostBlocks = append(hostBlocks, b)
			case "hosts_from":
				inventoryBlocks = append(inventoryBlocks, b)
			case "deployment":
				deployBlocks = append(deployBlocks, b)
			case "defaults":
				defaultsBlocks = append(defaultsBlocks, b)
			case "cache":
				cacheBlocks = append(cacheBlocks, b)
			case "admin":
				a, d := f.loadAdmin(b)
				diags = append(diags, d...)
				if a != nil {
					f.Admins = append(f.Admins, a)
				}
			case "notify":
				n, d := f.loadNotify(b)
				diags = append(diags, d...)
				if n != nil && slices.ContainsFunc(f.Notify, func(o *Notify) bool { return o.Name == n.Name }) {
					diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate notify",
						Detail: fmt.Sprintf("Notify %q is defined twice.", n.Name), Subject: b.DefRange.Ptr()})
				} else if n != nil {
					f.Notify = append(f.Notify, n)
				}
			}
		}
	}
	// Role names first, so that role.NAME resolves in any file.
	roles := map[string]cty.Value{}
	for _, b := range roleBlocks {
		roles[b.Labels[0]] = cty.ObjectVal(map[string]cty.Value{"role": cty.StringVal(b.Labels[0])})
	}
	f.roleNames = cty.ObjectVal(roles)
	for _, b := range roleBlocks {
		diags = append(diags, f.loadRole(b)...)
	}
	f.defaults = &scopeBody{origin: "defaults"}
	f.defaultsHost = &Host{}
	for i, b := range defaultsBlocks {
		if i > 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate defaults block",
				Detail:  fmt.Sprintf("A fleet has at most one defaults block; the first is at %s.", defaultsBlocks[0].DefRange),
				Subject: b.DefRange.Ptr()})
			continue
		}
		diags = append(diags, f.loadDefaults(b)...)
	}
	for i, b := range cacheBlocks {
		if i > 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate cache block",
				Detail:  fmt.Sprintf("A fleet has at most one cache block; the first is at %s.", cacheBlocks[0].DefRange),
				Subject: b.DefRange.Ptr()})
			continue
		}
		c, d := f.loadCache(b)
		diags = append(diags, d...)
		f.Cache = c
	}
	seen := map[string]*Host{}
	for _, b := range hostBlocks {
		h, d := f.loadHost(b)
		diags = append(diags, d...)
		if h == nil {
			continue
		}
		if prev, ok := seen[h.Name]; ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate host",
				Detail:  fmt.Sprintf("Host %q is already defined at %s.", h.Name, prev.DefRange),
				Subject: b.DefRange.Ptr()})
			continue
		}
		seen[h.Name] = h
		f.Hosts = append(f.Hosts, h)
	}
	// Hosts from inventories come after the host blocks, so that a
	// duplicate is reported at the inventory.
	for _, b := range inventoryBlocks {
		hosts, d := f.loadHostsFrom(b)
		diags = append(diags, d...)
		for _, h := range hosts {
			if prev, ok := seen[h.Name]; ok {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate host",
					Detail:  fmt.Sprintf("hosts_from %q makes host %q, which is already defined at %s.", b.Labels[0], h.Name, prev.DefRange),
					Subject: b.DefRange.Ptr()})
				continue
			}
			seen[h.Name] = h
			f.Hosts = append(f.Hosts, h)
		}
	}
	sort.Slice(f.Hosts, func(i, j int) bool { return f.Hosts[i].Name < f.Hosts[j].Name })
	deps := map[string]hcl.Range{}
	for _, b := range deployBlocks {
		d, dd := f.loadDeployment(b)
		diags = append(diags, dd...)
		if d == nil {
			continue
		}
		if prev, ok := deps[d.Name]; ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate deployment",
				Detail: fmt.Sprintf("Deployment %q is already defined at %s.", d.Name, prev), Subject: b.DefRange.Ptr()})
			continue
		}
		if _, ok := seen[d.Name]; ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Ambiguous name",
				Detail:  fmt.Sprintf("Deployment %q has the name of a host, so .#%s would be ambiguous; rename one.", d.Name, d.Name),
				Subject: b.DefRange.Ptr()})
			continue
		}
		deps[d.Name] = d.DefRange
		f.Deployments = append(f.Deployments, d)
	}
	sort.Slice(f.Deployments, func(i, j int) bool { return f.Deployments[i].Name < f.Deployments[j].Name })
	sort.SliceStable(f.Admins, func(i, j int) bool { return f.Admins[i].Name < f.Admins[j].Name })
	for i := 1; i < len(f.Admins); i++ {
		if a, b := f.Admins[i-1], f.Admins[i]; a.Name == b.Name {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate admin",
				Detail: fmt.Sprintf("Admin %q is already defined at %s.", b.Name, a.DefRange), Subject: b.DefRange.Ptr()})
		}
	}
	diags = append(diags, f.checkRoleUses()...)
	return f, diags
}

// Host returns the host called name.
func (f *Fleet) Host(name string) (*Host, bool) {
	for _, h := range f.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return nil, false
}

// RoleHost adds to f, and returns, a host that applies role name with its
// variables' defaults and nothing else (not the defaults block): what
// `deploy image DIR#ROLE` builds. The host is called "role-NAME", has no
// address and is for architecture arch ("" for amd64).
func (f *Fleet) RoleHost(name, arch string) (*Host, hcl.Diagnostics) {
	role, ok := f.Roles[name]
	if !ok {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Unknown role",
			Detail: fmt.Sprintf("No role block defines %q.%s", name, suggest(name, f.roleNameList()))}}
	}
	hostName := "role-" + name
	if h, ok := f.Host(hostName); ok {
		if !h.roleOnly {
			return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Host name taken",
				Detail: fmt.Sprintf("Role %q would be built as host %q, which the fleet defines itself.", name, hostName), Subject: h.DefRange.Ptr()}}
		}
		return h, nil
	}
	if arch == "" {
		arch = "amd64"
	}
	h := &Host{Name: hostName, Arch: arch, Port: 22, Meta: map[string]string{}, DefRange: role.DefRange, roleOnly: true,
		body: &scopeBody{origin: fmt.Sprintf("role %q", name), roleUses: []roleUse{{name: name, rng: role.DefRange, where: fmt.Sprintf("image of role %q", name)}}}}
	f.Hosts = append(f.Hosts, h)
	return h, nil
}

// Deployment returns the deployment called name.
func (f *Fleet) Deployment(name string) (*Deployment, bool) {
	for _, d := range f.Deployments {
		if d.Name == name {
			return d, true
		}
	}
	return nil, false
}

// bodySchema returns the schema of a host, role or defaults body: attrs,
// role blocks (with args), resource blocks and, for roles, variables.
func (f *Fleet) bodySchema(attrs []string, withVariables bool) *hcl.BodySchema {
	s := &hcl.BodySchema{}
	for _, a := range append(append(attrs, "roles"), modules.BasicKinds...) {
		s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: a})
	}
	s.Blocks = append(s.Blocks, hcl.BlockHeaderSchema{Type: "role", LabelNames: []string{"name"}})
	if withVariables {
		s.Blocks = append(s.Blocks, hcl.BlockHeaderSchema{Type: "variable", LabelNames: []string{"name"}})
	}
	for _, k := range f.kinds {
		if slices.Contains(modules.BasicKinds, k.Name) {
			continue
		}
		var labels []string
		if k.Label != "" {
			labels = []string{k.Label}
		}
		s.Blocks = append(s.Blocks, hcl.BlockHeaderSchema{Type: k.Name, LabelNames: labels})
	}
	return s
}

// scope splits a body's content into resources, role uses and basics.
func (f *Fleet) scope(origin string, content *hcl.BodyContent, ctx *hcl.EvalContext) (*scopeBody, hcl.Diagnostics) {
	sb := &scopeBody{origin: origin, basics: map[string]*hcl.Attribute{}}
	var diags hcl.Diagnostics
	for _, n := range modules.BasicKinds {
		if a, ok := content.Attributes[n]; ok {
			sb.basics[n] = a
		}
	}
	if a, ok := content.Attributes["roles"]; ok {
		uses, d := f.roleList(a, ctx, origin)
		diags = append(diags, d...)
		sb.roleUses = append(sb.roleUses, uses...)
	}
	for _, b := range content.Blocks {
		switch b.Type {
		case "variable":
		case "role":
			sb.roleUses = append(sb.roleUses, roleUse{name: b.Labels[0], args: b.Body, rng: b.LabelRanges[0], where: origin})
		default:
			sb.blocks = append(sb.blocks, b)
		}
	}
	return sb, diags
}

// roleList evaluates roles = [role.a, role.b].
func (f *Fleet) roleList(a *hcl.Attribute, ctx *hcl.EvalContext, origin string) ([]roleUse, hcl.Diagnostics) {
	bad := hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid roles",
		Detail:  "roles must be a list of role references, like roles = [role.web, role.monitoring].",
		Subject: a.Expr.Range().Ptr()}}
	v, diags := a.Expr.Value(ctx)
	if diags.HasErrors() {
		return nil, diags
	}
	if v.IsNull() || !(v.Type().IsTupleType() || v.Type().IsListType()) {
		return nil, bad
	}
	var uses []roleUse
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() || !e.Type().IsObjectType() || !e.Type().HasAttribute("role") {
			return nil, bad
		}
		uses = append(uses, roleUse{name: e.GetAttr("role").AsString(), rng: a.Expr.Range(), where: origin})
	}
	return uses, nil
}

func (f *Fleet) staticCtx() *hcl.EvalContext {
	return &hcl.EvalContext{Functions: f.funcs}
}

func (f *Fleet) loadRole(b *hcl.Block) hcl.Diagnostics {
	name := b.Labels[0]
	if prev, ok := f.Roles[name]; ok {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Duplicate role",
			Detail: fmt.Sprintf("Role %q is already defined at %s.", name, prev.DefRange), Subject: b.DefRange.Ptr()}}
	}
	r := &Role{Name: name, DefRange: b.DefRange}
	f.Roles[name] = r
	content, diags := b.Body.Content(f.bodySchema(nil, true))
	if content == nil {
		return diags
	}
	sb, d := f.scope(fmt.Sprintf("role %q", name), content, f.roleCtx())
	diags = append(diags, d...)
	r.body = sb
	for _, vb := range content.Blocks {
		if vb.Type != "variable" {
			continue
		}
		v, d := decodeVariable(vb)
		diags = append(diags, d...)
		if v == nil {
			continue
		}
		for _, o := range r.Variables {
			if o.Name == v.Name {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate variable",
					Detail: fmt.Sprintf("Variable %q is already declared at %s.", v.Name, o.DefRange), Subject: vb.DefRange.Ptr()})
				v = nil
				break
			}
		}
		if v != nil {
			r.Variables = append(r.Variables, v)
		}
	}
	return diags
}

func decodeVariable(b *hcl.Block) (*Variable, hcl.Diagnostics) {
	v := &Variable{Name: b.Labels[0], Type: cty.DynamicPseudoType, DefRange: b.DefRange}
	if !hclsyntax.ValidIdentifier(v.Name) {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid variable name",
			Detail: fmt.Sprintf("%q is not a valid identifier: use letters, digits, _ and -, starting with a letter.", v.Name), Subject: b.LabelRanges[0].Ptr()}}
	}
	content, diags := b.Body.Content(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "default"}, {Name: "type"}, {Name: "description"}}})
	if content == nil {
		return nil, diags
	}
	if a, ok := content.Attributes["type"]; ok {
		ty, d := typeexpr.TypeConstraint(a.Expr)
		diags = append(diags, d...)
		if !d.HasErrors() {
			v.Type = ty
		}
	}
	if a, ok := content.Attributes["description"]; ok {
		d := v.decodeString(a, &v.Description)
		diags = append(diags, d...)
	}
	if a, ok := content.Attributes["default"]; ok {
		val, d := a.Expr.Value(nil)
		diags = append(diags, d...)
		if !d.HasErrors() {
			cv, err := convert.Convert(val, v.Type)
			if err != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid default value",
					Detail: fmt.Sprintf("The default of variable %q does not match its type: %s.", v.Name, err), Subject: a.Expr.Range().Ptr()})
			} else {
				v.Default = cv
			}
		}
	}
	return v, diags
}

func (v *Variable) decodeString(a *hcl.Attribute, dst *string) hcl.Diagnostics {
	val, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		return diags
	}
	if val.IsNull() || !val.Type().Equals(cty.String) {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid description", Detail: "The description must be a string.", Subject: a.Expr.Range().Ptr()}}
	}
	*dst = val.AsString()
	return nil
}

var hostAttrs = []string{"address", "ssh_user", "port", "host_key", "transport", "sudo", "tags", "arch", "meta", "boot_attempts", "boot_timeout"}

func (f *Fleet) loadDefaults(b *hcl.Block) hcl.Diagnostics {
	content, diags := b.Body.Content(f.bodySchema(hostAttrs, false))
	if content == nil {
		return diags
	}
	diags = append(diags, f.decodeHostAttrs(f.defaultsHost, content, true)...)
	sb, d := f.scope("defaults", content, f.roleCtx())
	f.defaults = sb
	return append(diags, d...)
}

func (f *Fleet) loadHost(b *hcl.Block) (*Host, hcl.Diagnostics) {
	name := b.Labels[0]
	var diags hcl.Diagnostics
	if !hostNameRe.MatchString(name) {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid host name",
			Detail:  fmt.Sprintf("%q is not a valid host name: use letters, digits and _ . -, starting with a letter or digit, at most 63 characters.", name),
			Subject: b.LabelRanges[0].Ptr()}}
	}
	content, d := b.Body.Content(f.bodySchema(hostAttrs, false))
	diags = append(diags, d...)
	if content == nil {
		return nil, diags
	}
	h, d := f.newHost(name, b.DefRange, content)
	return h, append(diags, d...)
}

// newHost makes host name from a host block's content (or a hosts_from
// element's), over the defaults.
func (f *Fleet) newHost(name string, def hcl.Range, content *hcl.BodyContent) (*Host, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	d0 := f.defaultsHost
	h := &Host{Name: name, DefRange: def, SSHUser: d0.SSHUser, Port: d0.Port, Transport: d0.Transport,
		Sudo: d0.Sudo, Arch: d0.Arch, Tags: append([]string(nil), d0.Tags...), Meta: map[string]string{},
		BootAttempts: d0.BootAttempts, BootTimeout: d0.BootTimeout}
	for k, v := range d0.Meta {
		h.Meta[k] = v
	}
	diags = append(diags, f.decodeHostAttrs(h, content, false)...)
	if h.SSHUser == "" {
		h.SSHUser = "root"
	}
	if h.Port == 0 {
		h.Port = 22
	}
	if h.Transport == "" {
		h.Transport = "ssh"
	}
	if h.Arch == "" {
		h.Arch = "amd64"
	}
	if h.Address == "" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing address",
			Detail: fmt.Sprintf("Host %q needs address = \"...\" (an IP address or DNS name, or a tailnet name with transport = \"tailscale\").", name), Subject: def.Ptr()})
	}
	sb, d := f.scope(fmt.Sprintf("host %q", name), content, f.roleCtx())
	diags = append(diags, d...)
	h.body = sb
	return h, diags
}

func (f *Fleet) roleCtx() *hcl.EvalContext {
	return &hcl.EvalContext{Functions: f.funcs, Variables: map[string]cty.Value{"role": f.roleNames}}
}

// decodeHostAttrs sets h's fields from the host attributes present.
func (f *Fleet) decodeHostAttrs(h *Host, content *hcl.BodyContent, isDefaults bool) hcl.Diagnostics {
	var diags hcl.Diagnostics
	ctx := f.staticCtx()
	get := func(name string, ty cty.Type) (cty.Value, bool) {
		a, ok := content.Attributes[name]
		if !ok {
			return cty.NilVal, false
		}
		if isDefaults && name == "address" || isDefaults && name == "host_key" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unexpected " + name,
				Detail: fmt.Sprintf("%s belongs in each host block, not in defaults.", name), Subject: a.NameRange.Ptr()})
			return cty.NilVal, false
		}
		v, d := a.Expr.Value(ctx)
		diags = append(diags, d...)
		if d.HasErrors() {
			return cty.NilVal, false
		}
		cv, err := convert.Convert(v, ty)
		if err != nil || cv.IsNull() {
			msg := "must not be null"
			if err != nil {
				msg = err.Error()
			}
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Incorrect attribute value type",
				Detail: fmt.Sprintf("Inappropriate value for %s: %s.", name, msg), Subject: a.Expr.Range().Ptr()})
			return cty.NilVal, false
		}
		return cv, true
	}
	rangeOf := func(name string) *hcl.Range { return content.Attributes[name].Expr.Range().Ptr() }
	if v, ok := get("address", cty.String); ok {
		h.Address = v.AsString()
		if h.Address == "" || strings.ContainsAny(h.Address, " /\n") {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid address",
				Detail: fmt.Sprintf("%q is not a host address.", h.Address), Subject: rangeOf("address")})
		}
	}
	if v, ok := get("ssh_user", cty.String); ok {
		h.SSHUser = v.AsString()
	}
	if v, ok := get("port", cty.Number); ok {
		p, _ := v.AsBigFloat().Int64()
		if p < 1 || p > 65535 || !v.AsBigFloat().IsInt() {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid port",
				Detail: fmt.Sprintf("%s is not a port number between 1 and 65535.", v.AsBigFloat().Text('f', -1)), Subject: rangeOf("port")})
		}
		h.Port = int(p)
	}
	if v, ok := get("host_key", cty.String); ok {
		h.HostKey = v.AsString()
		if err := checkHostKey(h.HostKey); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid host_key",
				Detail: fmt.Sprintf("%s. host_key must be an SSH public key line like \"ssh-ed25519 AAAA...\", whole: deploy keyscan ADDRESS (or ssh-keyscan) prints it.", err), Subject: rangeOf("host_key")})
		}
	}
	if v, ok := get("transport", cty.String); ok {
		h.Transport = v.AsString()
		if h.Transport != "ssh" && h.Transport != "tailscale" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid transport",
				Detail: fmt.Sprintf("transport = %q: want \"ssh\" or \"tailscale\".", h.Transport), Subject: rangeOf("transport")})
		}
	}
	if v, ok := get("sudo", cty.Bool); ok {
		h.Sudo = v.True()
	}
	if v, ok := get("arch", cty.String); ok {
		h.Arch = v.AsString()
		switch h.Arch {
		case "amd64", "arm64", "386", "arm", "riscv64", "ppc64le", "s390x", "loong64":
		default:
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid arch",
				Detail: fmt.Sprintf("arch = %q is not a Linux GOARCH such as \"amd64\" or \"arm64\".", h.Arch), Subject: rangeOf("arch")})
		}
	}
	if v, ok := get("tags", cty.List(cty.String)); ok {
		for it := v.ElementIterator(); it.Next(); {
			_, e := it.Element()
			t := e.AsString()
			if !hostNameRe.MatchString(t) {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid tag",
					Detail: fmt.Sprintf("Tag %q must be letters, digits and _ . -.", t), Subject: rangeOf("tags")})
			}
			h.Tags = append(h.Tags, t)
		}
		sort.Strings(h.Tags)
		h.Tags = compactStrings(h.Tags)
	}
	if v, ok := get("boot_attempts", cty.Number); ok {
		h.BootAttempts, diags = bootAttempts(v, rangeOf("boot_attempts"), diags)
	}
	if v, ok := get("boot_timeout", cty.String); ok {
		h.BootTimeout, diags = bootTimeout(v, rangeOf("boot_timeout"), diags)
	}
	if v, ok := get("meta", cty.Map(cty.String)); ok {
		if h.Meta == nil {
			h.Meta = map[string]string{}
		}
		for k, e := range v.AsValueMap() {
			h.Meta[k] = e.AsString()
		}
	}
	return diags
}

// bootAttempts reads boot_attempts: a whole number of boots, at least 1.
func bootAttempts(v cty.Value, rng *hcl.Range, diags hcl.Diagnostics) (int, hcl.Diagnostics) {
	n, _ := v.AsBigFloat().Int64()
	if n < 1 || n > 100 || !v.AsBigFloat().IsInt() {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid boot_attempts",
			Detail: "boot_attempts must be a whole number of boots from 1 to 100: how many boots of a generation activated for boot may fail to confirm before the host boots its previous generation again.", Subject: rng})
		return 0, diags
	}
	return int(n), diags
}

// bootTimeout reads boot_timeout: a positive duration.
func bootTimeout(v cty.Value, rng *hcl.Range, diags hcl.Diagnostics) (time.Duration, hcl.Diagnostics) {
	t, err := time.ParseDuration(v.AsString())
	if err != nil || t <= 0 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid boot_timeout",
			Detail: fmt.Sprintf("boot_timeout = %q is not a positive duration like \"5m\": how long each boot of a generation activated for boot has to confirm.", v.AsString()), Subject: rng})
		return 0, diags
	}
	return t, diags
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

func (f *Fleet) loadDeployment(b *hcl.Block) (*Deployment, hcl.Diagnostics) {
	d := &Deployment{Name: b.Labels[0], BatchSize: BatchSize{Hosts: 1}, Canary: 1, Rollback: "all", ConfirmTimeout: 30 * time.Second, WaveTimeout: 30 * time.Minute, DefRange: b.DefRange}
	schema := &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "hosts"}, {Name: "selector"}, {Name: "batch_size"}, {Name: "canary"}, {Name: "max_failures"}, {Name: "confirm_timeout"}, {Name: "rollback"}, {Name: "transport"}, {Name: "wave_timeout"}, {Name: "boot_attempts"}, {Name: "boot_timeout"},
		{Name: "window"}, {Name: "max_unavailable"},
	}}
	content, diags := b.Body.Content(schema)
	if content == nil {
		return nil, diags
	}
	ctx := f.staticCtx()
	eval := func(name string, ty cty.Type) (cty.Value, *hcl.Range, bool) {
		a, ok := content.Attributes[name]
		if !ok {
			return cty.NilVal, nil, false
		}
		v, dd := a.Expr.Value(ctx)
		diags = append(diags, dd...)
		if dd.HasErrors() {
			return cty.NilVal, nil, false
		}
		cv, err := convert.Convert(v, ty)
		if err != nil || cv.IsNull() {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Incorrect attribute value type",
				Detail: fmt.Sprintf("Inappropriate value for %s of deployment %q.", name, d.Name), Subject: a.Expr.Range().Ptr()})
			return cty.NilVal, nil, false
		}
		return cv, a.Expr.Range().Ptr(), true
	}
	if v, rng, ok := eval("window", cty.String); ok {
		w, err := ParseWindow(v.AsString())
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid window",
				Detail: fmt.Sprintf("Deployment %q: %s.", d.Name, err), Subject: rng})
		}
		d.Window = w
	}
	set := map[string]bool{}
	given := false
	if v, rng, ok := eval("hosts", cty.List(cty.String)); ok {
		given = true
		for it := v.ElementIterator(); it.Next(); {
			_, e := it.Element()
			n := e.AsString()
			if _, ok := f.Host(n); !ok {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unknown host",
					Detail: fmt.Sprintf("Deployment %q lists host %q, which no host block defines.%s", d.Name, n, f.suggestHost(n)), Subject: rng})
				continue
			}
			set[n] = true
		}
	}
	if v, rng, ok := eval("selector", cty.String); ok {
		given = true
		sel := v.AsString()
		tag, isTag := strings.CutPrefix(sel, "@")
		if !isTag || tag == "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid selector",
				Detail: fmt.Sprintf("selector = %q: want a tag selector like \"@web\".", sel), Subject: rng})
		}
		for _, h := range f.Hosts {
			if containsString(h.Tags, tag) {
				set[h.Name] = true
			}
		}
	}
	if !given {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Deployment without hosts",
			Detail: fmt.Sprintf("Deployment %q needs hosts = [...] or selector = \"@tag\".", d.Name), Subject: b.DefRange.Ptr()})
	}
	for n := range set {
		d.Hosts = append(d.Hosts, n)
	}
	sort.Strings(d.Hosts)
	if a, ok := content.Attributes["max_unavailable"]; ok {
		d.MaxUnavailable, diags = f.loadBudgets(d, a, ctx, diags)
	}
	if a, ok := content.Attributes["batch_size"]; ok {
		v, dd := a.Expr.Value(ctx)
		diags = append(diags, dd...)
		if !dd.HasErrors() {
			s, err := convert.Convert(v, cty.String)
			valid := err == nil && !s.IsNull()
			if valid {
				d.BatchSize, err = ParseBatchSize(s.AsString())
				valid = err == nil
			}
			if !valid {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid batch_size",
					Detail: "batch_size must be a positive number of hosts, or a percentage like \"25%\".", Subject: a.Expr.Range().Ptr()})
			}
		}
	}
	if v, rng, ok := eval("canary", cty.Number); ok {
		n, _ := v.AsBigFloat().Int64()
		if n < 0 || !v.AsBigFloat().IsInt() {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid canary",
				Detail: "canary must be a whole number of hosts that go first, 0 or more (0: no canary batch).", Subject: rng})
		}
		d.Canary = int(n)
	}
	if v, rng, ok := eval("max_failures", cty.Number); ok {
		n, _ := v.AsBigFloat().Int64()
		if n < 0 || !v.AsBigFloat().IsInt() {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid max_failures",
				Detail: "max_failures must be a whole number, 0 or more.", Subject: rng})
		}
		d.MaxFailures = int(n)
	}
	if v, rng, ok := eval("confirm_timeout", cty.String); ok {
		t, err := time.ParseDuration(v.AsString())
		if err != nil || t <= 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid confirm_timeout",
				Detail: fmt.Sprintf("confirm_timeout = %q is not a positive duration like \"30s\".", v.AsString()), Subject: rng})
		}
		d.ConfirmTimeout = t
	}
	if v, rng, ok := eval("wave_timeout", cty.String); ok {
		t, err := time.ParseDuration(v.AsString())
		if err != nil || t <= 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid wave_timeout",
				Detail: fmt.Sprintf("wave_timeout = %q is not a positive duration like \"30m\".", v.AsString()), Subject: rng})
		}
		d.WaveTimeout = t
	}
	if v, rng, ok := eval("boot_attempts", cty.Number); ok {
		d.BootAttempts, diags = bootAttempts(v, rng, diags)
	}
	if v, rng, ok := eval("boot_timeout", cty.String); ok {
		d.BootTimeout, diags = bootTimeout(v, rng, diags)
	}
	if v, rng, ok := eval("rollback", cty.String); ok {
		d.Rollback = v.AsString()
		if d.Rollback != "all" && d.Rollback != "host" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid rollback",
				Detail: fmt.Sprintf("rollback = %q: want \"all\" (a failing batch rolls back every host switched in this run) or \"host\".", d.Rollback), Subject: rng})
		}
	}
	if v, rng, ok := eval("transport", cty.String); ok {
		d.Transport = v.AsString()
		if d.Transport != "ssh" && d.Transport != "tailscale" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid transport",
				Detail: fmt.Sprintf("transport = %q: want \"ssh\" or \"tailscale\".", d.Transport), Subject: rng})
		}
	}
	return d, diags
}

// loadBudgets decodes a deployment's max_unavailable: a number of hosts or
// a percentage ("25%") of all its hosts, or an object of tag selectors to
// such values ({ "@db" = 1, "@web" = "25%" }), each for the deployment's
// hosts with that tag.
func (f *Fleet) loadBudgets(d *Deployment, a *hcl.Attribute, ctx *hcl.EvalContext, diags hcl.Diagnostics) ([]Budget, hcl.Diagnostics) {
	v, dd := a.Expr.Value(ctx)
	diags = append(diags, dd...)
	if dd.HasErrors() {
		return nil, diags
	}
	rng := a.Expr.Range().Ptr()
	bad := func(detail string) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid max_unavailable",
			Detail: detail + ` Write a number of hosts or a percentage of them ("25%"), or an object of tag selectors to those: max_unavailable = { "@db" = 1, "@web" = "25%" }.`, Subject: rng})
	}
	budget := func(group string, hosts []string, v cty.Value) (Budget, bool) {
		what := "max_unavailable"
		if group != "" {
			what += " for " + group
		}
		s, err := convert.Convert(v, cty.String)
		if err != nil || s.IsNull() {
			bad(fmt.Sprintf("Deployment %q: %s is not a number or a percentage.", d.Name, what))
			return Budget{}, false
		}
		size, err := ParseBatchSize(s.AsString())
		if err != nil {
			bad(fmt.Sprintf("Deployment %q: %s = %q is not a positive number of hosts or a percentage from 1%% to 100%%.", d.Name, what, s.AsString()))
			return Budget{}, false
		}
		return Budget{Group: group, Hosts: hosts, Max: size.Of(len(hosts)), Spec: s.AsString()}, true
	}
	ty := v.Type()
	if !ty.IsObjectType() && !ty.IsMapType() {
		if b, ok := budget("", slices.Clone(d.Hosts), v); ok {
			return []Budget{b}, diags
		}
		return nil, diags
	}
	if v.IsNull() || !v.IsKnown() {
		bad(fmt.Sprintf("Deployment %q: max_unavailable is null.", d.Name))
		return nil, diags
	}
	var out []Budget
	for it := v.ElementIterator(); it.Next(); {
		k, e := it.Element()
		key := k.AsString()
		tag, isTag := strings.CutPrefix(key, "@")
		if !isTag || tag == "" {
			bad(fmt.Sprintf("Deployment %q: max_unavailable key %q is not a tag selector like \"@db\".", d.Name, key))
			continue
		}
		var hosts []string
		for _, n := range d.Hosts {
			if h, ok := f.Host(n); ok && containsString(h.Tags, tag) {
				hosts = append(hosts, n)
			}
		}
		if len(hosts) == 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid max_unavailable",
				Detail: fmt.Sprintf("Deployment %q: none of its hosts has the tag %q, so the budget for %s limits nothing. Remove it, or tag the hosts it is meant for.", d.Name, tag, key), Subject: rng})
			continue
		}
		if b, ok := budget(key, hosts, e); ok {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Group < out[j].Group })
	return out, diags
}

func containsString(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// loadCache decodes cache { url, fetch_url, public_keys }.
func (f *Fleet) loadCache(b *hcl.Block) (*Cache, hcl.Diagnostics) {
	c := &Cache{DefRange: b.DefRange}
	content, diags := b.Body.Content(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "url", Required: true}, {Name: "fetch_url"}, {Name: "public_keys", Required: true},
	}})
	if content == nil || diags.HasErrors() {
		return nil, diags
	}
	str := func(name string) (string, *hcl.Range) {
		a, ok := content.Attributes[name]
		if !ok {
			return "", nil
		}
		v, d := a.Expr.Value(f.staticCtx())
		diags = append(diags, d...)
		if d.HasErrors() {
			return "", nil
		}
		if v.IsNull() || v.Type() != cty.String {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Incorrect attribute value type",
				Detail: fmt.Sprintf("The cache's %s must be a string.", name), Subject: a.Expr.Range().Ptr()})
			return "", nil
		}
		return v.AsString(), a.Expr.Range().Ptr()
	}
	var rng *hcl.Range
	c.URL, rng = str("url")
	if rng != nil {
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "s3" && u.Scheme != "file") || (u.Scheme == "s3" && u.Host == "") {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid cache URL",
				Detail:  fmt.Sprintf("url = %q: want s3://BUCKET[/PREFIX]?endpoint=https://HOST&region=REGION, or file:///DIR.", c.URL),
				Subject: rng})
		}
	}
	c.FetchURL, rng = str("fetch_url")
	if rng != nil {
		if u, err := url.Parse(c.FetchURL); err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid cache fetch_url",
				Detail: fmt.Sprintf("fetch_url = %q: hosts fetch over http://, https:// or from file:// (a mounted mirror).", c.FetchURL), Subject: rng})
		}
	} else if !diags.HasErrors() {
		c.FetchURL = defaultFetchURL(c.URL)
	}
	if a, ok := content.Attributes["public_keys"]; ok {
		v, d := a.Expr.Value(f.staticCtx())
		diags = append(diags, d...)
		cv, err := convert.Convert(v, cty.List(cty.String))
		if !d.HasErrors() && (err != nil || cv.IsNull() || cv.LengthInt() == 0) {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid cache public_keys",
				Detail: "public_keys must list at least one key, \"name:base64\" as deploy cache key generate writes it.", Subject: a.Expr.Range().Ptr()})
		} else if !d.HasErrors() {
			for _, k := range cv.AsValueSlice() {
				if _, err := cache.ParsePublicKey(k.AsString()); err != nil {
					diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid cache public key",
						Detail: err.Error() + ".", Subject: a.Expr.Range().Ptr()})
					continue
				}
				c.PublicKeys = append(c.PublicKeys, strings.TrimSpace(k.AsString()))
			}
		}
	}
	if diags.HasErrors() {
		return nil, diags
	}
	return c, diags
}

// defaultFetchURL is where hosts fetch from when the cache block does not
// say: an s3:// cache's endpoint, path-style; a file:// cache itself.
func defaultFetchURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" {
		return raw
	}
	endpoint := u.Query().Get("endpoint")
	if endpoint == "" {
		endpoint = "https://s3.amazonaws.com"
	}
	return strings.TrimSuffix(endpoint, "/") + "/" + u.Host + strings.TrimSuffix(u.Path, "/")
}

// loadAdmin decodes admin "NAME" { keys = [...] }.
func (f *Fleet) loadAdmin(b *hcl.Block) (*Admin, hcl.Diagnostics) {
	a := &Admin{Name: b.Labels[0], DefRange: b.DefRange}
	content, diags := b.Body.Content(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "keys", Required: true}}})
	if content == nil || diags.HasErrors() {
		return nil, diags
	}
	attr := content.Attributes["keys"]
	v, d := attr.Expr.Value(f.staticCtx())
	diags = append(diags, d...)
	if d.HasErrors() {
		return nil, diags
	}
	cv, err := convert.Convert(v, cty.List(cty.String))
	if err != nil || cv.IsNull() || !cv.IsWhollyKnown() || cv.LengthInt() == 0 {
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid admin keys",
			Detail: fmt.Sprintf("Admin %q needs keys = [\"age1...\" or \"ssh-ed25519 AAAA...\", ...] (at least one).", a.Name), Subject: attr.Expr.Range().Ptr()})
	}
	for i, k := range cv.AsValueSlice() {
		key := strings.TrimSpace(k.AsString())
		fields := strings.Fields(key)
		ok := len(fields) == 1 && strings.HasPrefix(key, "age1") ||
			len(fields) >= 2 && (fields[0] == "ssh-ed25519" || fields[0] == "ssh-rsa")
		if !ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid admin key",
				Detail:  fmt.Sprintf("Admin %q: %q is neither an age recipient (age1...) nor an ssh-ed25519 or ssh-rsa public key.", a.Name, key),
				Subject: elemRange(attr.Expr, i)})
			continue
		}
		if _, err := secrets.ParseRecipient(key); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid admin key",
				Detail:  fmt.Sprintf("Admin %q: %s. Copy the whole key: age-keygen -y prints an identity's recipient, an SSH key's .pub file holds the public key.", a.Name, err),
				Subject: elemRange(attr.Expr, i)})
			continue
		}
		a.Keys = append(a.Keys, key)
	}
	return a, diags
}

// checkHostKey parses a host_key: the key type, then base64 that decodes to
// a public key of that type. A truncated or mistyped key is caught here, not
// as an unreachable host at the first connection.
func checkHostKey(line string) error {
	if f := strings.Fields(line); len(f) < 2 || !strings.HasPrefix(f[0], "ssh-") && !strings.HasPrefix(f[0], "ecdsa-") {
		return errors.New("not an SSH public key line")
	}
	f := strings.Fields(line)
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return fmt.Errorf("%q: the key's base64 does not decode (%v): truncated or mistyped", abbrevKey(line), err)
	}
	k, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return fmt.Errorf("%q: not a public key (%v): truncated or mistyped", abbrevKey(line), err)
	}
	if k.Type() != f[0] {
		return fmt.Errorf("%q: the line says %s, the key is %s", abbrevKey(line), f[0], k.Type())
	}
	return nil
}

// abbrevKey shortens a key for a message.
func abbrevKey(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// elemRange is the range of a list attribute's element i when the list is
// written out ([...]), else the whole expression's.
func elemRange(expr hcl.Expression, i int) *hcl.Range {
	if t, ok := expr.(*hclsyntax.TupleConsExpr); ok && i < len(t.Exprs) {
		return t.Exprs[i].Range().Ptr()
	}
	return expr.Range().Ptr()
}
