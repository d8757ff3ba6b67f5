package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/oci"
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
	var bf buildFlags
	var roots, fleets stringList
	fs := newFlags(e, "store gc", "")
	bf.register(fs)
	fs.Var(&roots, "root", "an extra store `path` to keep with its closure (repeatable)")
	fs.Var(&fleets, "fleet", "keep the systems of every host of the fleet in `DIR` as it is now, building them first (repeatable)")
	keepSince := fs.Duration("keep-since", 7*24*time.Hour, "keep the systems built within this `duration`; 0 keeps none of them")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	if *keepSince < 0 {
		return usageErrorf("--keep-since %v: want a duration of 0 or more", *keepSince)
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	s := b.Store
	keep := map[string][]string{} // path -> why
	why := func(p, reason string) { keep[p] = append(keep[p], reason) }
	for _, dir := range fleets {
		v := newView(e, false, false)
		sess := &fleet.Session{Targets: []string{dir}, Command: "store gc", Builder: b, Emit: v.Event, Diagnostics: e.printDiags}
		rep, err := runSession(sess, v, func() (*fleet.Report, error) { return sess.Build(ctx) })
		if err != nil {
			return fmt.Errorf("building the fleet in %s to keep its systems (nothing deleted): %w", dir, err)
		}
		for _, h := range sess.Selected {
			if hr := rep.Hosts[h.Name]; hr != nil && hr.System != "" {
				why(hr.System, "the system of "+h.Name+" in "+dir)
			}
		}
	}
	builds, err := s.BuildRoots()
	if err != nil {
		return err
	}
	cutoff := time.Now().Add(-*keepSince)
	var expired []closure.BuildRoot
	for _, br := range builds {
		if *keepSince > 0 && br.At.After(cutoff) {
			why(br.Path, fmt.Sprintf("built for %s %s ago", br.Name, time.Since(br.At).Round(time.Second)))
		} else {
			expired = append(expired, br)
		}
	}
	indirect, err := s.IndirectRoots()
	if err != nil {
		return err
	}
	var stale []closure.IndirectRoot
	for _, ir := range indirect {
		if ir.Path == "" {
			stale = append(stale, ir)
			continue
		}
		why(ir.Path, "out-link "+ir.Link)
	}
	for _, r := range roots {
		why(r, "--root")
	}
	own, err := s.Roots()
	if err != nil {
		return err
	}
	for _, r := range own {
		why(r, "a root of the store (a pushed or pinned path)")
	}
	// The roots that are no longer roots go first: what gc then deletes
	// is what nothing above needs.
	for _, br := range expired {
		if err := os.Remove(br.Link); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	for _, ir := range stale {
		if err := os.Remove(ir.Root); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	kept := make([]string, 0, len(keep))
	for p := range keep {
		kept = append(kept, p)
	}
	sort.Strings(kept)
	for _, p := range kept {
		fmt.Fprintf(e.stderr, "deploy: keeping %s (%s)\n", p, strings.Join(keep[p], "; "))
	}
	extra := make([]string, 0, len(kept))
	for _, p := range kept {
		if ok, err := s.Valid(p); err == nil && ok {
			extra = append(extra, p)
		}
	}
	res, err := s.GC(ctx, extra)
	if err != nil {
		return err
	}
	for _, p := range res.Deleted {
		fmt.Fprintln(e.stdout, p)
	}
	// The images' roots flattened for the builder go with their image paths.
	pruned, err := (&oci.Puller{CacheDir: filepath.Join(b.CacheDir, "oci")}).PruneRoots(s)
	if err != nil {
		return fmt.Errorf("removing the flattened roots of collected images: %w", err)
	}
	if pruned > 0 {
		fmt.Fprintf(e.stderr, "deploy: removed %d flattened image roots from the cache\n", pruned)
	}
	fmt.Fprintf(e.stderr, "deploy: kept %d roots with their closures (%d builds older than %v and %d out-links gone no longer count); deleted %d paths, %d bytes freed\n",
		len(kept), len(expired), *keepSince, len(stale), len(res.Deleted), res.BytesFreed)
	return nil
}
