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
	"github.com/declarative/deploy/fleet"
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
	return &fleet.ConfigError{Diags: diags}
}

// printDiags writes diagnostics with file:line:column and source snippets,
// without colour. With --format github, or under GitHub Actions
// (GITHUB_ACTIONS=true) unless --format says otherwise, each is also a
// workflow command (::error file=...,line=...,col=...::), which GitHub
// shows as an annotation on the line.
func printDiags(e *env, f *builder.Fleet, diags hcl.Diagnostics) {
	if len(diags) == 0 {
		return
	}
	if e.ciFormat() == formatGitHub {
		githubAnnotations(e, f, diags)
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

// githubAnnotations prints diags as GitHub workflow commands. They go to
// stderr, which the runner reads as well, so that stdout keeps only
// results and --json.
func githubAnnotations(e *env, f *builder.Fleet, diags hcl.Diagnostics) {
	for _, d := range diags {
		kind := "error"
		if d.Severity == hcl.DiagWarning {
			kind = "warning"
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		if d.Subject == nil {
			fmt.Fprintf(e.stderr, "::%s::%s\n", kind, ghEscape(msg, false))
			continue
		}
		fmt.Fprintf(e.stderr, "::%s file=%s,line=%d,col=%d,endLine=%d,endColumn=%d,title=%s::%s\n", kind,
			ghEscape(diagPath(f, d.Subject.Filename), true), d.Subject.Start.Line, d.Subject.Start.Column,
			d.Subject.End.Line, d.Subject.End.Column, ghEscape(d.Summary, true), ghEscape(msg, false))
	}
}

// ghEscape escapes a workflow command's message (or, with prop, a
// property value) as GitHub's runner expects.
func ghEscape(s string, prop bool) string {
	r := strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A")
	s = r.Replace(s)
	if prop {
		s = strings.NewReplacer(":", "%3A", ",", "%2C").Replace(s)
	}
	return s
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
// directory) and returns the selected hosts, with the session that every
// fleet command selects hosts with.
func loadSelected(e *env, targets []string) (*builder.Fleet, []*builder.Host, error) {
	s := &fleet.Session{Targets: targets, Diagnostics: func(f *builder.Fleet, d hcl.Diagnostics) { printDiags(e, f, d) }}
	if err := s.Open(); err != nil {
		return nil, nil, err
	}
	return s.Fleet, s.Selected, nil
}

func runBuild(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var outLink string
	var asJSON bool
	var parallel int
	fs := newFlags(e, "build", "DIR#NAME...")
	bf.register(fs)
	registerFormat(fs, e)
	fs.StringVar(&outLink, "out-link", "", "also make `PREFIX`-HOST a symlink to each host's system in the local store")
	fs.BoolVar(&asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	fs.IntVar(&parallel, "parallel-build", 2, "hosts built at once")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	v := newView(e, asJSON, false)
	s := &fleet.Session{Targets: pos, Command: "build", Builder: b, Parallel: fleet.Parallelism{Build: parallel}, Emit: v.Event,
		Diagnostics: func(f *builder.Fleet, d hcl.Diagnostics) { printDiags(e, f, d) }}
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Build(ctx) })
	if rep == nil {
		return err
	}
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		if hr.Result != fleet.ResultOK {
			continue
		}
		if outLink != "" {
			link := outLink + "-" + h.Name
			if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
				return err
			}
			if err := os.Symlink(b.Store.RealPath(hr.System), link); err != nil {
				return err
			}
		}
		if !asJSON {
			fmt.Fprintln(e.stdout, hr.System)
		}
	}
	return err
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
