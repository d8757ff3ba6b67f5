package modules

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// Merge says how two definitions of the same attribute combine.
type Merge int

const (
	// MergeUnique: the attribute may be set by one definition only, or by
	// several with the same value.
	MergeUnique Merge = iota
	// MergeSet: lists are united, sorted and deduplicated (groups, ports).
	MergeSet
	// MergeMap: maps are united; a key set twice to different values is a
	// conflict (environment).
	MergeMap
)

// Attr is one attribute of a kind's schema, or of one of its blocks.
type Attr struct {
	Name     string
	Type     cty.Type
	Required bool
	Merge    Merge
	Doc      string
	// Mode marks a file mode: a string of octal digits. A number is
	// refused rather than converted (420 would become "0420", not 0644).
	Mode bool
}

// modeAttr is the mode attribute of files, directories and secrets.
var modeAttr = Attr{Name: "mode", Type: cty.String, Mode: true, Doc: `octal permission bits as a string, like "0644"`}

// Block is a nested block of a kind (package's go {}, service's unit {}). It
// is decoded into one attribute of object type named after the block. A
// block with Free set takes any attributes, each converted to Free.
type Block struct {
	Name  string
	Attrs []Attr
	Free  cty.Type
	Doc   string
}

// Kind is a resource kind: its HCL schema, its validation and what it
// realizes into. Each built-in kind is defined in one kind_*.go file.
type Kind struct {
	// Name is the block type, e.g. "file".
	Name string
	// Label names the block's label ("path", "name"); empty for kinds
	// without a label, of which a host has at most one merged instance
	// (firewall).
	Label  string
	Doc    string
	Attrs  []Attr
	Blocks []Block
	// Check validates a merged resource.
	Check func(r *Resource) hcl.Diagnostics
	// Realize adds the host's resources of this kind (sorted by name) to
	// the manifest; nil for kinds that add nothing.
	Realize func(c *Realization, rs []*Resource)
}

// attr returns the schema of the attribute or block called name.
func (k *Kind) attr(name string) (Attr, bool) {
	for _, a := range k.Attrs {
		if a.Name == name {
			return a, true
		}
	}
	for _, b := range k.Blocks {
		if b.Name == name {
			return Attr{Name: b.Name, Merge: MergeUnique}, true
		}
	}
	return Attr{}, false
}

// Priority orders definitions of the same resource, like NixOS's mkDefault
// and mkForce.
type Priority int

// Priorities, lowest first.
const (
	PriorityDefault Priority = iota
	PriorityNormal
	PriorityForce
)

func (p Priority) String() string {
	switch p {
	case PriorityDefault:
		return "default"
	case PriorityForce:
		return "force"
	}
	return "normal"
}

// Value is an evaluated attribute with the range of its expression.
type Value struct {
	V     cty.Value
	Range hcl.Range
	// Sub holds, for a nested block, the ranges of its attributes'
	// expressions (Range is the block's header).
	Sub map[string]hcl.Range
}

// Definition is one block that defines a resource, evaluated but not merged.
type Definition struct {
	Kind     *Kind
	Name     string
	Priority Priority
	Attrs    map[string]Value
	// DefRange is the block's header.
	DefRange hcl.Range
	// Origin says where the block comes from, for messages: `role "web"`,
	// `host "web1"`, `defaults`.
	Origin string
}

// Resource is the merged result of every definition of one kind and name.
type Resource struct {
	Kind  *Kind
	Name  string
	Attrs map[string]Value
	// DefRange is the header of the first winning definition.
	DefRange hcl.Range
	// Defs are the headers of every definition that contributed.
	Defs []hcl.Range
}

// Key identifies a resource: kind and name.
func (r *Resource) Key() string { return r.Kind.Name + " " + fmt.Sprintf("%q", r.Name) }

// Has reports whether attribute name is set.
func (r *Resource) Has(name string) bool {
	v, ok := r.Attrs[name]
	return ok && !v.V.IsNull()
}

// String returns attribute name as a string, or def when unset.
func (r *Resource) String(name, def string) string {
	v, ok := r.Attrs[name]
	if !ok || v.V.IsNull() || !v.V.Type().Equals(cty.String) {
		return def
	}
	return v.V.AsString()
}

// Bool returns attribute name, or def when unset.
func (r *Resource) Bool(name string, def bool) bool {
	v, ok := r.Attrs[name]
	if !ok || v.V.IsNull() || !v.V.Type().Equals(cty.Bool) {
		return def
	}
	return v.V.True()
}

