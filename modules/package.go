package modules

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/oci"
	"github.com/declarative/deploy/unpack"
	"github.com/hashicorp/hcl/v2"
)

// PackageBuilder realizes package resources into the store: reproducible go
// builds, local paths, and pinned downloads. It caches what it built in
// CacheDir, so a rebuild of unchanged inputs costs a hash of the source and
// two small file reads.
//
// With DryRun it only checks the package (sources exist, urls are pinned)
// and returns a placeholder store path derived from the package's name, so
// a whole fleet can be validated without building.
//
// A PackageBuilder is safe for concurrent use once its fields are set.
type PackageBuilder struct {
	// Store receives the packages.
	Store *closure.Store
	// FleetDir is the directory that relative sources are in.
	FleetDir string
	// CacheDir holds downloads and the index of finished builds.
	CacheDir string
	// Lock pins url packages; nil is an empty lock.
	Lock *Lock
	// Go is the go command (default: "go" from PATH) for go packages whose
	// go.mod names no toolchain; one that names a toolchain is built with
	// it, as Lock pins it, fetched into the store ([GoModToolchain]). The
	// Go version is part of every go package's cache key.
	Go string
	// GoEnv adds to the fixed environment of go builds; only GOCACHE and
	// GOMODCACHE (where caches are, not what is built) are honoured.
	GoEnv map[string]string
	// HTTPClient fetches url packages (default http.DefaultClient).
	HTTPClient *http.Client
	// DryRun checks packages without building or fetching.
	DryRun bool
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
	// Pull fetches oci packages (default: one caching in CacheDir/oci,
	// with HTTPClient's transport and this builder's Logf).
	Pull *oci.Puller

	// Substitute, if set, is asked for a go package's output by its build
	// inputs before it is compiled (not for cgo packages).
	Substitute Substituter
	// CheckBuilds rebuilds every go package whose output is known (built
	// here before, or substituted) with an empty Go build cache and
	// compares the result with that output, file by file: a difference is
	// an error naming the first differing file (Nix's --check).
	CheckBuilds bool

	goTools      map[string]*goTool // by pinned version; "": the go command on PATH
	realisations map[string]string  // build key -> output, of the go packages obtained
	counts       BuildCounts
	mu           sync.Mutex
	inFlight     map[string]*sync.Mutex
	images       map[string]*Image // by store path
}

func (b *PackageBuilder) logf(format string, args ...any) {
	if b.Logf != nil {
		b.Logf(format, args...)
	}
}

// Package realizes package r for architecture arch (a GOARCH) and returns its
// store path.
func (b *PackageBuilder) Package(ctx context.Context, r *Resource, arch string) (string, hcl.Diagnostics) {
	switch {
	case r.Has("go"):
		return b.goPackage(ctx, r, arch)
	case r.Has("path"):
		return b.pathPackage(ctx, r)
	case r.Has("url"):
		return b.urlPackage(ctx, r)
	case r.Has("oci"):
		return b.ociPackage(ctx, r, arch)
	case r.Has("nix"):
		return b.nixPackage(ctx, r)
	}
	return "", hcl.Diagnostics{errAt(r.nameRange(), "Invalid package source", "Package %q has no source.", r.Name)}
}

// Placeholder returns the store path a dry run gives a package: derived from
// its name and salt, never built.
func (b *PackageBuilder) Placeholder(name, salt string) string {
	p, err := closure.MakeSourcePath(b.Store.StoreDir, sha256.Sum256([]byte("unbuilt\x00"+salt)), StoreName(name, "package"), nil)
	if err != nil {
		panic("modules: placeholder path: " + err.Error())
	}
	return p
}

func (b *PackageBuilder) pathPackage(ctx context.Context, r *Resource) (string, hcl.Diagnostics) {
	src, err := FleetPath(b.FleetDir, r.String("path", ""))
	if err != nil {
		return "", hcl.Diagnostics{errAt(r.Range("path"), "Invalid package path", "Package %q: %s.", r.Name, err)}
	}
	if b.DryRun {
		return b.Placeholder(r.Name, "path:"+r.String("path", "")), nil
	}
	pi, err := b.Store.AddTree(ctx, src, StoreName(r.Name, "package"), nil)
	if err != nil {
		return "", hcl.Diagnostics{errAt(r.Range("path"), "Cannot store package", "Package %q: %s.", r.Name, err)}
	}
	return pi.Path, nil
}

