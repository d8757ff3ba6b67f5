package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/deploy"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/mesh"
)

// runDiff builds one host and compares its manifest with what the host
// runs now (read over SSH), or with an earlier system closure's (--from):
// files, units to stop/start/restart/reload, packages, secrets.
func runDiff(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var sshf fleetSSHFlags
	var from, remoteState string
	var asJSON bool
	fs := newFlags(e, "diff", "DIR#HOST [--from SYSTEM]")
	bf.register(fs)
	sshf.register(fs)
	fs.StringVar(&remoteState, "remote-state-dir", deploy.DefaultStateDir, "the agent's state `directory` on the host")
	fs.StringVar(&from, "from", "", "the earlier system: a store path, a system directory or a manifest.json `file`")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	res, s, err := buildOne(ctx, e, &bf, pos[0])
	if err != nil {
		return err
	}
	var prev *manifest.Manifest
	if from != "" {
		prev, err = readManifest(s, from)
	} else {
		prev, err = currentManifest(ctx, e, sshf.config(e), pos[0], remoteState)
	}
	if err != nil {
		return err
	}
	d := manifest.Diff(prev, res.Manifest)
	if asJSON {
		return writeJSON(e.stdout, d)
	}
	return d.Write(e.stdout)
}

// currentManifest reads the manifest of the system the host runs now; nil
// when it runs none yet (everything is new).
func currentManifest(ctx context.Context, e *env, cfg *mesh.Config, selector, stateDir string) (*manifest.Manifest, error) {
	_, hosts, err := loadSelected(e, []string{selector})
	if err != nil {
		return nil, err
	}
	if len(hosts) != 1 {
		return nil, usageErrorf("diff: %q selects %d hosts, want one", selector, len(hosts))
	}
	c, err := cfg.Connect(ctx, meshTarget(hosts[0]))
	if err != nil {
		return nil, hostError(err)
	}
	defer c.Close()
	st, err := deploy.Status(ctx, c, stateDir)
	if err != nil || st.CurrentSystem == "" {
		var ee *mesh.ExitError
		if errors.As(err, &ee) || (err == nil && st.CurrentSystem == "") {
			return nil, nil // no agent or no generation yet
		}
		return nil, hostError(err)
	}
	data, err := c.Output(ctx, []string{"cat", path.Join(st.CurrentSystem, manifest.FileName)})
	if err != nil {
		return nil, hostError(err)
	}
	return manifest.Parse(data)
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