// Int returns attribute name as an int, and whether it is set.
func (r *Resource) Int(name string) (int, bool) {
	v, ok := r.Attrs[name]
	if !ok || v.V.IsNull() || !v.V.Type().Equals(cty.Number) {
		return 0, false
	}
	i, _ := v.V.AsBigFloat().Int64()
	return int(i), true
}

// Strings returns a list attribute as strings (nil when unset).
func (r *Resource) Strings(name string) []string {
	v, ok := r.Attrs[name]
	if !ok || v.V.IsNull() {
		return nil
	}
	return stringsOf(v.V)
}

// Map returns a map attribute (nil when unset).
func (r *Resource) Map(name string) map[string]string {
	v, ok := r.Attrs[name]
	if !ok || v.V.IsNull() || !v.V.CanIterateElements() {
		return nil
	}
	out := map[string]string{}
	for it := v.V.ElementIterator(); it.Next(); {
		k, e := it.Element()
		if !e.IsNull() && e.Type().Equals(cty.String) {
			out[k.AsString()] = e.AsString()
		}
	}
	return out
}

// Range returns the range of attribute name's expression, or the resource's
// header when it is unset.
func (r *Resource) Range(name string) *hcl.Range {
	if v, ok := r.Attrs[name]; ok {
		return &v.Range
	}
	return &r.DefRange
}

// BlockRange returns the range of attribute attr of nested block name, or
// the block's header when the attribute is unset (or the resource's header
// when the block is).
func (r *Resource) BlockRange(name, attr string) *hcl.Range {
	v, ok := r.Attrs[name]
	if !ok {
		return &r.DefRange
	}
	if rng, ok := v.Sub[attr]; ok {
		return &rng
	}
	return &v.Range
}

// Block returns a nested block's attributes as a resource of its own, for the
// accessors; ok is false when the block is absent. The attributes' ranges are
// the block's header (see BlockRange).
func (r *Resource) Block(name string) (*Resource, bool) {
	v, ok := r.Attrs[name]
	if !ok || v.V.IsNull() {
		return nil, false
	}
	sub := &Resource{Kind: r.Kind, Name: r.Name, DefRange: v.Range, Attrs: map[string]Value{}}
	for it := v.V.ElementIterator(); it.Next(); {
		k, e := it.Element()
		if !e.IsNull() {
			sub.Attrs[k.AsString()] = Value{V: e, Range: v.Range}
		}
	}
	return sub, true
}

func stringsOf(v cty.Value) []string {
	if v.IsNull() || !v.CanIterateElements() {
		return nil
	}
	out := []string{}
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() {
			continue
		}
		if s, err := convert.Convert(e, cty.String); err == nil {
			out = append(out, s.AsString())
		}
	}
	return out
}

// schemaOf returns the HCL body schema of a kind's block.
func (k *Kind) schemaOf() *hcl.BodySchema {
	s := &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "priority"}}}
	for _, a := range k.Attrs {
		s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: a.Name, Required: a.Required})
	}
	for _, b := range k.Blocks {
		s.Blocks = append(s.Blocks, hcl.BlockHeaderSchema{Type: b.Name})
	}
	return s
}

// Decode evaluates a kind's block body into a definition. name is the
// block's label ("" for kinds without one).
func Decode(k *Kind, name string, body hcl.Body, defRange hcl.Range, origin string, ctx *hcl.EvalContext) (*Definition, hcl.Diagnostics) {
	def := &Definition{Kind: k, Name: name, Priority: PriorityNormal, Attrs: map[string]Value{}, DefRange: defRange, Origin: origin}
	content, diags := body.Content(k.schemaOf())
	if content == nil {
		return nil, diags
	}
	if a, ok := content.Attributes["priority"]; ok {
		v, d := a.Expr.Value(ctx)
		diags = append(diags, d...)
		if !d.HasErrors() {
			switch {
			case v.Type().Equals(cty.String) && !v.IsNull() && v.AsString() == "force":
				def.Priority = PriorityForce
			case v.Type().Equals(cty.String) && !v.IsNull() && v.AsString() == "default":
				def.Priority = PriorityDefault
			default:
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError, Summary: "Invalid priority",
					Detail:  `The priority must be "force" (this definition wins over others) or "default" (others win over it).`,
					Subject: a.Expr.Range().Ptr(),
				})
			}
		}
	}
	for _, a := range k.Attrs {
		attr, ok := content.Attributes[a.Name]
		if !ok {
			continue
		}
		if a.Mode {
			if d := checkModeType(attr.Expr, ctx); d != nil {
				diags = append(diags, d)
				continue
			}
		}
		v, d := evalAs(attr.Expr, a.Type, ctx, fmt.Sprintf("%s %s", k.Name, a.Name))
		diags = append(diags, d...)
		if !d.HasErrors() && !v.IsNull() {
			def.Attrs[a.Name] = Value{V: v, Range: attr.Expr.Range()}
		}
	}
	seen := map[string]hcl.Range{}
	for _, blk := range content.Blocks {
		var bs Block
		for _, b := range k.Blocks {
			if b.Name == blk.Type {
				bs = b
			}
		}
		if prev, dup := seen[blk.Type]; dup {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError, Summary: fmt.Sprintf("Duplicate %s block", blk.Type),
				Detail:  fmt.Sprintf("A %s block may appear once in a %s; the first is at %s.", blk.Type, k.Name, prev),
				Subject: blk.DefRange.Ptr(),
			})
			continue
		}
		seen[blk.Type] = blk.DefRange
		v, sub, d := decodeBlock(bs, blk.Body, ctx, k.Name)
		diags = append(diags, d...)
		if !d.HasErrors() {
			def.Attrs[bs.Name] = Value{V: v, Range: blk.DefRange, Sub: sub}
		}
	}
	return def, diags
}

