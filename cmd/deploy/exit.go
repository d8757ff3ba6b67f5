package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/fleet"
)

// Exit codes, the one place they are defined. They are part of the CLI's
// stable interface (docs/cli.md); CI pipelines branch on them.
const (
	ExitOK            = 0 // every host at the new generation / the command succeeded
	ExitConfig        = 1 // configuration, build or local error; no host touched
	ExitUsage         = 2 // bad command line
	ExitRolledBack    = 3 // some host rolled back, or failed to activate or roll back
	ExitUnreachable   = 4 // some host unreachable or a copy failed
	ExitLocked        = 5 // a lock is held
	ExitCommandFailed = 6 // a command failed on some host (exec's command, the agent's gc or a query)
	ExitRefused       = 7 // pull mode: some host refused its release (signature, serial, host, or a closure failing verification)
	ExitDrifted       = 8 // verify: some host's live state differs from its current generation
	ExitWindow        = 9 // the deployment's maintenance window is closed: nothing touched
)

// resultExit maps how a run's worst host ended (fleet.Report.Worst, by
// fleet.ResultPrecedence) to the exit code.
var resultExit = map[fleet.Result]int{
	fleet.ResultRolledBack:    ExitRolledBack,
	fleet.ResultFailed:        ExitRolledBack,
	fleet.ResultUnreachable:   ExitUnreachable,
	fleet.ResultLocked:        ExitLocked,
	fleet.ResultCommandFailed: ExitCommandFailed,
	fleet.ResultRefused:       ExitRefused,
	fleet.ResultDrifted:       ExitDrifted,
}

// exitError carries an exit code and an optional hint for the operator.
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, args...)}
}

// withHint attaches an actionable hint to err.
func withHint(err error, code int, hint string) error {
	return &exitError{code: code, err: err, hint: hint}
}

// exitCode maps an error to the exit code and a hint: the one place where
// the outcome of any command becomes the process's exit code. Errors of
// reaching a host are classified by agentclient.Classify, as the hosts of
// a run are.
func exitCode(err error) (int, string) {
	var ee *exitError
	var ce *fleet.ConfigError
	var ue *fleet.UsageError
	var re *fleet.RunError
	var we *fleet.WindowError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK, ""
	case errors.As(err, &ee):
		return ee.code, ee.hint
	case errors.As(err, &ue):
		return ExitUsage, ""
	case errors.As(err, &ce):
		return ExitConfig, ""
	case errors.As(err, &we):
		return ExitWindow, "--wait-window waits for it to open; --ignore-window goes on now"
	case errors.As(err, &re):
		return resultExit[re.Report.Worst()], runHint(re.Report)
	}
	switch agentclient.Classify(err) {
	case agentclient.KindUnreachable, agentclient.KindHostKey:
		return ExitUnreachable, agentclient.Hint(err)
	}
	return ExitConfig, ""
}

// runHint is the hint for a run's worst outcome: what to do about the
// first unreachable host's key, or about a held run lock.
func runHint(rep *fleet.Report) string {
	for _, name := range rep.With(fleet.ResultUnreachable) {
		if hint := agentclient.Hint(rep.Hosts[name].Err); hint != "" {
			return hint
		}
	}
	if rep.Worst() == fleet.ResultLocked {
		return "another run holds the run lock: wait for it, or pass --wait-lock DURATION to wait"
	}
	return ""
}

// report prints err (if any) with its hint and returns the exit code.
func report(stderr io.Writer, err error) int {
	code, hint := exitCode(err)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return code
	}
	fmt.Fprintf(stderr, "deploy: %v\n", err)
	if hint != "" {
		fmt.Fprintf(stderr, "deploy: hint: %s\n", hint)
	}
	return code
}
