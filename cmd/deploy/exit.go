package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/declarative/deploy/deploy"
	"github.com/declarative/deploy/mesh"
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
)

// resultExit maps how a run's worst host ended (deploy.Report.Worst, by
// deploy.ResultPrecedence) to the exit code.
var resultExit = map[deploy.Result]int{
	deploy.ResultRolledBack:    ExitRolledBack,
	deploy.ResultFailed:        ExitRolledBack,
	deploy.ResultUnreachable:   ExitUnreachable,
	deploy.ResultLocked:        ExitLocked,
	deploy.ResultCommandFailed: ExitCommandFailed,
	deploy.ResultRefused:       ExitRefused,
	deploy.ResultDrifted:       ExitDrifted,
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
// the outcome of any command becomes the process's exit code.
func exitCode(err error) (int, string) {
	var ee *exitError
	var ce *deploy.ConfigError
	var ue *deploy.UsageError
	var re *deploy.RunError
	var unknown *mesh.UnknownHostError
	var changed *mesh.HostKeyError
	var unreachable *mesh.UnreachableError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK, ""
	case errors.As(err, &ee):
		return ee.code, ee.hint
	case errors.As(err, &ue):
		return ExitUsage, ""
	case errors.As(err, &ce):
		return ExitConfig, ""
	case errors.As(err, &re):
		return resultExit[re.Report.Worst()], runHint(re.Report)
	case errors.As(err, &unknown):
		return ExitUnreachable, unknown.Hint()
	case errors.As(err, &changed):
		return ExitUnreachable, hostKeyHint
	case errors.As(err, &unreachable):
		return ExitUnreachable, ""
	}
	return ExitConfig, ""
}

const hostKeyHint = "the host key changed: if the host was reinstalled, verify the new key out of band and update host_key / known_hosts; otherwise this may be an attack"

// runHint is the hint for a run's worst outcome.
func runHint(rep *deploy.Report) string {
	for _, name := range rep.With(deploy.ResultUnreachable) {
		var unknown *mesh.UnknownHostError
		var changed *mesh.HostKeyError
		switch err := rep.Hosts[name].Err; {
		case errors.As(err, &unknown):
			return unknown.Hint()
		case errors.As(err, &changed):
			return hostKeyHint
		}
	}
	if rep.Worst() == deploy.ResultLocked {
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
