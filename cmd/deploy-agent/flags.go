package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// Each verb's flags are parsed by a parseVERB function into a struct of
// its own, which its runVERB uses and flags_test.go checks against the
// command lines of agentapi.

// newFlagSet is verb's flag set; usage and parse errors go to stderr.
func newFlagSet(verb string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// stateDirVar defines --state-dir into p.
func stateDirVar(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "state-dir", agentapi.DefaultStateDir, "the agent's state `directory` (store, db, profiles)")
}

// layoutFlags defines --state-dir and --run-dir; the function it returns
// gives their layout once fs is parsed.
func layoutFlags(fs *flag.FlagSet) func() activation.Layout {
	var l activation.Layout
	stateDirVar(fs, &l.StateDir)
	fs.StringVar(&l.RunDir, "run-dir", agentapi.DefaultRunDir, "the agent's runtime `directory` (lock, state, confirmations)")
	return func() activation.Layout { return l }
}

type metaFlag map[string]string

func (m metaFlag) String() string { return "" }
func (m metaFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("--meta %q: want key=value", s)
	}
	m[k] = v
	return nil
}