// lockFor returns the per-key mutex, so that concurrent builds of the same
// input happen once.
func (b *PackageBuilder) lockFor(key string) *sync.Mutex {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inFlight == nil {
		b.inFlight = map[string]*sync.Mutex{}
	}
	m, ok := b.inFlight[key]
	if !ok {
		m = &sync.Mutex{}
		b.inFlight[key] = m
	}
	return m
}

// cached returns the store path recorded under key if it is still valid.
func (b *PackageBuilder) cached(kind, key string) (string, bool) {
	data, err := os.ReadFile(filepath.Join(b.CacheDir, kind, key))
	if err != nil {
		return "", false
	}
	p := strings.TrimSpace(string(data))
	ok, err := b.Store.Valid(p)
	return p, err == nil && ok
}

func (b *PackageBuilder) remember(kind, key, p string) error {
	dir := filepath.Join(b.CacheDir, kind)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(p + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, key))
}

func (b *PackageBuilder) tempDir() (string, error) {
	dir := filepath.Join(b.CacheDir, "tmp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(dir, "build-")
}

// goTool is a go command with what goSetup found out about it.
type goTool struct {
	once    sync.Once
	bin     string // absolute path
	version string // GOVERSION, and for a pinned toolchain its hash too
	cache   string // GOCACHE
	modDir  string // GOMODCACHE
	err     error
}

// goSetup returns the go command that builds with Go release version as
// the lock pins it (sum), or with the go command on PATH (b.Go) when version
// is "", with its version and caches: found out once per version.
func (b *PackageBuilder) goSetup(ctx context.Context, version, sum string) (*goTool, error) {
	b.mu.Lock()
	if b.goTools == nil {
		b.goTools = map[string]*goTool{}
	}
	t, ok := b.goTools[version]
	if !ok {
		t = &goTool{}
		b.goTools[version] = t
	}
	b.mu.Unlock()
	t.once.Do(func() {
		gobin := b.Go
		if gobin == "" {
			gobin = "go"
		}
		if version != "" {
			tc, err := b.goToolchain(ctx, version, sum)
			if err != nil {
				t.err = fmt.Errorf("the Go toolchain %s that %s pins: %w", version, LockFileName, err)
				return
			}
			gobin = tc
		}
		p, err := exec.LookPath(gobin)
		if err != nil {
			t.err = fmt.Errorf("finding the go command: %w", err)
			return
		}
		t.bin = p
		cmd := exec.CommandContext(ctx, p, "env", "GOVERSION", "GOCACHE", "GOMODCACHE")
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=")
		out, err := cmd.Output()
		if err != nil {
			t.err = fmt.Errorf("running %q env: %w", p, err)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 3 {
			t.err = fmt.Errorf("running %q env: unexpected output %q", p, out)
			return
		}
		t.version, t.cache, t.modDir = lines[0], lines[1], lines[2]
		if version != "" {
			if t.version != version {
				t.err = fmt.Errorf("the pinned Go toolchain says it is %s, not %s", t.version, version)
				return
			}
			t.version += " " + sum // the version and the hash of what built
		}
		if v := b.GoEnv["GOCACHE"]; v != "" {
			t.cache = v
		}
		if v := b.GoEnv["GOMODCACHE"]; v != "" {
			t.modDir = v
		}
	})
	return t, t.err
}

// goPackage builds a go package with the toolchain its go.mod names, as
// deploy.lock pins it for this machine; a go.mod that names none builds with
// the go command on PATH, with a warning that says how to pin one.
func (b *PackageBuilder) goPackage(ctx context.Context, r *Resource, arch string) (string, hcl.Diagnostics) {
	g, _ := r.Block("go")
	src, err := FleetPath(b.FleetDir, g.String("src", ""))
	var version string
	if err == nil {
		version, err = GoModToolchain(src)
	}
	if err != nil {
		return b.goBuild(ctx, r, arch, "", "") // goBuild says what is wrong with src
	}
	if version == "" {
		warn := &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Go toolchain not pinned",
			Detail: fmt.Sprintf("Package %q builds with whatever Go is on PATH: another machine may build another system from this commit. To pin one: go get toolchain@go1.X.Y in %s, then deploy lock.",
				r.Name, g.String("src", "")),
			Subject: g.Range("src")}
		p, diags := b.goBuild(ctx, r, arch, "", "")
		return p, append(hcl.Diagnostics{warn}, diags...)
	}
	sum, ok := b.Lock.PinnedGo(version)
	if !ok {
		return "", hcl.Diagnostics{errAt(g.Range("src"), "Unpinned Go toolchain",
			"Package %q names the toolchain %s in its go.mod, which %s does not pin for %s/%s, this machine's platform: run deploy lock (it fetches the toolchain and records its hash).", r.Name, version, LockFileName, runtime.GOOS, runtime.GOARCH)}
	}
	return b.goBuild(ctx, r, arch, version, sum)
}

// goBuild builds a go package with the go command of goSetup(version, sum).
func (b *PackageBuilder) goBuild(ctx context.Context, r *Resource, arch, version, sum string) (string, hcl.Diagnostics) {
	g, _ := r.Block("go")
	srcRel := g.String("src", "")
	src, err := FleetPath(b.FleetDir, srcRel)
	if err == nil {
		if _, serr := os.Stat(filepath.Join(src, "go.mod")); serr != nil {
			err = fmt.Errorf("%q has no go.mod; src must be a Go module's directory", srcRel)
		}
	}
	if err != nil {
		return "", hcl.Diagnostics{errAt(g.Range("src"), "Invalid go package source", "Package %q: %s.", r.Name, err)}
	}
	pkgs := g.Strings("packages")
	if len(pkgs) == 0 {
		pkgs = []string{"."}
	}
	cgo := g.Bool("cgo", false)
	if b.DryRun {
		return b.Placeholder(r.Name, "go:"+srcRel), nil
	}
	fail := func(err error) (string, hcl.Diagnostics) {
		return "", hcl.Diagnostics{errAt(g.Range("src"), "Go build failed", "Package %q: %s.", r.Name, err)}
	}
	// The toolchain's identity: a pinned one's version and hash, known
	// without fetching it; else what the go command on PATH says it is.
	goID := version + " " + sum
	if version == "" {
		gt, err := b.goSetup(ctx, "", "")
		if err != nil {
			return fail(err)
		}
		goID = gt.version
	}
	h := sha256.New()
	if err := nar.Dump(h, src); err != nil {
		return fail(err)
	}
	key := sha256.New()
	fmt.Fprintf(key, "go-package-v1\x00%s\x00linux\x00%s\x00%t\x00%q\x00%q\x00%q\x00%s\x00%x",
		goID, arch, cgo, pkgs, g.Strings("ldflags"), g.Strings("tags"), StoreName(r.Name, "package"), h.Sum(nil))
	k := hex.EncodeToString(key.Sum(nil))
	mu := b.lockFor("go:" + k)
	mu.Lock()
	defer mu.Unlock()
	// ref is what a check compares the rebuild with: the output this
	// machine recorded, else the cache's (substituted).
	ref := ""
	if p, ok := b.cached("go", k); ok {
		b.built(RealisationKeyGo+k, p)
		if !b.CheckBuilds {
			return p, nil
		}
		ref = p
	}
	// A cgo build also depends on the machine's C toolchain, which the key
	// does not name: never substituted.
	var warn hcl.Diagnostics
	if ref == "" && b.Substitute != nil && !cgo {
		p, err := b.Substitute.Substitute(ctx, RealisationKeyGo+k)
		switch {
		case err != nil:
			warn = hcl.Diagnostics{{Severity: hcl.DiagWarning, Summary: "Substitute refused",
				Detail:  fmt.Sprintf("Package %q: %s; building it here instead.", r.Name, err),
				Subject: g.Range("src")}}
			b.logf("package %q: not substituted (%v): building it", r.Name, err)
		case p != "":
			b.logf("package %q substituted from the cache: %s", r.Name, p)
			if err := b.remember("go", k, p); err != nil {
				return fail(err)
			}
			b.built(RealisationKeyGo+k, p)
			b.countSubstituted()
			if !b.CheckBuilds {
				return p, nil
			}
			ref = p
		}
	}
	gt, err := b.goSetup(ctx, version, sum)
	if err != nil {
		return fail(err)
	}
	b.logf("building package %q (go build %s, %s/%s)", r.Name, srcRel, "linux", arch)
	tmp, err := b.tempDir()
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	work := filepath.Join(tmp, "src")
	if err := copyTree(src, work); err != nil {
		return fail(err)
	}
	out := filepath.Join(tmp, "out")
	if err := os.MkdirAll(filepath.Join(out, "bin"), 0o755); err != nil {
		return fail(err)
	}
	ldflags := append([]string{"-buildid="}, g.Strings("ldflags")...)
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=" + strings.Join(ldflags, " "), "-o", filepath.Join(out, "bin") + "/"}
	if tags := g.Strings("tags"); len(tags) > 0 {
		args = append(args, "-tags="+strings.Join(tags, ","))
	}
	args = append(args, pkgs...)
	cmd := exec.CommandContext(ctx, gt.bin, args...)
	cmd.Dir = work
	cgoEnv := "0"
	if cgo {
		cgoEnv = "1"
	}
	home := filepath.Join(tmp, "home")
	goCache := gt.cache
	if b.CheckBuilds && ref != "" {
		goCache = filepath.Join(tmp, "gocache") // a rebuild from scratch, not from the cache's objects
	}
	cmd.Env = []string{
		"PATH=" + filepath.Dir(gt.bin) + ":/usr/bin:/bin",
		"HOME=" + home,
		"GOCACHE=" + goCache,
		"GOMODCACHE=" + gt.modDir,
		"GOPROXY=off",
		"GOSUMDB=off",
		"GOFLAGS=-mod=mod",
		"GOTOOLCHAIN=local",
		"GOENV=off",
		"GOWORK=off",
		"GO111MODULE=on",
		"GOOS=linux",
		"GOARCH=" + arch,
		"CGO_ENABLED=" + cgoEnv,
		"TZ=UTC",
		"LC_ALL=C",
		"LANG=C",
		"SOURCE_DATE_EPOCH=0",
	}
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 4000 {
			msg = msg[:4000] + "..."
		}
		if strings.Contains(msg, "GOPROXY=off") || strings.Contains(msg, "module lookup disabled") {
			msg += "\n(the build may use only the module cache: run `go mod download` in " + srcRel + ")"
		}
		return fail(fmt.Errorf("%v\n%s", err, msg))
	}
	entries, err := os.ReadDir(filepath.Join(out, "bin"))
	if err != nil {
		return fail(err)
	}
	if len(entries) == 0 {
		return fail(fmt.Errorf("no main package among %q", pkgs))
	}
	if b.CheckBuilds && ref != "" {
		diff, err := FirstDifference(b.Store.RealPath(ref), out)
		if err != nil {
			return fail(err)
		}
		if diff != "" {
			return "", hcl.Diagnostics{errAt(g.Range("src"), "Build not reproducible",
				"Package %q: rebuilt from scratch (an empty Go build cache), it differs from %s: %s.", r.Name, ref, diff)}
		}
		b.logf("package %q: rebuilt from scratch, identical to %s", r.Name, ref)
		b.countCompiled()
		return ref, warn
	}
	pi, err := b.Store.AddTree(ctx, out, StoreName(r.Name, "package"), nil)
	if err != nil {
		return fail(err)
	}
	if err := b.remember("go", k, pi.Path); err != nil {
		return fail(err)
	}
	b.built(RealisationKeyGo+k, pi.Path)
	b.countCompiled()
	return pi.Path, warn
}

