// Package e2e is the one harness of the end-to-end tests: the real deploy
// and deploy-agent binaries, built once per test binary, and the ways a
// test reaches vmtest hosts with them (a mesh configuration, targets).
// A new end-to-end test is a scenario, not a new way to start a binary.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
)

var (
	buildOnce sync.Once
	bins      Bins
	buildErr  error
)

// Bins are the paths of the built binaries, side by side as they are
// installed (deploy finds deploy-agent beside itself).
type Bins struct {
	Deploy string
	Agent  string
}

// Binaries builds cmd/deploy and cmd/deploy-agent (static, as shipped)
// once per test binary and returns their paths.
func Binaries(tb testing.TB) Bins {
	tb.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "deploy-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "./cmd/deploy", "./cmd/deploy-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		bins = Bins{Deploy: filepath.Join(dir, "deploy"), Agent: filepath.Join(dir, "deploy-agent")}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return bins
}

// Agent is the built deploy-agent (see [Binaries]).
func Agent(tb testing.TB) string {
	tb.Helper()
	return Binaries(tb).Agent
}

// moduleRoot is the directory of the module's go.mod, above the test's
// working directory (its package directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("e2e: no go.mod above the test's directory")
		}
		dir = parent
	}
}

// MeshConfig returns a mesh configuration that reaches nw's hosts with the
// network's client key, an empty known_hosts (hosts are pinned), no
// ~/.ssh/config, and keepalives every second (a cut shows within
// seconds).
func MeshConfig(tb testing.TB, nw *vmtest.Network) *mesh.Config {
	tb.Helper()
	dir := tb.TempDir()
	key := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(key, nw.ClientKeyPEM(), 0o600); err != nil {
		tb.Fatal(err)
	}
	kh := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(kh, nil, 0o600); err != nil {
		tb.Fatal(err)
	}
	return &mesh.Config{
		Dialer:            nw,
		IdentityFiles:     []string{key},
		KnownHostsFiles:   []string{kh},
		SSHConfigFile:     "none",
		KeepaliveInterval: time.Second,
		KeepaliveMax:      3,
		Getenv: func(k string) string {
			if k == "HOME" {
				return dir
			}
			return ""
		},
		Logf: tb.Logf,
	}
}

// Target is how a test reaches h: by address, with its key pinned.
func Target(h *vmtest.Host) mesh.Target {
	return mesh.Target{Name: h.Name(), Address: h.Addr().String(), HostKey: h.HostKeyLine()}
}

var (
	goEnvOnce sync.Once
	goEnv     []string
	goEnvErr  error
)

// GoCaches is GOCACHE and GOMODCACHE as the test process's go command has
// them, as environment entries: for a deploy whose HOME and XDG_CACHE_HOME
// are a test's own, so that the Go packages it builds use the machine's
// build and module caches (content-addressed, shared by every go build) and
// not new empty ones under that HOME, where every run would compile the
// standard library again.
func GoCaches(tb testing.TB) []string {
	tb.Helper()
	goEnvOnce.Do(func() {
		cmd := exec.Command("go", "env", "GOCACHE", "GOMODCACHE")
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		out, err := cmd.Output()
		if err != nil {
			goEnvErr = fmt.Errorf("go env: %v", err)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 2 || lines[0] == "" || lines[0] == "off" || lines[1] == "" {
			goEnvErr = fmt.Errorf("go env GOCACHE GOMODCACHE: %q", out)
			return
		}
		goEnv = []string{"GOCACHE=" + lines[0], "GOMODCACHE=" + lines[1]}
	})
	if goEnvErr != nil {
		tb.Fatal(goEnvErr)
	}
	return goEnv
}
