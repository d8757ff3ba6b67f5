package builder

import (
	"archive/zip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/declarative/deploy/modules"
	"golang.org/x/mod/sumdb/dirhash"
)

// fakeGo is the go command of the test's toolchain: `env` answers as the
// builder asks, `build -o DIR/` writes DIR/hello, a script that names the go
// command that built it.
const fakeGo = `#!/bin/sh
case "$1" in
env) echo go1.99.1; echo "$HOME/gocache"; echo "$HOME/gomodcache" ;;
build)
	while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
	printf '#!/bin/sh\necho built by %s\n' "$0" > "${out}hello" && chmod 755 "${out}hello" ;;
*) exit 2 ;;
esac
`

// toolchainZip writes a module zip of Go "go1.99.1" for this machine's
// platform, as a module proxy serves golang.org/toolchain, and returns it.
func toolchainZip(t *testing.T, goScript string) []byte {
	t.Helper()
	prefix := "golang.org/toolchain@v0.0.1-go1.99.1." + runtime.GOOS + "-" + runtime.GOARCH + "/"
	p := filepath.Join(t.TempDir(), "tc.zip")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for name, content := range map[string]string{
		"bin/go": goScript, "pkg/tool/" + runtime.GOOS + "_" + runtime.GOARCH + "/compile": "#!/bin/sh\n",
		"src/README": "not Go\n", "VERSION": "go1.99.1\n",
	} {
		w, err := zw.Create(prefix + name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(content))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A go.mod that names a toolchain: unpinned, check and build refuse; deploy
// lock fetches it from the module proxy (GOPROXY) and pins its go.sum hash
// for this platform; the build then uses it from the store, not the go on
// PATH, fetching it once; a zip that does not match the pin is refused and
// dropped from the cache. A go.mod without a toolchain line builds with the
// go on PATH and says so.
func TestPinnedGoToolchain(t *testing.T) {
	zipData := toolchainZip(t, fakeGo)
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := "/golang.org/toolchain/@v/v0.0.1-go1.99.1." + runtime.GOOS + "-" + runtime.GOARCH + ".zip"
		if r.URL.Path != want {
			http.NotFound(w, r)
			return
		}
		requests.Add(1)
		w.Write(zipData)
	}))
	defer srv.Close()
	t.Setenv("GOPROXY", srv.URL+",direct")

	dir := writeFleet(t, map[string]string{
		"fleet.hcl": `
host "h1" {
  address = "10.0.0.1"
  package "hello" {
    go { src = "./hello" }
  }
  file "/etc/hello" {
    content = package.hello
  }
}`,
		"hello/go.mod":  "module example.com/hello\n\ngo 1.22\n\ntoolchain go1.99.1\n",
		"hello/main.go": "package main\n\nfunc main() {}\n",
	})
	ctx := context.Background()
	cache := t.TempDir()
	b := newTestBuilder(t, cache)
	b.GoEnv = map[string]string{"GOCACHE": t.TempDir(), "GOMODCACHE": t.TempDir()}

	f := load(t, dir)
	if diags := Check(ctx, f, ""); !diags.HasErrors() || diags[0].Summary != "Unpinned Go toolchain" || !strings.Contains(diags[0].Detail, "go1.99.1") {
		t.Fatalf("Check without a pin = %v, want Unpinned Go toolchain", diags)
	}
	if _, diags := b.Build(ctx, f, "h1"); !diags.HasErrors() || diags[0].Summary != "Unpinned Go toolchain" {
		t.Fatalf("Build without a pin = %v, want Unpinned Go toolchain", diags)
	}
	if requests.Load() != 0 {
		t.Errorf("check and a refused build fetched the toolchain %d times", requests.Load())
	}

	lock, diags := b.UpdateLock(ctx, f, false)
	if diags.HasErrors() {
		t.Fatalf("UpdateLock = %v", diags)
	}
	zipPath := filepath.Join(t.TempDir(), "want.zip")
	os.WriteFile(zipPath, zipData, 0o644)
	wantSum, err := dirhash.HashZip(zipPath, dirhash.Hash1)
	if err != nil {
		t.Fatal(err)
	}
	key := "go1.99.1 " + runtime.GOOS + "/" + runtime.GOARCH
	if in := lock.Inputs[key]; in.Type != modules.LockGo || in.Sum != wantSum || len(lock.Inputs) != 1 {
		t.Fatalf("lock = %+v, want only %q pinned to %s", lock.Inputs, key, wantSum)
	}
	if err := lock.Write(dir); err != nil {
		t.Fatal(err)
	}
	if reread, err := modules.ReadLock(dir); err != nil || reread.Inputs[key] != lock.Inputs[key] {
		t.Fatalf("ReadLock = %+v, %v", reread, err)
	}

	f = load(t, dir)
	res := build(t, b, f, "h1")
	var hello string
	for _, fl := range res.Manifest.Files {
		if fl.Path == "/etc/hello" {
			hello = b.Store.RealPath(fl.Source)
		}
	}
	pkg := strings.TrimSpace(readContent(t, hello)) // the file's content is the package's path
	built, err := os.ReadFile(filepath.Join(b.Store.RealPath(pkg), "bin", "hello"))
	if err != nil {
		t.Fatalf("the package's bin/hello (%s): %v", pkg, err)
	}
	goCmd := strings.TrimSpace(strings.TrimPrefix(string(built), "#!/bin/sh\necho built by "))
	if storeDir := filepath.Dir(b.Store.RealPath(pkg)); filepath.Dir(filepath.Dir(filepath.Dir(goCmd))) != storeDir || !strings.HasSuffix(filepath.Dir(filepath.Dir(goCmd)), "-go1.99.1-"+runtime.GOOS+"-"+runtime.GOARCH) {
		t.Errorf("built by %q, want the toolchain's go in the store", goCmd)
	}
	tool := filepath.Join(filepath.Dir(filepath.Dir(goCmd)), "pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH, "compile")
	if st, err := os.Stat(tool); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("the toolchain's compile tool: %v, %v: want it executable", st, err)
	}

	// Another builder with the same cache (a later deploy) finds the
	// toolchain in the store: no second fetch.
	b2 := newTestBuilder(t, cache)
	b2.GoEnv = b.GoEnv
	os.WriteFile(filepath.Join(dir, "hello", "main.go"), []byte("package main\n\nfunc main() { println() }\n"), 0o644)
	build(t, b2, load(t, dir), "h1")
	if n := requests.Load(); n != 1 {
		t.Errorf("the toolchain was fetched %d times, want once (by deploy lock)", n)
	}

	// A pin the proxy's zip does not match: refused, and the zip is not
	// kept.
	bad := *lock
	bad.Inputs = map[string]modules.LockedInput{key: {Type: modules.LockGo, Sum: "h1:" + strings.Repeat("A", 43) + "="}}
	if err := bad.Write(dir); err != nil {
		t.Fatal(err)
	}
	b3 := newTestBuilder(t, t.TempDir())
	b3.GoEnv = b.GoEnv
	_, diags = b3.Build(ctx, load(t, dir), "h1")
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "has hash "+wantSum+", but deploy.lock pins h1:AAAA") {
		t.Fatalf("Build with a wrong pin = %v, want the hash mismatch named", diags)
	}
	if left, _ := filepath.Glob(filepath.Join(b3.CacheDir, "toolchains", "*.zip")); len(left) != 0 {
		t.Errorf("the refused zip is still cached: %v", left)
	}

	// No toolchain line: the go on PATH builds, with the warning.
	os.WriteFile(filepath.Join(dir, "hello", "go.mod"), []byte("module example.com/hello\n\ngo 1.22\n"), 0o644)
	os.Remove(filepath.Join(dir, modules.LockFileName))
	b4 := newTestBuilder(t, t.TempDir())
	_, diags = b4.Build(ctx, load(t, dir), "h1")
	if diags.HasErrors() || len(diags) == 0 || diags[0].Summary != "Go toolchain not pinned" || !strings.Contains(diags[0].Detail, "go get toolchain@") {
		t.Fatalf("Build without a toolchain line = %v, want it built with the warning", diags)
	}
}