// copyTree copies directories, regular files (keeping the executable bit)
// and symlinks from src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			mode := os.FileMode(0o644)
			if info.Mode()&0o100 != 0 {
				mode = 0o755
			}
			return os.WriteFile(target, data, mode)
		}
		return fmt.Errorf("%q: unsupported file type %s", p, info.Mode().Type())
	})
}

// URLPin returns the SHA-256 (hex) that pins url package r. deploy.lock must
// pin the url; a sha256 attribute, if present, must agree with the lock.
func URLPin(r *Resource, lock *Lock) (string, hcl.Diagnostics) {
	url := r.String("url", "")
	var want string
	if r.Has("sha256") {
		h, err := ParseSHA256(r.String("sha256", ""))
		if err != nil {
			return "", hcl.Diagnostics{errAt(r.Range("sha256"), "Invalid sha256", "%s.", err)}
		}
		want = h
	}
	var locked string
	if lock != nil {
		if in, ok := lock.Inputs[url]; ok {
			locked = in.SHA256
		}
	}
	switch {
	case want == "" && locked == "":
		return "", hcl.Diagnostics{errAt(r.Range("url"), "Unpinned url",
			"Package %q downloads %q, which neither a sha256 attribute nor deploy.lock pins. Run `deploy lock` to pin it.", r.Name, url)}
	case want != "" && locked != "" && want != locked:
		return "", hcl.Diagnostics{errAt(r.Range("sha256"), "Input does not match deploy.lock",
			"Package %q pins %q to sha256 %s, but deploy.lock has %s. If the new hash is intended, run `deploy lock`.", r.Name, url, want, locked)}
	case want == "" && lock != nil:
		return locked, nil
	}
	if locked == "" {
		return "", hcl.Diagnostics{errAt(r.Range("url"), "Input not in deploy.lock",
			"Package %q downloads %q, which deploy.lock does not pin. Run `deploy lock` to add it.", r.Name, url)}
	}
	return want, nil
}

