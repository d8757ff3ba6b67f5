package builder

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/declarative/deploy/modules"
	"github.com/hashicorp/hcl/v2"
)

// SecretUse is one host's use of a secret file, as [SecretUses] finds it.
type SecretUse struct {
	// Secret is the secret resource's name.
	Secret string
	// Source is its file, relative to the fleet directory and clean.
	Source string
	// Host is the host that uses it, and HostKey the host's host_key.
	Host, HostKey string
	// Range is the source attribute's expression.
	Range hcl.Range
}

// SecretUses evaluates every host of f without building or fetching
// anything and returns each use of a secret file, host by host. A source
// outside the fleet directory is an error diagnostic at its attribute.
func SecretUses(ctx context.Context, f *Fleet) ([]SecretUse, hcl.Diagnostics) {
	pb := (&Builder{}).packageBuilder(f, true)
	var uses []SecretUse
	var diags hcl.Diagnostics
	for _, h := range f.Hosts {
		cfg, d := f.Evaluate(ctx, h.Name, pb)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		for _, r := range cfg.Resources {
			if r.Kind.Name != modules.KindSecret {
				continue
			}
			src := r.String("source", "")
			rel := filepath.Clean(src)
			if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Secret source outside the fleet directory",
					Detail:  fmt.Sprintf("The source of secret %q, %q, is outside the fleet directory. Secret sources are paths relative to the fleet directory, like secrets/%s.age.", r.Name, src, r.Name),
					Subject: r.Range("source")})
				continue
			}
			uses = append(uses, SecretUse{Secret: r.Name, Source: rel, Host: h.Name, HostKey: h.HostKey, Range: *r.Range("source")})
		}
	}
	return uses, dedupe(diags)
}

// SecretFiles returns the .age files of the fleet's secrets/ directory,
// relative to the fleet directory and sorted: the secret files, including
// those no host uses (yet).
func (f *Fleet) SecretFiles() []string {
	found, _ := filepath.Glob(filepath.Join(f.Dir, "secrets", "*.age"))
	out := make([]string, 0, len(found))
	for _, p := range found {
		out = append(out, filepath.Join("secrets", filepath.Base(p)))
	}
	slices.Sort(out)
	return out
}
