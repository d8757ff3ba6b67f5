package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
)

// runDiff builds one host and compares its manifest with an earlier system
// closure's: files, units to stop/start/restart/reload, packages, secrets.
func runDiff(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var from string
	var asJSON bool
	fs := newFlags(e, "diff", "DIR#HOST --from SYSTEM")
	bf.register(fs)
	fs.StringVar(&from, "from", "", "the earlier system: a store path, a system directory or a manifest.json `file`")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if from == "" {
		fs.Usage()
		return usageErrorf("diff: --from is required")
	}
	res, s, err := buildOne(ctx, e, &bf, pos[0])
	if err != nil {
		return err
	}
	prev, err := readManifest(s, from)
	if err != nil {
		return err
	}
	d := manifest.Diff(prev, res.Manifest)
	if asJSON {
		return writeJSON(e.stdout, d)
	}
	return d.Write(e.stdout)
}

// readManifest reads the manifest of a system given as a store path (of the
// local store), a directory holding manifest.json, or the file itself.
func readManifest(s *closure.Store, from string) (*manifest.Manifest, error) {
	p := from
	if _, _, err := closure.SplitPath(s.StoreDir, from); err == nil {
		if _, err := s.Info(from); err != nil {
			return nil, withHint(fmt.Errorf("--from %q: %w", from, err), ExitConfig, "build or copy that system into the local store first")
		}
		p = s.RealPath(from)
	}
	if fi, err := os.Stat(p); err == nil && fi.IsDir() {
		p = filepath.Join(p, manifest.FileName)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("--from %q: %w", from, err)
	}
	return m, nil
}