func (b *PackageBuilder) urlPackage(ctx context.Context, r *Resource) (string, hcl.Diagnostics) {
	sum, diags := URLPin(r, b.Lock)
	if diags.HasErrors() {
		return "", diags
	}
	if b.DryRun {
		return b.Placeholder(r.Name, "url:"+sum), nil
	}
	url := r.String("url", "")
	exe := r.Bool("executable", false)
	fail := func(err error) (string, hcl.Diagnostics) {
		return "", hcl.Diagnostics{errAt(r.Range("url"), "Cannot fetch package", "Package %q: %s.", r.Name, err)}
	}
	if r.Bool("unpack", false) {
		return b.archivePackage(ctx, r, sum)
	}
	k := fmt.Sprintf("%s-%t-%s", sum, exe, StoreName(r.Name, "package"))
	mu := b.lockFor("url:" + k)
	mu.Lock()
	defer mu.Unlock()
	if p, ok := b.cached("url", k); ok {
		return p, nil
	}
	file, err := b.FetchWithin(ctx, url, sum, PackageLimits(r))
	if err != nil {
		return fail(err)
	}
	tmp, err := b.tempDir()
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	data, err := os.ReadFile(file)
	if err != nil {
		return fail(err)
	}
	mode := os.FileMode(0o644)
	if exe {
		mode = 0o755
	}
	obj := filepath.Join(tmp, "obj")
	if err := os.WriteFile(obj, data, mode); err != nil {
		return fail(err)
	}
	if err := os.Chmod(obj, mode); err != nil {
		return fail(err)
	}
	pi, err := b.Store.AddTree(ctx, obj, StoreName(r.Name, "package"), nil)
	if err != nil {
		return fail(err)
	}
	if err := b.remember("url", k, pi.Path); err != nil {
		return fail(err)
	}
	return pi.Path, nil
}