func decodeBlock(bs Block, body hcl.Body, ctx *hcl.EvalContext, kind string) (cty.Value, map[string]hcl.Range, hcl.Diagnostics) {
	vals := map[string]cty.Value{}
	ranges := map[string]hcl.Range{}
	var diags hcl.Diagnostics
	if bs.Free != cty.NilType {
		attrs, d := body.JustAttributes()
		diags = append(diags, d...)
		names := make([]string, 0, len(attrs))
		for n := range attrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			v, d := evalAs(attrs[n].Expr, bs.Free, ctx, fmt.Sprintf("%s %s.%s", kind, bs.Name, n))
			diags = append(diags, d...)
			if !d.HasErrors() {
				vals[n] = v
				ranges[n] = attrs[n].Expr.Range()
			}
		}
		if len(vals) == 0 {
			return cty.EmptyObjectVal, ranges, diags
		}
		return cty.ObjectVal(vals), ranges, diags
	}
	s := &hcl.BodySchema{}
	for _, a := range bs.Attrs {
		s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: a.Name, Required: a.Required})
	}
	content, d := body.Content(s)
	diags = append(diags, d...)
	if content == nil {
		return cty.NilVal, nil, diags
	}
	for _, a := range bs.Attrs {
		attr, ok := content.Attributes[a.Name]
		if !ok {
			continue
		}
		v, d := evalAs(attr.Expr, a.Type, ctx, fmt.Sprintf("%s %s.%s", kind, bs.Name, a.Name))
		diags = append(diags, d...)
		if !d.HasErrors() && !v.IsNull() {
			vals[a.Name] = v
			ranges[a.Name] = attr.Expr.Range()
		}
	}
	if len(vals) == 0 {
		return cty.EmptyObjectVal, ranges, diags
	}
	return cty.ObjectVal(vals), ranges, diags
}

// checkModeType refuses a mode given as a number: HCL would convert 420
// to the string "420", read as octal 0420 (r---w----), where the author
// meant 0644 written in decimal, as JSON has it. The hint says how to
// write it.
func checkModeType(expr hcl.Expression, ctx *hcl.EvalContext) *hcl.Diagnostic {
	v, diags := expr.Value(ctx)
	if diags.HasErrors() || !v.IsKnown() || v.IsNull() || !v.Type().Equals(cty.Number) {
		return nil
	}
	detail := "A mode must be a string of octal digits, like mode = \"0644\"; a number is not accepted, because it is ambiguous."
	if bf := v.AsBigFloat(); bf.IsInt() {
		if n, _ := bf.Int64(); n >= 0 && n <= 7777 {
			digits := fmt.Sprint(n)
			var readings []string
			if strings.Trim(digits, "01234567") == "" {
				readings = append(readings, fmt.Sprintf("mode = \"%04s\" for the octal digits %s", digits, digits))
			}
			if n <= 0o7777 {
				readings = append(readings, fmt.Sprintf("mode = \"%04o\" if %d is the mode in decimal (as JSON writes it)", n, n))
			}
			detail = "A mode must be a string of octal digits, not a number: write " + strings.Join(readings, ", or ") + "."
		}
	}
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Mode is a number",
		Detail: detail, Subject: expr.Range().Ptr(), Expression: expr, EvalContext: ctx}
}

