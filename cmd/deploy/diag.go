package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/fleet"
	"github.com/hashicorp/hcl/v2"
)

// configError is returned after diagnostics were printed.
func configError(diags hcl.Diagnostics) error {
	return &fleet.ConfigError{Diags: diags}
}

// printDiags writes diagnostics with file:line:column and source snippets,
// without colour. With --format github, or under GitHub Actions
// (GITHUB_ACTIONS=true) unless --format says otherwise, each is also a
// workflow command (::error file=...,line=...,col=...::), which GitHub
// shows as an annotation on the line.
func (e *env) printDiags(f *builder.Fleet, diags hcl.Diagnostics) {
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
