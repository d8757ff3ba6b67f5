package modules

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/declarative/deploy/internal/atomicfile"
	"golang.org/x/mod/modfile"
	"golang.org/x/mod/sumdb/dirhash"
)

// A go {} package whose go.mod names a toolchain (`toolchain go1.27.3`, as
// `go get toolchain@go1.27.3` writes it) is built with exactly that Go
// release, pinned in deploy.lock for the machine that builds (see
// [GoToolchainLockKey]) and obtained as the go command obtains a toolchain
// for GOTOOLCHAIN: the module golang.org/toolchain@v0.0.1-goVERSION.GOOS-GOARCH
// from the Go module proxy, whose zip holds a whole GOROOT. Its hash is the
// go.sum one ("h1:", [dirhash.Hash1] of the zip), checked before anything of
// it is used; it is unpacked into the store, where every later build finds
// it. Whatever Go the operator has installed then does not matter.

// LockGo is the lock input type of a pinned Go toolchain.
const LockGo = "go"

// goToolchainModule is the module path of Go toolchains on a module proxy.
const goToolchainModule = "golang.org/toolchain"

// maxToolchainZip bounds a toolchain download (go1.27's is 76 MB).
const maxToolchainZip = 1 << 30

// goVersionRE is a Go release version as GOVERSION prints it.
var goVersionRE = regexp.MustCompile(`^go1\.[0-9]+(\.[0-9]+)?((rc|beta)[0-9]+)?$`)

// CheckGoVersion reports whether v is a Go release version ("go1.27.3").
func CheckGoVersion(v string) error {
	if !goVersionRE.MatchString(v) {
		return fmt.Errorf("%q is not a Go release version like go1.27.3", v)
	}
	return nil
}

// GoToolchainLockKey is the key of deploy.lock under which Go release
// version is pinned for machines of platform goos/goarch: "go1.27.3
// linux/amd64". The toolchain runs where the fleet is built, whatever the
// hosts' architecture (it cross-compiles), so each operator platform has a
// pin of its own: one `deploy lock` on each.
func GoToolchainLockKey(version, goos, goarch string) string {
	return version + " " + goos + "/" + goarch
}

// goToolchainVersion is the toolchain module's version for a Go release on
// a platform: "v0.0.1-go1.27.3.linux-amd64".
func goToolchainVersion(goVersion, goos, goarch string) string {
	return "v0.0.1-" + goVersion + "." + goos + "-" + goarch
}

// GoModToolchain returns the toolchain the go.mod in dir names
// ("go1.27.3"), or "" when it names none.
func GoModToolchain(dir string) (string, error) {
	p := filepath.Join(dir, "go.mod")
	data, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	mf, err := modfile.Parse(p, data, nil)
	if err != nil {
		return "", err
	}
	if mf.Toolchain == nil || mf.Toolchain.Name == "default" {
		return "", nil
	}
	if err := CheckGoVersion(mf.Toolchain.Name); err != nil {
		return "", fmt.Errorf("%s: toolchain %w", p, err)
	}
	return mf.Toolchain.Name, nil
}

// PinnedGo returns the hash the lock pins for Go release version on this
// machine's platform, if it pins one.
func (l *Lock) PinnedGo(version string) (string, bool) {
	if l == nil {
		return "", false
	}
	in, ok := l.Inputs[GoToolchainLockKey(version, runtime.GOOS, runtime.GOARCH)]
	return in.Sum, ok && in.Type == LockGo
}

// goProxy returns the first module proxy of GOPROXY (the environment's, else
// the go command's, when there is one), as the go command would use it.
func goProxy(ctx context.Context) (string, error) {
	v := os.Getenv("GOPROXY")
	if v == "" {
		if p, err := exec.LookPath("go"); err == nil {
			cmd := exec.CommandContext(ctx, p, "env", "GOPROXY")
			cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=")
			if out, err := cmd.Output(); err == nil {
				v = strings.TrimSpace(string(out))
			}
		}
	}
	for _, p := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '|' }) {
		if p != "direct" && p != "off" {
			return strings.TrimSuffix(p, "/"), nil
		}
	}
	return "", errors.New("no Go module proxy to fetch the toolchain from: set GOPROXY (go env GOPROXY says which the go command uses)")
}

// FetchGoToolchain downloads the zip of Go release goVersion for this
// machine's platform from the module proxy into the builder's cache and
// returns its path and its go.sum hash ("h1:..."). The zip is kept under its
// module version; a kept one is hashed again, not trusted.
func (b *PackageBuilder) FetchGoToolchain(ctx context.Context, goVersion string) (zipPath, sum string, err error) {
	if err := CheckGoVersion(goVersion); err != nil {
		return "", "", err
	}
	mv := goToolchainVersion(goVersion, runtime.GOOS, runtime.GOARCH)
	dir := filepath.Join(b.CacheDir, "toolchains")
	zipPath = filepath.Join(dir, mv+".zip")
	if _, err := os.Stat(zipPath); err != nil {
		if err := b.downloadToolchain(ctx, mv, zipPath); err != nil {
			return "", "", err
		}
	}
	sum, err = dirhash.HashZip(zipPath, dirhash.Hash1)
	if err != nil {
		return "", "", fmt.Errorf("hashing %s: %w", filepath.Base(zipPath), err)
	}
	return zipPath, sum, nil
}

