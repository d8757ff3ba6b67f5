package builder

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// inventoryAttrs are a hosts_from block's own attributes; the rest of its
// body is what every host it makes has: host attributes, roles (also as
// role blocks with arguments) and the basic settings (hostname, ...).
var inventoryAttrs = []string{"source", "command", "for_each", "name"}

// inventoryTimeout bounds a hosts_from command.
const inventoryTimeout = 2 * time.Minute

// loadHostsFrom decodes hosts_from "NAME" { source or command, for_each,
// name, host attributes... }: a host per element of for_each, an
// expression over the JSON document (document), each element's key and
// value as each.key and each.value. Every expression is evaluated per
// element; what the hosts' resources need of the document goes through
// host attributes (meta) or role arguments.
func (f *Fleet) loadHostsFrom(b *hcl.Block) ([]*Host, hcl.Diagnostics) {
	content, diags := b.Body.Content(f.bodySchema(append(slices.Clone(hostAttrs), inventoryAttrs...), false))
	if content == nil {
		return nil, diags
	}
	for _, blk := range content.Blocks {
		if blk.Type != "role" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Resource in hosts_from",
				Detail:  fmt.Sprintf("hosts_from makes hosts from host attributes, roles and role arguments; a %s block here would be evaluated without each. Put it in a role, with what it needs of the document as a role argument or in host meta.", blk.Type),
				Subject: blk.DefRange.Ptr()})
		}
	}
	src, hasSrc := content.Attributes["source"]
	cmd, hasCmd := content.Attributes["command"]
	if hasSrc == hasCmd {
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid hosts_from",
			Detail:  fmt.Sprintf("hosts_from %q needs one of source = \"FILE.json\" (a JSON file of the fleet) and command = [\"terraform\", \"output\", \"-json\"] (a command that prints a JSON document).", b.Labels[0]),
			Subject: b.DefRange.Ptr()})
	}
	for _, n := range []string{"for_each", "name"} {
		if _, ok := content.Attributes[n]; !ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing " + n,
				Detail:  fmt.Sprintf("hosts_from %q needs for_each = document.SOME.LIST (a list or object of the document: one host each) and name = each.value.FIELD (each host's name).", b.Labels[0]),
				Subject: b.DefRange.Ptr()})
		}
	}
	if diags.HasErrors() {
		return nil, diags
	}
	var data []byte
	var docName string
	var rng *hcl.Range
	if hasSrc {
		rng = src.Expr.Range().Ptr()
		v, d := src.Expr.Value(f.staticCtx())
		if diags = append(diags, d...); d.HasErrors() {
			return nil, diags
		}
		if v.Type() != cty.String || v.IsNull() {
			return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid source",
				Detail: "source must be the path of a JSON file, relative to the fleet directory.", Subject: rng})
		}
		docName = v.AsString()
		p := docName
		if !filepath.IsAbs(p) {
			p = filepath.Join(f.Dir, p)
		}
		var err error
		if data, err = os.ReadFile(p); err != nil {
			return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read the inventory",
				Detail: fmt.Sprintf("hosts_from %q: %v.", b.Labels[0], err), Subject: rng})
		}
	} else {
		rng = cmd.Expr.Range().Ptr()
		argv, d := stringList(cmd, f.staticCtx())
		if diags = append(diags, d...); d.HasErrors() {
			return nil, diags
		}
		if len(argv) == 0 {
			return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid command",
				Detail: "command must be a non-empty list of strings: the program and its arguments.", Subject: rng})
		}
		docName = "the output of " + strings.Join(argv, " ")
		var err error
		if data, err = runInventory(f.Dir, argv); err != nil {
			return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Inventory command failed",
				Detail: fmt.Sprintf("hosts_from %q: %v.", b.Labels[0], err), Subject: rng})
		}
	}
	ty, err := ctyjson.ImpliedType(data)
	var doc cty.Value
	if err == nil {
		doc, err = ctyjson.Unmarshal(data, ty)
	}
	if err != nil {
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid inventory document",
			Detail: fmt.Sprintf("hosts_from %q: %s is not a JSON document: %v.", b.Labels[0], docName, err), Subject: rng})
	}
	// in says which document and element an error is about.
	in := func(ds hcl.Diagnostics, elem string) hcl.Diagnostics {
		for _, d := range ds {
			if d.Severity == hcl.DiagError {
				d.Detail = strings.TrimSpace(d.Detail + fmt.Sprintf(" (hosts_from %q: %s, %s)", b.Labels[0], docName, elem))
			}
		}
		return ds
	}
	fe := content.Attributes["for_each"]
	docCtx := f.staticCtx()
	docCtx.Variables = map[string]cty.Value{"document": doc}
	coll, d := fe.Expr.Value(docCtx)
	if diags = append(diags, in(d, "for_each")...); d.HasErrors() {
		return nil, diags
	}
	if coll.IsNull() || !(coll.Type().IsListType() || coll.Type().IsTupleType() || coll.Type().IsMapType() || coll.Type().IsObjectType() || coll.Type().IsSetType()) {
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid for_each",
			Detail:  fmt.Sprintf("hosts_from %q: for_each must be a list or an object of %s (one host per element), not %s.", b.Labels[0], docName, coll.Type().FriendlyName()),
			Subject: fe.Expr.Range().Ptr()})
	}
	var hosts []*Host
	for it := coll.ElementIterator(); it.Next(); {
		k, v := it.Element()
		// The element as an index of for_each: [2], ["db-1"].
		elem := "[" + k.GoString() + "]"
		if k.Type() == cty.String {
			elem = fmt.Sprintf("[%q]", k.AsString())
		} else if k.Type() == cty.Number {
			elem = "[" + k.AsBigFloat().Text('f', -1) + "]"
		}
		ctx := f.staticCtx()
		ctx.Variables = map[string]cty.Value{
			"document": doc,
			"each":     cty.ObjectVal(map[string]cty.Value{"key": k, "value": v}),
			"role":     f.roleNames,
		}
		h, d := f.inventoryHost(b, content, ctx)
		diags = append(diags, in(d, "element "+elem+" of for_each")...)
		if h != nil {
			hosts = append(hosts, h)
		}
	}
	return hosts, diags
}

