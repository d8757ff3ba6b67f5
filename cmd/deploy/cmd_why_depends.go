package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/sbom"
)

// runWhyDepends builds one host and shows why its system closure holds a
// path: the shortest chain of references from the system to it, each step
// with the file that holds the reference, as `nix why-depends` does.
func runWhyDepends(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	fs := newFlags(e, "why-depends", "DIR#HOST PATH (a store path, or a name that one path of the closure ends with)")
	bf.register(fs)
	pos, err := parse(fs, args, 2, 2)
	if err != nil {
		return err
	}
	res, s, err := buildOne(ctx, e, &bf, pos[0])
	if err != nil {
		return err
	}
	cl, err := s.Closure(res.SystemPath)
	if err != nil {
		return err
	}
	target, err := pickPath(cl, pos[1])
	if err != nil {
		return err
	}
	chain := sbom.Chain(cl, res.SystemPath, target)
	if chain == nil {
		// Cannot happen for a path of the closure; kept for clarity.
		return fmt.Errorf("why-depends: %s does not depend on %s", res.SystemPath, target)
	}
	fmt.Fprintln(e.stdout, chain[0])
	for i := 1; i < len(chain); i++ {
		hash, _, err := closure.SplitPath(s.StoreDir, chain[i])
		if err != nil {
			return err
		}
		indent := strings.Repeat("    ", i-1)
		file, ctxt, err := sbom.FindReference(s.RealPath(chain[i-1]), hash)
		switch {
		case err != nil:
			return fmt.Errorf("why-depends: read %s: %w", chain[i-1], err)
		case file != "":
			fmt.Fprintf(e.stdout, "%s└───%s: …%s…\n", indent, filepath.ToSlash(file), ctxt)
		}
		fmt.Fprintf(e.stdout, "%s    → %s\n", indent, chain[i])
	}
	return nil
}

// pickPath resolves PATH: a store path of the closure, or a name that
// exactly one path's name ends with.
func pickPath(cl []*closure.PathInfo, arg string) (string, error) {
	var matches []string
	for _, pi := range cl {
		if pi.Path == arg {
			return arg, nil
		}
		if !strings.Contains(arg, "/") && strings.HasSuffix(filepath.Base(pi.Path), "-"+arg) {
			matches = append(matches, pi.Path)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return "", withHint(fmt.Errorf("why-depends: %q is not in the closure", arg), ExitConfig,
			"`deploy closure DIR#HOST` lists the closure's paths")
	}
	return "", usageErrorf("why-depends: %q names %d paths of the closure (%s); give the store path", arg, len(matches), strings.Join(matches, ", "))
}