// archivePackage realizes a url package with unpack = true: the pinned
// archive's contents, strip_components leading components dropped.
func (b *PackageBuilder) archivePackage(ctx context.Context, r *Resource, sum string) (string, hcl.Diagnostics) {
	url := r.String("url", "")
	strip, _ := r.Int("strip_components")
	name := StoreName(r.Name, "package")
	k := fmt.Sprintf("%s-unpack%d-%s", sum, strip, name)
	mu := b.lockFor("url:" + k)
	mu.Lock()
	defer mu.Unlock()
	if p, ok := b.cached("url", k); ok {
		return p, nil
	}
	lim := PackageLimits(r)
	file, err := b.FetchWithin(ctx, url, sum, lim)
	if err != nil {
		return "", hcl.Diagnostics{errAt(r.Range("url"), "Cannot fetch package", "Package %q: %s.", r.Name, err)}
	}
	fail := func(err error) (string, hcl.Diagnostics) {
		return "", hcl.Diagnostics{errAt(r.Range("url"), "Cannot unpack package", "Package %q: %s.", r.Name, err)}
	}
	tmp, err := b.tempDir()
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	tree, err := unpack.NewTree(tmp)
	if err != nil {
		return fail(err)
	}
	defer tree.Close()
	tree.MaxBytes, tree.MaxEntries, tree.Settings = lim.MaxBytes, lim.MaxEntries, lim.Settings
	if _, err := tree.ApplyFile(file, unpack.Options{StripComponents: strip, Name: url}); err != nil {
		return fail(err)
	}
	if tree.Empty() {
		return fail(fmt.Errorf("the archive holds nothing (with strip_components = %d)", strip))
	}
	pi, err := tree.AddToStore(ctx, b.Store, name, nil)
	if err != nil {
		return fail(err)
	}
	if err := b.remember("url", k, pi.Path); err != nil {
		return fail(err)
	}
	return pi.Path, nil
}

// ErrHashMismatch is returned (wrapped) when a download's hash is not the
// pinned one.
var ErrHashMismatch = errors.New("hash mismatch")

