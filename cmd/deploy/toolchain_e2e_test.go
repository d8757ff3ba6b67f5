package main

import (
	"debug/buildinfo"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/e2e"
)

// approvedGo is the Go release newer than the machine's that the module
// proxy these machines reach approves (DEVELOPERS.md): the only toolchain a
// test fetches.
const approvedGo = "go1.27.3"

// TestPinnedToolchainE2E: a go package whose go.mod names the approved
// toolchain; deploy lock pins the hash the go command itself verified
// against the checksum database; two operators' builds of the same commit,
// one with the machine's Go on PATH and one with no Go at all (each its own
// HOME and store cache), give the same system path, because both built with
// the pinned toolchain (the binary says go1.27.3).
func TestPinnedToolchainE2E(t *testing.T) {
	bins := e2e.Binaries(t)
	goCaches := e2e.GoCaches(t)
	modCache := strings.TrimPrefix(goCaches[1], "GOMODCACHE=")

	// The go command fetches the toolchain module once per machine into
	// its module cache, checked against the checksum database; that cache
	// is a module proxy's layout, which deploy then reads (file://).
	mod := t.TempDir()
	os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module example.com/fetch\n\ngo 1.22\n"), 0o644)
	tcMod := "golang.org/toolchain@v0.0.1-" + approvedGo + "." + runtime.GOOS + "-" + runtime.GOARCH
	cmd := exec.Command("go", "mod", "download", "-json", tcMod)
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", tcMod, err, out)
	}
	var dl struct{ Sum, Zip string }
	if err := json.Unmarshal(out, &dl); err != nil || !strings.HasPrefix(dl.Sum, "h1:") {
		t.Fatalf("go mod download -json: %v %s", err, out)
	}
	proxy := "GOPROXY=file://" + filepath.Join(modCache, "cache", "download")

	fleet := t.TempDir()
	for name, content := range map[string]string{
		"fleet.hcl": `host "web1" {
  address = "10.0.0.1"
  package "hello" {
    go { src = "./hello" }
  }
  service "hello" {
    exec_start = "${package.hello}/bin/hello"
  }
}
`,
		"hello/go.mod":  "module example.com/hello\n\ngo 1.22\n\ntoolchain " + approvedGo + "\n",
		"hello/main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
	} {
		p := filepath.Join(fleet, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// run runs deploy as an operator of its own (HOME, cache), with PATH.
	run := func(home, path string, args ...string) string {
		t.Helper()
		c := exec.Command(bins.Deploy, args...)
		c.Dir = fleet
		c.Env = append([]string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache"), "PATH=" + path, proxy}, goCaches...)
		var stderr strings.Builder
		c.Stderr = &stderr
		out, err := c.Output()
		if err != nil {
			t.Fatalf("deploy %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		if strings.Contains(stderr.String(), "Go toolchain not pinned") {
			t.Errorf("deploy %s warns of an unpinned toolchain:\n%s", strings.Join(args, " "), stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	withGo := filepath.Dir(goBinary(t)) + ":/usr/bin:/bin"
	noGo := "/usr/bin:/bin"
	if _, err := exec.LookPath("/usr/bin/go"); err == nil {
		t.Fatal("/usr/bin/go exists: the second operator would have a Go")
	}

	run(filepath.Join(t.TempDir(), "a"), withGo, "lock", ".")
	lock, err := os.ReadFile(filepath.Join(fleet, "deploy.lock"))
	if err != nil {
		t.Fatal(err)
	}
	key := approvedGo + " " + runtime.GOOS + "/" + runtime.GOARCH
	if !strings.Contains(string(lock), `"`+key+`": {`) || !strings.Contains(string(lock), `"sum": "`+dl.Sum+`"`) {
		t.Fatalf("deploy.lock does not pin %q to the go command's %s:\n%s", key, dl.Sum, lock)
	}

	homeA, homeB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	sysA := run(homeA, withGo, "build", "--out-link", filepath.Join(homeA, "result"), ".#web1")
	sysB := run(homeB, noGo, "build", "--out-link", filepath.Join(homeB, "result"), ".#web1")
	if sysA == "" || sysA != sysB {
		t.Fatalf("system paths differ: with the machine's Go %q, without any %q", sysA, sysB)
	}
	for _, home := range []string{homeA, homeB} {
		bins, _ := filepath.Glob(filepath.Join(home, "cache", "deploy", "*", "store", "*-hello", "bin", "hello"))
		if len(bins) != 1 {
			t.Fatalf("no built hello under %s", home)
		}
		bi, err := buildinfo.ReadFile(bins[0])
		if err != nil || bi.GoVersion != approvedGo {
			t.Errorf("%s: built by %v (%v), want %s", bins[0], bi, err, approvedGo)
		}
	}
}

// goBinary is the go command the test process uses.
func goBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command") // the e2e binaries could not have been built either
	}
	return p
}
