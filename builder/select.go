package builder

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Selector is a parsed target such as ".#web1", "fleet#prod" or ".#@web,db1":
// a fleet directory and names, each a host, a deployment or @tag. No names
// selects every host.
type Selector struct {
	Dir   string
	Names []string
}

// ParseSelector parses DIR#NAME[,NAME...]; DIR defaults to ".", and a
// selector without "#" is a directory whose hosts are all selected.
func ParseSelector(s string) (Selector, error) {
	dir, names, hasHash := strings.Cut(s, "#")
	if dir == "" {
		dir = "."
	}
	sel := Selector{Dir: dir}
	if !hasHash {
		return sel, nil
	}
	for _, n := range strings.Split(names, ",") {
		n = strings.TrimSpace(n)
		if n == "" || n == "@" {
			return Selector{}, fmt.Errorf("selector %q: empty name (want DIR#host, DIR#deployment or DIR#@tag)", s)
		}
		sel.Names = append(sel.Names, n)
	}
	return sel, nil
}

// String formats the selector back.
func (s Selector) String() string {
	if len(s.Names) == 0 {
		return s.Dir
	}
	return s.Dir + "#" + strings.Join(s.Names, ",")
}

// Select returns the hosts that names select, sorted by name: a host by its
// name, a deployment by its hosts, "@tag" by the hosts with that tag. No
// names selects every host. A name that selects nothing is an error.
func (f *Fleet) Select(names []string) ([]*Host, hcl.Diagnostics) {
	if len(names) == 0 {
		return f.Hosts, nil
	}
	var diags hcl.Diagnostics
	set := map[string]*Host{}
	for _, n := range names {
		if tag, ok := strings.CutPrefix(n, "@"); ok {
			found := false
			for _, h := range f.Hosts {
				if containsString(h.Tags, tag) {
					set[h.Name] = h
					found = true
				}
			}
			if !found {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No hosts selected",
					Detail: fmt.Sprintf("No host has the tag %q.", tag)})
			}
			continue
		}
		if h, ok := f.Host(n); ok {
			set[h.Name] = h
			continue
		}
		if d, ok := f.Deployment(n); ok {
			for _, hn := range d.Hosts {
				if h, ok := f.Host(hn); ok {
					set[hn] = h
				}
			}
			continue
		}
		cands := f.roleNameList()[:0:0]
		for _, h := range f.Hosts {
			cands = append(cands, h.Name)
		}
		for _, d := range f.Deployments {
			cands = append(cands, d.Name)
		}
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unknown host or deployment",
			Detail: fmt.Sprintf("%q is neither a host nor a deployment of %q.%s", n, f.Dir, suggest(n, cands))})
	}
	out := make([]*Host, 0, len(set))
	for _, h := range set {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, diags
}
