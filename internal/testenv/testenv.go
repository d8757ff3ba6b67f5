// Package testenv decides whether a test that needs something from the
// machine (a tool, root) runs, skips, or fails: it skips with a message naming
// what is missing, except under CI (CI=true), where a missing prerequisite is
// a failure, so that CI never passes by skipping.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
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

// CachedTool returns the path of a server that make deps puts into
// /var/cache/deploy-tools rather than installing it (MinIO, Prometheus):
// $env when it names an existing file, else the newest match of glob
// there, else it calls [Missing], naming what and env.
func CachedTool(t testing.TB, env, glob, what string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if m, _ := filepath.Glob(filepath.Join("/var/cache/deploy-tools", glob)); len(m) > 0 {
		return m[len(m)-1]
	}
	Missing(t, what+" (make deps puts it under /var/cache/deploy-tools; or set "+env+")")
	return ""
}

// NeedRoot calls [Missing] unless the test runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "the test needs root")
	}
}
