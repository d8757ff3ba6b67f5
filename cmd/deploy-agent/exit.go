package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// The agent's exit codes are agentapi's (agentapi/exit.go, listed in
// docs/activation.md); this file maps errors and results to them.

// exitError carries an exit code other than [agentapi.ExitFailed].
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode is the exit code of a run that returned err.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return agentapi.ExitOK
	case errors.As(err, &ee):
		return ee.code
	}
	return agentapi.ExitFailed
}

// usageErr makes err a usage error ([agentapi.ExitUsage]), except a
// request for help, which succeeds.
func usageErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &exitError{code: agentapi.ExitUsage, err: err}
}

// lockHeldErr makes err, a lock held by another, [agentapi.ExitLockHeld].
func lockHeldErr(err error) error {
	return &exitError{code: agentapi.ExitLockHeld, err: err}
}

// printResult prints r as the result line, in this agent's API version.
func printResult(w io.Writer, r *activation.Result) {
	r.V = agentapi.Version
	data, _ := json.Marshal(r)
	fmt.Fprintf(w, "%s\n", data)
}

// resultExit prints r and returns the error carrying its exit code.
func resultExit(stdout io.Writer, r *activation.Result) error {
	printResult(stdout, r)
	switch r.Outcome {
	case activation.OutcomeDone, activation.OutcomeAwaiting, activation.OutcomeDry:
		return nil
	case activation.OutcomeRolledBack:
		return &exitError{code: agentapi.ExitRolledBack, err: errors.New(r.Message)}
	case activation.OutcomeLockHeld:
		return lockHeldErr(errors.New(r.Message))
	}
	return errors.New(r.Message)
}

// activationErr maps an error of starting or confirming an activation: a
// missing confirmation token is a usage error.
func activationErr(err error) error {
	var te *activation.TokenError
	if errors.As(err, &te) {
		return usageErr(err)
	}
	return err
}