// inventoryHost makes one host of a hosts_from block: content evaluated in
// ctx (each, document), its expressions then fixed to their values.
func (f *Fleet) inventoryHost(b *hcl.Block, content *hcl.BodyContent, ctx *hcl.EvalContext) (*Host, hcl.Diagnostics) {
	na := content.Attributes["name"]
	nv, diags := na.Expr.Value(ctx)
	if diags.HasErrors() {
		return nil, diags
	}
	if nv.Type() != cty.String || nv.IsNull() {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid host name",
			Detail: fmt.Sprintf("name must be a string, not %s.", nv.Type().FriendlyName()), Subject: na.Expr.Range().Ptr()}}
	}
	name := nv.AsString()
	if !hostNameRe.MatchString(name) {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid host name",
			Detail:  fmt.Sprintf("%q is not a valid host name: use letters, digits and _ . -, starting with a letter or digit, at most 63 characters.", name),
			Subject: na.Expr.Range().Ptr()}}
	}
	// Every attribute of the template is fixed to its value for this
	// element, and so is every role block's argument: what is evaluated
	// later (roles, basics, role arguments) sees no each.
	fixed := &hcl.BodyContent{Attributes: hcl.Attributes{}, MissingItemRange: content.MissingItemRange}
	for n, a := range content.Attributes {
		if slices.Contains(inventoryAttrs, n) {
			continue
		}
		v, d := a.Expr.Value(ctx)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		c := *a
		c.Expr = hcl.StaticExpr(v, a.Expr.Range())
		fixed.Attributes[n] = &c
	}
	for _, blk := range content.Blocks {
		if blk.Type != "role" {
			continue
		}
		attrs, d := blk.Body.JustAttributes()
		diags = append(diags, d...)
		body := staticBody{attrs: hcl.Attributes{}, missing: blk.DefRange}
		for n, a := range attrs {
			v, d := a.Expr.Value(ctx)
			diags = append(diags, d...)
			c := *a
			c.Expr = hcl.StaticExpr(v, a.Expr.Range())
			body.attrs[n] = &c
		}
		c := *blk
		c.Body = body
		fixed.Blocks = append(fixed.Blocks, &c)
	}
	if diags.HasErrors() {
		return nil, diags
	}
	h, d := f.newHost(name, b.DefRange, fixed)
	return h, append(diags, d...)
}

// staticBody is a role block's arguments fixed to their values.
type staticBody struct {
	attrs   hcl.Attributes
	missing hcl.Range
}

func (s staticBody) Content(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Diagnostics) {
	c, _, d := s.PartialContent(schema)
	return c, d
}

func (s staticBody) PartialContent(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Body, hcl.Diagnostics) {
	c := &hcl.BodyContent{Attributes: hcl.Attributes{}, MissingItemRange: s.missing}
	for _, as := range schema.Attributes {
		if a, ok := s.attrs[as.Name]; ok {
			c.Attributes[as.Name] = a
		}
	}
	return c, staticBody{missing: s.missing, attrs: hcl.Attributes{}}, nil
}

func (s staticBody) JustAttributes() (hcl.Attributes, hcl.Diagnostics) { return s.attrs, nil }
func (s staticBody) MissingItemRange() hcl.Range                       { return s.missing }

// stringList evaluates a list-of-strings attribute.
func stringList(a *hcl.Attribute, ctx *hcl.EvalContext) ([]string, hcl.Diagnostics) {
	v, diags := a.Expr.Value(ctx)
	if diags.HasErrors() {
		return nil, diags
	}
	bad := hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid " + a.Name,
		Detail: a.Name + " must be a list of strings.", Subject: a.Expr.Range().Ptr()}}
	if v.IsNull() || !(v.Type().IsListType() || v.Type().IsTupleType()) {
		return nil, bad
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() || e.Type() != cty.String {
			return nil, bad
		}
		out = append(out, e.AsString())
	}
	return out, nil
}

// runInventory runs argv in dir and returns what it printed, or an error
// with the end of what it said on stderr.
func runInventory(dir string, argv []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), inventoryTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	c.Dir = dir
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 400 {
			msg = "..." + msg[len(msg)-400:]
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("no answer within %s", inventoryTimeout)
		}
		if msg != "" {
			return nil, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, msg)
		}
		return nil, fmt.Errorf("%s: %v", strings.Join(argv, " "), err)
	}
	return stdout.Bytes(), nil
}
