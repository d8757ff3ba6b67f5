// Package testenv decides whether a test that needs something from the
// machine (a tool, root) runs, skips, or fails: it skips with a message naming
// what is missing, except under CI (CI=true), where a missing prerequisite is
// a failure, so that CI never passes by skipping.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// CI reports whether the tests run in CI.
func CI() bool { return os.Getenv("CI") == "true" }

// Missing skips t (or, under CI, fails it) because of what is missing.
func Missing(t testing.TB, what string) {
	t.Helper()
	if CI() {
		t.Fatalf("CI=true but %s", what)
	}
	t.Skipf("skipping: %s", what)
}

// NeedTool returns the path of the named program or calls [Missing].
func NeedTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name+" is not installed (apt-get install "+pkg+")")
	}
	return p
}

// NeedRoot calls [Missing] unless the test runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "the test needs root")
	}
}
