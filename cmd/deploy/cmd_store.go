package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/declarative/deploy/closure"
)

// storeCommands are deploy store's.
var storeCommands = []command{
	{name: "add", summary: "add a file tree to the local store as a store path", run: runStoreAdd},
	{name: "path-info", summary: "a store path's metadata: NAR hash and size, references", run: runStorePathInfo},
	{name: "closure", summary: "the closure of store paths, with sizes", run: runStoreClosure},
	{name: "verify", summary: "check every path of the local store against its NAR hash", run: runStoreVerify},
	{name: "gc", summary: "delete the paths no root needs", run: runStoreGC},
}

func runStoreAdd(ctx context.Context, e *env, args []string) error {
	var sf storeFlags
	var name string
	var refs stringList
	fs := newFlags(e, "store add", "PATH")
	sf.register(fs)
	fs.StringVar(&name, "name", "", "store path `name` (default: the base name of PATH)")
	fs.Var(&refs, "ref", "a store `path` the new path refers to (repeatable; must be valid)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	s, err := sf.open(e)
	if err != nil {
		return err
	}
	src, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	if name == "" {
		name = filepath.Base(src)
	}
	pi, err := s.AddTree(ctx, src, name, refs)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, pi.Path)
	return nil
}

// pathInfoJSON is the --json form of a path's metadata (stable schema).
type pathInfoJSON struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    int64    `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver,omitempty"`
}

func toJSON(pi *closure.PathInfo) pathInfoJSON {
	refs := pi.References
	if refs == nil {
		refs = []string{}
	}
	return pathInfoJSON{Path: pi.Path, NarHash: pi.NarHashString(), NarSize: pi.NarSize, References: refs, Deriver: pi.Deriver}
}

func runStorePathInfo(_ context.Context, e *env, args []string) error {
	var sf storeFlags
	var asJSON bool
	fs := newFlags(e, "store path-info", "STORE-PATH...")
	sf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	s, err := sf.open(e)
	if err != nil {
		return err
	}
	var out []pathInfoJSON
	for _, p := range pos {
		pi, err := s.Info(p)
		if err != nil {
			return err
		}
		out = append(out, toJSON(pi))
	}
	if asJSON {
		return writeJSON(e.stdout, out)
	}
	for _, pi := range out {
		fmt.Fprintf(e.stdout, "StorePath: %s\nNarHash: %s\nNarSize: %d\nReferences:", pi.Path, pi.NarHash, pi.NarSize)
		for _, r := range pi.References {
			fmt.Fprintf(e.stdout, " %s", r)
		}
		fmt.Fprintln(e.stdout)
	}
	return nil
}

func runStoreClosure(_ context.Context, e *env, args []string) error {
	var sf storeFlags
	var asJSON bool
	fs := newFlags(e, "store closure", "STORE-PATH...")
	sf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	s, err := sf.open(e)
	if err != nil {
		return err
	}
	cl, err := s.Closure(pos...)
	if err != nil {
		return err
	}
	return printClosure(e, cl, asJSON, "")
}

// printClosure prints a closure: JSON path infos, or one "path<TAB>narSize"
// line per path with a total on stderr (prefixed by label when set).
func printClosure(e *env, cl []*closure.PathInfo, asJSON bool, label string) error {
	if asJSON {
		out := make([]pathInfoJSON, len(cl))
		for i, pi := range cl {
			out[i] = toJSON(pi)
		}
		return writeJSON(e.stdout, out)
	}
	var total int64
	for _, pi := range cl {
		fmt.Fprintf(e.stdout, "%s\t%d\n", pi.Path, pi.NarSize)
		total += pi.NarSize
	}
	if label != "" {
		label += ": "
	}
	fmt.Fprintf(e.stderr, "deploy: %s%d paths, %d bytes\n", label, len(cl), total)
	return nil
}

func runStoreVerify(ctx context.Context, e *env, args []string) error {
	var sf storeFlags
	fs := newFlags(e, "store verify", "")
	sf.register(fs)
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	s, err := sf.open(e)
	if err != nil {
		return err
	}
	problems, err := s.Verify(ctx)
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintf(e.stdout, "%s\t%v\n", p.Path, p.Err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("store verify: %d problems", len(problems))
	}
	return nil
}

func runStoreGC(ctx context.Context, e *env, args []string) error {
	var sf storeFlags
	var roots stringList
	fs := newFlags(e, "store gc", "")
	sf.register(fs)
	fs.Var(&roots, "root", "an extra store `path` to keep with its closure (repeatable)")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	s, err := sf.open(e)
	if err != nil {
		return err
	}
	res, err := s.GC(ctx, roots)
	if err != nil {
		return err
	}
	for _, p := range res.Deleted {
		fmt.Fprintln(e.stdout, p)
	}
	fmt.Fprintf(e.stderr, "deploy: deleted %d paths, %d bytes freed\n", len(res.Deleted), res.BytesFreed)
	return nil
}