// evalAs evaluates expr and converts it to ty.
func evalAs(expr hcl.Expression, ty cty.Type, ctx *hcl.EvalContext, what string) (cty.Value, hcl.Diagnostics) {
	v, diags := expr.Value(ctx)
	if diags.HasErrors() {
		return cty.NilVal, diags
	}
	if !v.IsWhollyKnown() {
		return cty.NilVal, append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError, Summary: "Value not known",
			Detail:  fmt.Sprintf("The value of %s depends on something that is not known while evaluating.", what),
			Subject: expr.Range().Ptr(), Expression: expr, EvalContext: ctx,
		})
	}
	if ty == cty.DynamicPseudoType {
		return v, diags
	}
	cv, err := convert.Convert(v, ty)
	if err != nil {
		return cty.NilVal, append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError, Summary: "Incorrect attribute value type",
			Detail:  fmt.Sprintf("Inappropriate value for %s: %s.", what, err),
			Subject: expr.Range().Ptr(), Expression: expr, EvalContext: ctx,
		})
	}
	return cv, diags
}

// MergeDefinitions merges every definition of one resource (same kind and
// name). Definitions of the highest priority present win and the others are
// dropped. The winners are merged attribute by attribute: MergeSet and
// MergeMap attributes unite, any other attribute set by several winners must
// have the same value everywhere, or it is a conflict reported at the later
// definition, naming the earlier one.
func MergeDefinitions(defs []*Definition) (*Resource, hcl.Diagnostics) {
	top := PriorityDefault
	for _, d := range defs {
		top = max(top, d.Priority)
	}
	var win []*Definition
	for _, d := range defs {
		if d.Priority == top {
			win = append(win, d)
		}
	}
	r := &Resource{Kind: win[0].Kind, Name: win[0].Name, Attrs: map[string]Value{}, DefRange: win[0].DefRange}
	var diags hcl.Diagnostics
	from := map[string]*Definition{}
	for _, d := range win {
		r.Defs = append(r.Defs, d.DefRange)
		names := make([]string, 0, len(d.Attrs))
		for n := range d.Attrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			v := d.Attrs[n]
			prev, ok := r.Attrs[n]
			if !ok {
				r.Attrs[n] = v
				from[n] = d
				continue
			}
			a, _ := r.Kind.attr(n)
			merged, ok := mergeValues(a.Merge, prev.V, v.V)
			if ok {
				r.Attrs[n] = Value{V: merged, Range: prev.Range, Sub: prev.Sub}
				continue
			}
			first := from[n]
			detail := fmt.Sprintf("%s is defined in %s (%s) and in %s (%s)", r.Key(), first.Origin, first.DefRange, d.Origin, d.DefRange)
			if a.Merge == MergeMap {
				detail += fmt.Sprintf(", and both set a key of %q to different values.", n)
			} else {
				detail += fmt.Sprintf(", and both set %q, to different values (the other value is at %s).", n, prev.Range)
			}
			detail += ` Remove one, or mark the one that should win with priority = "force" (or the other with priority = "default").`
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("Conflicting definitions of %s", r.Key()),
				Detail:   detail,
				Subject:  v.Range.Ptr(),
				Context:  d.DefRange.Ptr(),
			})
		}
	}
	return r, diags
}

func mergeValues(m Merge, a, b cty.Value) (cty.Value, bool) {
	switch m {
	case MergeSet:
		elems := stringsOf(a)
		elems = append(elems, stringsOf(b)...)
		ety := a.Type().ElementType()
		var vals []cty.Value
		seen := map[string]bool{}
		slices.SortFunc(elems, compareNatural)
		for _, e := range elems {
			if seen[e] {
				continue
			}
			seen[e] = true
			v, err := convert.Convert(cty.StringVal(e), ety)
			if err != nil {
				return cty.NilVal, false
			}
			vals = append(vals, v)
		}
		if len(vals) == 0 {
			return cty.ListValEmpty(ety), true
		}
		return cty.ListVal(vals), true
	case MergeMap:
		out := a.AsValueMap()
		if out == nil {
			out = map[string]cty.Value{}
		}
		for k, v := range b.AsValueMap() {
			if old, ok := out[k]; ok && !old.RawEquals(v) {
				return cty.NilVal, false
			}
			out[k] = v
		}
		if len(out) == 0 {
			return a, true
		}
		return cty.MapVal(out), true
	}
	return a, a.RawEquals(b)
}

// compareNatural orders numbers numerically and everything else bytewise.
func compareNatural(a, b string) int {
	if len(a) != len(b) && strings.Trim(a, "0123456789") == "" && strings.Trim(b, "0123456789") == "" && a != "" && b != "" {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}