// deploy build --check: a rebuild from scratch identical to the recorded
// output passes; one whose bytes differ (this fake go writes random bytes)
// is an error naming the file and both hashes, and the store keeps the
// first build.
func TestCheckBuilds(t *testing.T) {
	for _, tc := range []struct {
		name, script, want string
	}{
		{"reproducible", fakeGo, ""},
		{"not reproducible", strings.Replace(fakeGo, `echo built by %s\n' "$0"`, `echo %s\n' "$(od -An -N8 -tx8 /dev/urandom)"`, 1), "bin/hello has other content (sha256 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			zipData := toolchainZip(t, tc.script)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(zipData) }))
			defer srv.Close()
			t.Setenv("GOPROXY", srv.URL)
			dir := writeFleet(t, map[string]string{
				"fleet.hcl":     "host \"h1\" {\n  address = \"10.0.0.1\"\n  package \"hello\" {\n    go { src = \"./hello\" }\n  }\n  file \"/etc/hello\" {\n    content = package.hello\n  }\n}\n",
				"hello/go.mod":  "module example.com/hello\n\ngo 1.22\n\ntoolchain go1.99.1\n",
				"hello/main.go": "package main\n\nfunc main() {}\n",
			})
			ctx := context.Background()
			cache := t.TempDir()
			b := newTestBuilder(t, cache)
			lock, diags := b.UpdateLock(ctx, load(t, dir), false)
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			lock.Write(dir)
			first := build(t, b, load(t, dir), "h1")

			c := newTestBuilder(t, cache)
			c.CheckBuilds = true
			res, diags := c.Build(ctx, load(t, dir), "h1")
			if tc.want == "" {
				if diags.HasErrors() || res.SystemPath != first.SystemPath {
					t.Fatalf("check of a reproducible build = %v, %v", res, diags)
				}
				if n := c.Counts().Compiled; n != 1 {
					t.Errorf("the check compiled %d packages, want the one rebuilt", n)
				}
				return
			}
			if !diags.HasErrors() || diags[0].Summary != "Build not reproducible" || !strings.Contains(diags[0].Detail, tc.want) {
				t.Fatalf("check of a build that differs = %v, want %q", diags, tc.want)
			}
			again := build(t, newTestBuilder(t, cache), load(t, dir), "h1")
			if again.SystemPath != first.SystemPath {
				t.Errorf("after the failed check the build gives %s, want the first %s", again.SystemPath, first.SystemPath)
			}
		})
	}
}

// readContent returns a file's content.
func readContent(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
