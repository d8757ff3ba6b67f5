package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/hashicorp/hcl/v2"
)

// buildFlags are the flags of commands that build: the store and the agent.
type buildFlags struct {
	store    storeFlags
	agent    string
	agentSrc string
}

func (bf *buildFlags) register(fs *flag.FlagSet) {
	bf.store.register(fs)
	fs.StringVar(&bf.agent, "agent", "", "deploy-agent `binary` to ship (default: deploy-agent beside deploy)")
	fs.StringVar(&bf.agentSrc, "agent-src", "", "build deploy-agent from this source `directory` (a checkout of deploy)")
}

// builder returns a Builder on the local store.
func (bf *buildFlags) builder(e *env) (*builder.Builder, error) {
	s, err := bf.store.open(e)
	if err != nil {
		return nil, err
	}
	b := &builder.Builder{
		Store:    s,
		CacheDir: filepath.Join(filepath.Dir(s.RealDir), "build"),
		Logf:     func(format string, args ...any) { fmt.Fprintf(e.stderr, "deploy: "+format+"\n", args...) },
	}
	switch {
	case bf.agent != "" && bf.agentSrc != "":
		return nil, usageErrorf("--agent and --agent-src exclude each other")
	case bf.agent != "":
		b.Agent.Binary = bf.agent
	case bf.agentSrc != "":
		b.Agent.SourceDir = bf.agentSrc
	default:
		if exe, err := os.Executable(); err == nil {
			beside := filepath.Join(filepath.Dir(exe), "deploy-agent")
			if _, err := os.Stat(beside); err == nil {
				b.Agent.Binary = beside
			}
		}
	}
	return b, nil
}

// configError is returned after diagnostics were printed.
func configError(diags hcl.Diagnostics) error {
	n := 0
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			n++
		}
	}
	noun := "errors"
	if n == 1 {
		noun = "error"
	}
	return &exitError{code: ExitConfig, err: fmt.Errorf("configuration: %d %s", n, noun)}
}

// printDiags writes diagnostics with file:line:column and source snippets,
// without colour.
func printDiags(e *env, f *builder.Fleet, diags hcl.Diagnostics) {
	if len(diags) == 0 {
		return
	}
	var files map[string]*hcl.File
	if f != nil {
		files = f.Files
	}
	w := hcl.NewDiagnosticTextWriter(e.stderr, files, 100, false)
	for _, d := range diags {
		// A grep- and editor-friendly first line, then hcl's rendering
		// with the source snippet.
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		if d.Subject != nil {
			fmt.Fprintf(e.stderr, "%s:%d:%d: %s: %s\n", diagPath(f, d.Subject.Filename), d.Subject.Start.Line, d.Subject.Start.Column, sev, d.Summary)
		} else {
			fmt.Fprintf(e.stderr, "deploy: %s: %s\n", sev, d.Summary)
		}
		w.WriteDiagnostic(d)
	}
}

// diagPath names a fleet file the way the operator can open it: relative
// to the working directory when the fleet is below it, else absolute.
func diagPath(f *builder.Fleet, name string) string {
	if f == nil || filepath.IsAbs(name) {
		return name
	}
	full := filepath.Join(f.Dir, name)
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, full); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return full
}

// loadSelected loads the fleet of the selectors (which must share a
// directory) and returns the selected hosts.
func loadSelected(e *env, args []string) (*builder.Fleet, []*builder.Host, error) {
	var dir string
	var names []string
	all := false
	for _, a := range args {
		sel, err := builder.ParseSelector(a)
		if err != nil {
			return nil, nil, &exitError{code: ExitUsage, err: err}
		}
		if dir != "" && filepath.Clean(sel.Dir) != filepath.Clean(dir) {
			return nil, nil, usageErrorf("selectors name different fleet directories (%q and %q)", dir, sel.Dir)
		}
		dir = sel.Dir
		if len(sel.Names) == 0 {
			all = true
		}
		names = append(names, sel.Names...)
	}
	if all {
		names = nil
	}
	f, diags := builder.Load(dir)
	if diags.HasErrors() {
		printDiags(e, f, diags)
		return nil, nil, configError(diags)
	}
	hosts, d := f.Select(names)
	diags = append(diags, d...)
	printDiags(e, f, diags)
	if diags.HasErrors() {
		return nil, nil, configError(diags)
	}
	return f, hosts, nil
}

func runBuild(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var outLink string
	fs := newFlags(e, "build", "DIR#NAME...")
	bf.register(fs)
	fs.StringVar(&outLink, "out-link", "", "also make `PREFIX`-HOST a symlink to each host's system in the local store")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	f, hosts, err := loadSelected(e, pos)
	if err != nil {
		return err
	}
	var failed hcl.Diagnostics
	for _, h := range hosts {
		res, diags := b.Build(ctx, f, h.Name)
		printDiags(e, f, diags)
		if diags.HasErrors() {
			failed = append(failed, diags...)
			continue
		}
		if outLink != "" {
			link := outLink + "-" + h.Name
			if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
				return err
			}
			if err := os.Symlink(b.Store.RealPath(res.SystemPath), link); err != nil {
				return err
			}
		}
		fmt.Fprintln(e.stdout, res.SystemPath)
	}
	if failed.HasErrors() {
		return configError(failed)
	}
	return nil
}

// buildOne builds the single host a selector names.
func buildOne(ctx context.Context, e *env, bf *buildFlags, selector string) (*builder.Result, *closure.Store, error) {
	b, err := bf.builder(e)
	if err != nil {
		return nil, nil, err
	}
	f, hosts, err := loadSelected(e, []string{selector})
	if err != nil {
		return nil, nil, err
	}
	if len(hosts) != 1 {
		return nil, nil, usageErrorf("%q selects %d hosts; name one host", selector, len(hosts))
	}
	res, diags := b.Build(ctx, f, hosts[0].Name)
	printDiags(e, f, diags)
	if diags.HasErrors() {
		return nil, nil, configError(diags)
	}
	return res, b.Store, nil
}
