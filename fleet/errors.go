package fleet

import (
	"errors"
	"fmt"
	"strings"

	"github.com/declarative/deploy/agentclient"
	"github.com/hashicorp/hcl/v2"
)

// ConfigError is a configuration or build error: no host was touched (CLI
// exit code 1). The diagnostics went to [Session.Diagnostics].
type ConfigError struct {
	Diags hcl.Diagnostics
	// Err is a build error that is not a diagnostic (a failed agent
	// build, say), when there are no diagnostics.
	Err error
}

func (e *ConfigError) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	n := 0
	for _, d := range e.Diags {
		if d.Severity == hcl.DiagError {
			n++
		}
	}
	if n == 1 {
		return "configuration: 1 error"
	}
	return fmt.Sprintf("configuration: %d errors", n)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// UsageError is a bad selection or combination of options (CLI exit code 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// RunError is a run in which some host did not end well: its Report names
// every host's result. The CLI maps [Report.Worst] to the exit code.
type RunError struct {
	Report *Report
}

func (e *RunError) Error() string {
	var parts []string
	for _, r := range ResultPrecedence {
		if hs := e.Report.With(r); len(hs) > 0 {
			parts = append(parts, fmt.Sprintf("%s: %s", r, strings.Join(hs, ", ")))
		}
	}
	if hs := e.Report.With(ResultSkipped); len(hs) > 0 {
		parts = append(parts, "skipped: "+strings.Join(hs, ", "))
	}
	return strings.Join(parts, "; ")
}

// configError reports a configuration problem found by a command (not by
// loading the fleet) as a diagnostic at subject (nil when there is nothing
// to point at, such as a block the fleet lacks): it goes to Diagnostics,
// and the error is a *[ConfigError].
func (s *Session) configError(subject *hcl.Range, summary, detail string, args ...any) error {
	d := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(detail, args...), Subject: subject}
	diags := hcl.Diagnostics{d}
	s.diag(s.Fleet, diags)
	return &ConfigError{Diags: diags}
}

// errNoCache is the detail of a pull-mode or cache command on a fleet
// without a cache block.
const errNoCache = "The fleet has no cache block: pull mode's channels and the closures live in the cache's bucket. Add a cache block (docs/cache.md, docs/pull.md)."

// HostFailure pins the result a failed host operation gives its host
// (host operations other than the real ones, in tests, say); any other
// error's result is what [agentclient.Classify] says (see [resultOf]).
type HostFailure struct {
	Result  Result // ResultRolledBack, ResultUnreachable, ResultLocked or ResultFailed
	Err     error
	LogTail []string // the last lines of the target's log, when known
}

func (f *HostFailure) Error() string { return f.Err.Error() }
func (f *HostFailure) Unwrap() error { return f.Err }

// resultOf is the one mapping of a host's error to its result: a
// *[HostFailure] says it, else the kind of error ([agentclient.Classify]);
// def is the result of an error of no known kind (a query that failed on
// the host: command-failed; a step of a rollout: failed). It also returns
// the last lines of the host's log the error carries.
func resultOf(err error, def Result) (Result, []string) {
	var hf *HostFailure
	if errors.As(err, &hf) {
		return hf.Result, hf.LogTail
	}
	tail := agentclient.LogTail(err)
	switch agentclient.Classify(err) {
	case agentclient.KindUnreachable, agentclient.KindHostKey:
		return ResultUnreachable, tail
	case agentclient.KindLocked:
		return ResultLocked, tail
	case agentclient.KindRolledBack:
		return ResultRolledBack, tail
	case agentclient.KindFailed:
		return ResultFailed, tail
	}
	return def, tail
}

// checkOf names the health check (or metric gate) whose failure made a
// host roll back, when err says one did.
func checkOf(err error) string {
	var rb *agentclient.RolledBackError
	if errors.As(err, &rb) {
		return rb.Check
	}
	return ""
}
