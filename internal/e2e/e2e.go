// Package e2e is the one harness of the end-to-end tests: a new
// end-to-end test is a scenario, not a new way to start a binary.
//
// # Binaries
//
// [Binaries] builds the real deploy and deploy-agent (static, as shipped)
// once per test binary; [Agent] builds only the agent, for tests that need
// no CLI. [GoCaches] gives a deploy run with a HOME of its own the
// machine's Go caches.
//
// # Reaching test hosts
//
// [MeshConfig] and [Target] reach vmtest hosts in-process, as the library
// does. [Fleet] writes a fleet directory for test hosts (their blocks with
// pinned host keys, extra HCL, the client key file, git commits) for the
// deploy CLI, which package cli runs.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
)

var (
	dirOnce    sync.Once
	binDir     string
	dirErr     error
	agentOnce  sync.Once
	agentErr   error
	deployOnce sync.Once
	deployErr  error
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
	agent := Agent(tb)
	deployOnce.Do(func() { deployErr = build("./cmd/deploy") })
	if deployErr != nil {
		tb.Fatal(deployErr)
	}
	return Bins{Deploy: filepath.Join(binDir, "deploy"), Agent: agent}
}

// Agent builds cmd/deploy-agent (static, as shipped) once per test binary
// and returns its path: the tests that need only the agent do not wait for
// the CLI's build.
func Agent(tb testing.TB) string {
	tb.Helper()
	agentOnce.Do(func() { agentErr = build("./cmd/deploy-agent") })
	if agentErr != nil {
		tb.Fatal(agentErr)
	}
	return filepath.Join(binDir, "deploy-agent")
}

// binPrefix starts the name of each test binary's directory of built
// binaries in the temporary directory; the process ID follows.
const binPrefix = "deploy-e2e-bin-"

// build builds the command pkg into the binary directory.
func build(pkg string) error {
	dirOnce.Do(func() {
		sweepBinDirs()
		binDir, dirErr = os.MkdirTemp("", fmt.Sprintf("%s%d-", binPrefix, os.Getpid()))
	})
	if dirErr != nil {
		return dirErr
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", binDir+"/", pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// sweepBinDirs removes the binary directories of test binaries that have
// ended (a test binary has no hook at its end to remove its own).
func sweepBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binPrefix+"*"))
	for _, d := range dirs {
		pid, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), binPrefix), "-")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil || n == os.Getpid() {
			continue
		}
		if err := syscall.Kill(n, 0); err == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
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
