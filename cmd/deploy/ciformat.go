package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

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
		fmt.Fprint(e.stdout, planMarkdown(s, rep))
		return true, nil
	case formatGitHub:
		path := e.getenv("GITHUB_STEP_SUMMARY")
		if path == "" {
			fmt.Fprintln(e.stderr, "deploy: warning: GITHUB_STEP_SUMMARY is not set: the plan goes to no step summary")
			return false, nil
		}
		// The runner gives each step its own file; steps append to it.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return false, fmt.Errorf("write the plan to the step summary: %w", err)
		}
		if _, err := f.WriteString(planMarkdown(s, rep)); err != nil {
			f.Close()
			return false, fmt.Errorf("write the plan to the step summary %q: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return false, fmt.Errorf("write the plan to the step summary %q: %w", path, err)
		}
	}
	return false, nil
}

// planMarkdown is the dry-run plan as GitHub-flavoured markdown: a table
// with a row per host, then per host the units and files that change.
func planMarkdown(s *fleet.Session, rep *fleet.Report) string {
	var b strings.Builder
	b.WriteString("## deploy --dry-run\n\n")
	b.WriteString("| host | result | paths to copy | bytes | start | restart | reload | stop | files |\n")
	b.WriteString("|---|---|--:|--:|---|---|---|---|--:|\n")
	type detail struct {
		host string
		plan *fleet.Plan
	}
	var details []detail
	for _, h := range s.Selected {
		var hr *fleet.HostReport
		if rep != nil {
			hr = rep.Hosts[h.Name]
		}
		if hr == nil {
			fmt.Fprintf(&b, "| %s | not reached | | | | | | | |\n", mdCell(h.Name))
			continue
		}
		result := string(hr.Result)
		if hr.Err != nil {
			result += ": " + hr.Err.Error()
		}
		var missing, bytes, files string
		var plan *fleet.Plan
		if hr.Push != nil {
			missing, bytes = fmt.Sprint(hr.Push.Missing), bytesString(hr.Push.Bytes)
			plan = hr.Push.Plan
		}
		var start, restart, reload, stop string
		if plan != nil {
			start, restart, reload, stop = units(plan.Start), units(plan.Restart), units(plan.Reload), units(plan.Stop)
			files = fmt.Sprint(len(plan.Files))
			if len(plan.Files) > 0 || len(plan.Start)+len(plan.Restart)+len(plan.Reload)+len(plan.Stop) > 0 {
				details = append(details, detail{h.Name, plan})
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", mdCell(h.Name), mdCell(result),
			missing, bytes, start, restart, reload, stop, files)
	}
	for _, d := range details {
		fmt.Fprintf(&b, "\n<details><summary>%s: %d files change</summary>\n\n", mdCell(d.host), len(d.plan.Files))
		for _, f := range d.plan.Files {
			fmt.Fprintf(&b, "- `%s`\n", strings.ReplaceAll(f, "`", "'"))
		}
		b.WriteString("\n</details>\n")
	}
	return b.String()
}

func units(u []string) string {
	var out []string
	for _, x := range u {
		out = append(out, "`"+strings.ReplaceAll(x, "`", "'")+"`")
	}
	return mdCell(strings.Join(out, " "))
}

// mdCell makes s safe inside a markdown table cell.
func mdCell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ", "\r", " ").Replace(s)
}
