package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/manifest"
)

// runDiff builds one host and compares its manifest with what the host
// runs now (read over the host's transport), or with an earlier system
// closure's (--from): files, units to stop/start/restart/reload, packages,
// secrets.
func runDiff(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var bf buildFlags
	var from string
	fs := newFlags(e, "diff", "DIR#HOST [--from SYSTEM]")
	bf.register(fs)
	hf.register(fs)
	fs.StringVar(&from, "from", "", "the earlier system: a store path, a system directory or a manifest.json `file`")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	var prev *manifest.Manifest
	if from != "" {
		if prev, err = readManifest(b.Store, from); err != nil {
			return err
		}
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "diff", pos, v)
	s.Builder = b
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Diff(ctx, prev) })
	if err != nil || hf.asJSON {
		return err
	}
	return rep.Hosts[s.Selected[0].Name].Diff.Write(e.stdout)
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