// Fetch downloads url into the download cache unless a file with SHA-256
// sum (hex; empty to accept any) is already there, and returns the cached
// file's path. A download whose hash differs from sum fails with
// [ErrHashMismatch] and leaves nothing in the cache; so does one past the
// default size limit (8 GiB), cut off there.
func (b *PackageBuilder) Fetch(ctx context.Context, url, sum string) (string, error) {
	return b.FetchWithin(ctx, url, sum, oci.Limits{})
}

// FetchWithin is [PackageBuilder.Fetch] with a package's limits: a
// download is cut off as soon as it passes lim.MaxBytes.
func (b *PackageBuilder) FetchWithin(ctx context.Context, url, sum string, lim oci.Limits) (string, error) {
	dir := filepath.Join(b.CacheDir, "fetch")
	if sum != "" {
		if _, err := os.Stat(filepath.Join(dir, sum)); err == nil {
			return filepath.Join(dir, sum), nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b.logf("fetching %s", url)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("fetching %q: %w", url, err)
	}
	client := b.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetching %q: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetching %q: %s", url, resp.Status)
	}
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	max := lim.MaxBytes
	if max <= 0 {
		max = limits.DefaultUnpacked
	}
	setting := "max_size"
	if lim.Settings != "" {
		setting += " " + lim.Settings
	}
	if _, err := io.Copy(io.MultiWriter(tmp, h), &limits.Reader{R: resp.Body, Limit: max, Object: url, Setting: setting}); err != nil {
		tmp.Close()
		return "", fmt.Errorf("fetching %q: %w", url, err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if sum != "" && got != sum {
		return "", fmt.Errorf("fetching %q: %w: got sha256 %s, want %s", url, ErrHashMismatch, got, sum)
	}
	final := filepath.Join(dir, got)
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", err
	}
	return final, nil
}

// Hash returns the SHA-256 (hex) of the file at url, fetching it into the
// cache within lim (a package's): what `deploy lock` records.
func (b *PackageBuilder) Hash(ctx context.Context, url string, lim oci.Limits) (string, error) {
	p, err := b.FetchWithin(ctx, url, "", lim)
	if err != nil {
		return "", err
	}
	return filepath.Base(p), nil
}

// Image is what a service that runs in an image (root = package.NAME)
// needs to know of it.
type Image struct {
	// Path is the image's store path.
	Path string
	// Digest is the image manifest's digest ("" when unknown).
	Digest string
	// Known is false when the image was not fetched (deploy check): then
	// only Path is set.
	Known bool
	// Entrypoint, Cmd, Env, WorkingDir, User and StopSignal are the image
	// configuration's.
	Entrypoint, Cmd, Env []string
	WorkingDir, User     string
	StopSignal           string
	// RootDir is where the root filesystem is flattened on this machine
	// (for the builder's checks).
	RootDir string
	// Root is where the agent realizes the root on the host: a unit's
	// RootDirectory=.
	Root string
}

// ImageRoot is where the agent realizes the root of the image whose
// manifest digest is digest, on a host whose store directory is storeDir
// (the state directory is its parent).
func ImageRoot(storeDir, digest string) string {
	return path.Join(path.Dir(storeDir), "images", strings.TrimPrefix(digest, "sha256:"), "rootfs")
}

// Image returns what b knows of the oci package whose store path is p.
func (b *PackageBuilder) Image(p string) (*Image, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	img, ok := b.images[p]
	return img, ok
}

func (b *PackageBuilder) addImage(img *Image) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.images == nil {
		b.images = map[string]*Image{}
	}
	b.images[img.Path] = img
}

// Puller returns b's Puller, making the default one first if it has none.
func (b *PackageBuilder) Puller() *oci.Puller {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Pull == nil {
		b.Pull = &oci.Puller{CacheDir: filepath.Join(b.CacheDir, "oci"), Logf: b.Logf}
		if b.HTTPClient != nil {
			b.Pull.Transport = b.HTTPClient.Transport
		}
	}
	return b.Pull
}