// downloadToolchain fetches module version mv of golang.org/toolchain into
// dst (atomically: a temporary file renamed when complete).
func (b *PackageBuilder) downloadToolchain(ctx context.Context, mv, dst string) error {
	proxy, err := goProxy(ctx)
	if err != nil {
		return err
	}
	u := proxy + "/" + goToolchainModule + "/@v/" + mv + ".zip"
	b.logf("fetching the Go toolchain %s from %s", mv, proxy)
	var body io.ReadCloser
	if rest, ok := strings.CutPrefix(u, "file://"); ok {
		p, err := url.PathUnescape(rest)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("fetching the Go toolchain: %w", err)
		}
		body = f
	} else {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		c := b.HTTPClient
		if c == nil {
			c = http.DefaultClient
		}
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("fetching the Go toolchain: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return fmt.Errorf("fetching the Go toolchain %s: %s (is %s a Go release the proxy serves?)", u, resp.Status, strings.TrimSuffix(strings.SplitN(mv, ".", 2)[1], "."+runtime.GOOS+"-"+runtime.GOARCH))
		}
		body = resp.Body
	}
	defer body.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	err = atomicfile.WriteFunc(dst, 0o644, func(w io.Writer) error {
		n, err := io.Copy(w, io.LimitReader(body, maxToolchainZip+1))
		if err == nil && n > maxToolchainZip {
			err = fmt.Errorf("larger than %d bytes", maxToolchainZip)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("fetching the Go toolchain %s: %w", mv, err)
	}
	return nil
}

// goToolchain returns the go command of Go release version, whose zip has
// hash sum, fetching, checking and storing it first when the store lacks it.
func (b *PackageBuilder) goToolchain(ctx context.Context, version, sum string) (string, error) {
	key := strings.NewReplacer("/", "_", "+", "-", "=", "").Replace(strings.TrimPrefix(sum, "h1:"))
	if p, ok := b.cached("toolchain", key); ok {
		return filepath.Join(b.Store.RealPath(p), "bin", "go"), nil
	}
	zipPath, got, err := b.FetchGoToolchain(ctx, version)
	if err != nil {
		return "", err
	}
	if got != sum {
		os.Remove(zipPath)
		return "", fmt.Errorf("the Go toolchain %s for %s/%s has hash %s, but %s pins %s: not used (removed from the cache; deploy lock --update pins what the proxy serves now, if you trust it)",
			version, runtime.GOOS, runtime.GOARCH, got, LockFileName, sum)
	}
	tmp, err := b.tempDir()
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "go")
	if err := unzipToolchain(zipPath, goToolchainModule+"@"+goToolchainVersion(version, runtime.GOOS, runtime.GOARCH)+"/", root); err != nil {
		return "", fmt.Errorf("unpacking the Go toolchain %s: %w", version, err)
	}
	b.logf("adding the Go toolchain %s to the store", version)
	pi, err := b.Store.AddTree(ctx, root, StoreName(version+"-"+runtime.GOOS+"-"+runtime.GOARCH, "go"), nil)
	if err != nil {
		return "", err
	}
	if err := b.remember("toolchain", key, pi.Path); err != nil {
		return "", err
	}
	return filepath.Join(b.Store.RealPath(pi.Path), "bin", "go"), nil
}

// unzipToolchain unpacks a toolchain module zip whose files all start with
// prefix into dir. Module zips keep no permission bits: as the go command
// does, the files of bin/ and pkg/tool/ are made executable.
func unzipToolchain(zipPath, prefix, dir string) error {
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		return err
	}
	defer zr.Close()
	for _, f := range zr.File {
		rel, ok := strings.CutPrefix(f.Name, prefix)
		if !ok || rel == "" || strings.HasSuffix(f.Name, "/") {
			if !ok {
				return fmt.Errorf("%q is outside %s", f.Name, prefix)
			}
			continue
		}
		clean := filepath.Clean(rel)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("%q leaves the toolchain", f.Name)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(clean, "bin/") || strings.HasPrefix(clean, "pkg/tool/") {
			mode = 0o755
		}
		if err := writeZipFile(f, filepath.Join(dir, clean), mode); err != nil {
			return err
		}
	}
	return nil
}

func writeZipFile(f *zip.File, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	r, err := f.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}
