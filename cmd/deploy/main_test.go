package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/cyclonedxtest"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/testenv"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"deploy": func() { os.Exit(Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the CLI behaviour scripts in testdata/script against the
// real main. Scripts that compare with Nix need nix-store ([exec:nix-store]).
func TestScripts(t *testing.T) {
	if _, err := exec.LookPath("nix-store"); err != nil && testenv.CI() {
		t.Fatal("CI=true but nix-store is not installed (apt-get install nix-bin)")
	}
	// A script's own deploy cache, but the machine's Go caches: a Go
	// package built under a new XDG_CACHE_HOME would compile the standard
	// library again (quickstart: 71 s of 2 busy cores).
	goCaches := e2e.GoCaches(t)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			for _, kv := range goCaches {
				k, v, _ := strings.Cut(kv, "=")
				env.Setenv(k, v)
			}
			env.Setenv("XDG_CACHE_HOME", env.WorkDir+"/cache")
			env.Setenv("NIX_REMOTE", "")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){"exits": exits, "cyclonedx-valid": cyclonedxValid},
	})
}

// cyclonedxValid is the script command "cyclonedx-valid FILE": it fails
// unless FILE validates against the CycloneDX 1.6 JSON schema.
func cyclonedxValid(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: cyclonedx-valid FILE")
	}
	err := cyclonedxtest.Validate([]byte(ts.ReadFile(args[0])))
	switch {
	case err != nil && !neg:
		ts.Fatalf("%v", err)
	case err == nil && neg:
		ts.Fatalf("%s validates against the CycloneDX schema", args[0])
	}
}

// exits is the script command "exits CODE PROGRAM [ARGS...]": it runs the
// program like exec and fails unless it exits with exactly CODE (the
// documented exit codes, docs/cli.md; "! exec" checks only for non-zero).
func exits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits CODE PROGRAM [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: bad code %q", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exits: %v", err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with %d, want %d", args[1], got, want)
	}
}