// ImagePin returns the manifest digest that pins oci package r for hosts of
// architecture arch: the digest in its image reference, or deploy.lock's.
func ImagePin(r *Resource, lock *Lock, arch string) (string, hcl.Diagnostics) {
	o, _ := r.Block("oci")
	ref := o.String("image", "")
	if d, ok := oci.PinnedDigest(ref); ok {
		return d, nil
	}
	if lock != nil {
		if in, ok := lock.Inputs[ImageLockKey(ref, arch)]; ok && in.Type == LockOCI {
			return in.Digest, nil
		}
	}
	return "", hcl.Diagnostics{errAt(r.BlockRange("oci", "image"), "Unpinned image",
		"Package %q uses image %q, which deploy.lock does not pin for linux/%s (and the reference has no @sha256: digest). Run `deploy lock` to pin it.", r.Name, ref, arch)}
}

func (b *PackageBuilder) ociPackage(ctx context.Context, r *Resource, arch string) (string, hcl.Diagnostics) {
	digest, diags := ImagePin(r, b.Lock, arch)
	if diags.HasErrors() {
		return "", diags
	}
	o, _ := r.Block("oci")
	ref, insecure := o.String("image", ""), o.Bool("insecure", false)
	if b.DryRun {
		p := b.Placeholder(r.Name, "oci:"+digest+":"+arch)
		b.addImage(&Image{Path: p, Digest: digest, Root: ImageRoot(b.Store.StoreDir, digest)})
		return p, nil
	}
	img, err := b.Puller().RealizeWithin(ctx, b.Store, ref, digest, insecure, oci.Platform(arch), PackageLimits(r))
	if err != nil {
		return "", hcl.Diagnostics{errAt(r.BlockRange("oci", "image"), "Cannot fetch image", "Package %q: %s.", r.Name, err)}
	}
	c := img.Config
	b.addImage(&Image{Path: img.Path, Digest: img.Digest, Known: true, Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env,
		WorkingDir: c.WorkingDir, User: c.User, StopSignal: c.StopSignal, RootDir: img.RootDir, Root: ImageRoot(b.Store.StoreDir, img.Digest)})
	return img.Path, nil
}

// nixPackage fetches a Nix store path and its closure from a Nix binary
// cache into the store, accepting only what the package's key signed. It
// needs the store directory /nix/store (Nix's paths name it). A path that is
// valid already is not fetched again: its closure is valid too.
func (b *PackageBuilder) nixPackage(ctx context.Context, r *Resource) (string, hcl.Diagnostics) {
	x, _ := r.Block("nix")
	p := x.String("path", "")
	if b.Store.StoreDir != "/nix/store" {
		return "", hcl.Diagnostics{errAt(r.BlockRange("nix", "path"), "Nix package needs /nix/store",
			"Package %q is a path of Nix's store, which names /nix/store; this build's store directory is %q. Build and deploy with --store-dir /nix/store --remote-state-dir /nix (deploy check --store-dir /nix/store), or package the software another way.", r.Name, b.Store.StoreDir)}
	}
	if b.DryRun {
		return p, nil
	}
	if ok, err := b.Store.Valid(p); err == nil && ok {
		return p, nil
	}
	key, err := cache.ParsePublicKey(x.String("public_key", ""))
	if err != nil {
		return "", hcl.Diagnostics{errAt(r.BlockRange("nix", "public_key"), "Invalid Nix cache key", "Package %q: %s.", r.Name, err)}
	}
	backend, err := cache.Open(x.String("cache", ""), b.HTTPClient)
	if err != nil {
		return "", hcl.Diagnostics{errAt(r.BlockRange("nix", "cache"), "Invalid Nix cache", "Package %q: %s.", r.Name, err)}
	}
	b.logf("fetching %s and its closure from %s", p, backend)
	lim := PackageLimits(r)
	f := &cache.Fetcher{Cache: backend, Keys: []*cache.PublicKey{key}, MaxNarSize: lim.MaxBytes,
		Settings: map[string]string{"max_nar_size": "max_size " + lim.Settings}}
	if _, err := f.FetchClosure(ctx, b.Store, p); err != nil {
		return "", hcl.Diagnostics{errAt(r.BlockRange("nix", "path"), "Cannot fetch Nix package", "Package %q: %s.", r.Name, err)}
	}
	return p, nil
}

// TrustedKeys returns the public keys of the Nix packages among res: the
// keys whose signatures vouch for their paths' names on the hosts too.
func TrustedKeys(res []*Resource) []string {
	var keys []string
	for _, r := range res {
		if r.Kind.Name != KindPackage {
			continue
		}
		if x, ok := r.Block("nix"); ok {
			if k := strings.TrimSpace(x.String("public_key", "")); k != "" && !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}
