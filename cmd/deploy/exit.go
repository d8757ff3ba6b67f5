package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Exit codes, the one place they are defined. They are part of the CLI's
// stable interface (docs/cli.md); CI pipelines branch on them.
const (
	ExitOK          = 0 // every host at the new generation / the command succeeded
	ExitConfig      = 1 // configuration or build error; no host touched
	ExitUsage       = 2 // bad command line
	ExitRolledBack  = 3 // some host rolled back
	ExitUnreachable = 4 // some host unreachable or a copy failed
	ExitLocked      = 5 // a lock is held
)

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

// report prints err (if any) with its hint and returns the exit code.
func report(stderr io.Writer, err error) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	code := ExitConfig
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	fmt.Fprintf(stderr, "deploy: %v\n", err)
	if ee != nil && ee.hint != "" {
		fmt.Fprintf(stderr, "deploy: hint: %s\n", ee.hint)
	}
	return code
}
