package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// CI output formats of `deploy`, `deploy check` and `deploy build`
// (--format): how configuration diagnostics and the --dry-run plan are
// written for a CI system.
const (
	formatText     = "text"     // diagnostics with snippets; the plan as plain lines
	formatGitHub   = "github"   // also ::error workflow commands; the plan as markdown in $GITHUB_STEP_SUMMARY
	formatMarkdown = "markdown" // the plan as markdown on stdout (GitLab notes, other CIs)
)

// formatFlag is --format; it records the choice in the env, where
// printDiags and the dry-run rendering read it.
type formatFlag struct{ e *env }

func (f formatFlag) String() string {
	if f.e == nil {
		return ""
	}
	return f.e.format
}

func (f formatFlag) Set(s string) error {
	switch s {
	case formatText, formatGitHub, formatMarkdown:
		f.e.format = s
		return nil
	}
	return fmt.Errorf("unknown format %q: want text, github or markdown", s)
}

func registerFormat(fs *flag.FlagSet, e *env) {
	fs.Var(formatFlag{e}, "format", "CI `format`: text, github (diagnostics as workflow annotations, the --dry-run plan as markdown in $GITHUB_STEP_SUMMARY) or markdown (the --dry-run plan as markdown on stdout); default github when GITHUB_ACTIONS=true, else text")
}

// ciFormat is the format in effect: --format, else github under GitHub
// Actions, else text.
func (e *env) ciFormat() string {
	if e.format != "" {
		return e.format
	}
	if e.getenv("GITHUB_ACTIONS") == "true" {
		return formatGitHub
	}
	return formatText
}

// writePlan renders a --dry-run's plan for CI: with github appended to
// $GITHUB_STEP_SUMMARY, with markdown on stdout. It reports whether it
// wrote the plan on stdout (which then replaces the result lines).
func writePlan(e *env, s *fleet.Session, rep *fleet.Report) (bool, error) {
	switch e.ciFormat() {
	case formatMarkdown:
		fmt.Fprint(e.stdout, view.PlanMarkdown(s.Selected, rep))
		return true, nil
	case formatGitHub:
		if err := appendStepSummary(e, "the plan", view.PlanMarkdown(s.Selected, rep)); err != nil {
			return false, err
		}
	}
	return false, nil
}

// appendStepSummary appends md (what, for messages) to
// $GITHUB_STEP_SUMMARY; without it, it warns and writes nothing.
func appendStepSummary(e *env, what, md string) error {
	path := e.getenv("GITHUB_STEP_SUMMARY")
	if path == "" {
		fmt.Fprintf(e.stderr, "deploy: warning: GITHUB_STEP_SUMMARY is not set: %s goes to no step summary\n", what)
		return nil
	}
	// The runner gives each step its own file; steps append to it.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("write %s to the step summary: %w", what, err)
	}
	if _, err := f.WriteString(md); err != nil {
		f.Close()
		return fmt.Errorf("write %s to the step summary %q: %w", what, path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s to the step summary %q: %w", what, path, err)
	}
	return nil
}

// writeDrift tells GitHub of the hosts a deploy found drifted: each one a
// warning annotation naming what drifted, and, for a deploy that is not a
// dry run (whose plan lists the repair), a section of the step summary.
func writeDrift(e *env, s *fleet.Session, rep *fleet.Report, dryRun bool) error {
	if e.ciFormat() != formatGitHub || rep == nil {
		return nil
	}
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		if hr == nil || hr.Drift == nil || len(hr.Drift.Items) == 0 {
			continue
		}
		what := "a deploy would repair it"
		if !dryRun {
			what = "the deploy re-applied its system: " + string(hr.Result)
		}
		fmt.Fprintf(e.stderr, "::warning title=%s::%s\n", ghEscape(h.Name+" drifted", true),
			ghEscape(fmt.Sprintf("%s drifted from its generation %d (%s): %s", h.Name, hr.Drift.Generation, what, fleet.DriftSummary(hr.Drift)), false))
	}
	if dryRun {
		return nil
	}
	if md := view.DriftMarkdown(s.Selected, rep); md != "" {
		return appendStepSummary(e, "the drift", md)
	}
	return nil
}
