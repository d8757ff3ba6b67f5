package main

import (
	"context"
	"os"
	"os/exec"
	"testing"

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
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("XDG_CACHE_HOME", env.WorkDir+"/cache")
			env.Setenv("NIX_REMOTE", "")
			return nil
		},
	})
}
