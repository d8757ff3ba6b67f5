package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/modules"
)

// tarGz returns a gzipped tar of the entries: name → contents, a name
// ending in / is a directory, contents "-> X" a symbolic link to X, and
// "link:X" a hard link to X.
func tarGz(t *testing.T, entries [][2]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		name, body := e[0], e[1]
		h := &tar.Header{Name: name, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(body))}
		switch {
		case strings.HasSuffix(name, "/"):
			h.Typeflag, h.Size = tar.TypeDir, 0
		case strings.HasPrefix(body, "-> "):
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, body[3:], 0
		case strings.HasPrefix(body, "link:"):
			h.Typeflag, h.Linkname, h.Size = tar.TypeLink, body[5:], 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestURLUnpack(t *testing.T) {
	release := tarGz(t, [][2]string{
		{"node_exporter-1.8.2.linux-amd64/", ""},
		{"node_exporter-1.8.2.linux-amd64/node_exporter", "\x7fELF stand-in"},
		{"node_exporter-1.8.2.linux-amd64/LICENSE", "Apache-2.0"},
		{"node_exporter-1.8.2.linux-amd64/bin", "-> ."},
	})
	hostile := tarGz(t, [][2]string{{"ok", "x"}, {"../../etc/cron.d/evil", "* * * * * root sh"}})
	linkOut := tarGz(t, [][2]string{{"pkg/h", "link:../../etc/shadow"}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/node_exporter.tar.gz":
			w.Write(release)
		case "/hostile.tar.gz":
			w.Write(hostile)
		case "/linkout.tar.gz":
			w.Write(linkOut)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	fleet := func(url string) string {
		return `
host "h1" {
  address = "10.0.0.1"
  package "node_exporter" {
    url              = "` + srv.URL + url + `"
    unpack           = true
    strip_components = 1
  }
  service "node_exporter" {
    exec_start = "${package.node_exporter}/node_exporter"
  }
}`
	}
	ctx := context.Background()
	b := newTestBuilder(t, t.TempDir())
	pb := &modules.PackageBuilder{Store: b.Store, CacheDir: b.CacheDir}
	lockAndBuild := func(url string) (*Result, error) {
		dir := writeFleet(t, map[string]string{"fleet.hcl": fleet(url)})
		lock, diags := UpdateLock(ctx, load(t, dir), pb, false)
		if diags.HasErrors() {
			t.Fatalf("UpdateLock = %v", diags)
		}
		if err := lock.Write(dir); err != nil {
			t.Fatal(err)
		}
		res, diags := b.Build(ctx, load(t, dir), "h1")
		if diags.HasErrors() {
			return nil, diags
		}
		return res, nil
	}

	res, err := lockAndBuild("/node_exporter.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	pkg := b.Store.RealPath(res.Manifest.Packages[0].Path)
	if data, err := os.ReadFile(filepath.Join(pkg, "node_exporter")); err != nil || string(data) != "\x7fELF stand-in" {
		t.Errorf("node_exporter = %q, %v", data, err)
	}
	if fi, err := os.Stat(filepath.Join(pkg, "node_exporter")); err != nil || fi.Mode().Perm() != 0o555 {
		t.Errorf("node_exporter mode = %v, %v; want 0555", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(pkg, "bin")); err != nil || l != "." {
		t.Errorf("bin -> %q, %v; want .", l, err)
	}

	for _, tt := range []struct{ url, entry string }{
		{"/hostile.tar.gz", "../../etc/cron.d/evil"},
		{"/linkout.tar.gz", `entry "pkg/h": hard link to "../../etc/shadow", outside the archive`},
	} {
		_, err := lockAndBuild(tt.url)
		if err == nil || !strings.Contains(err.Error(), "Cannot unpack package") || !strings.Contains(err.Error(), tt.entry) {
			t.Errorf("building %s = %v, want Cannot unpack package naming %q", tt.url, err, tt.entry)
		}
	}
}

// A package's max_size bounds what its archive unpacks to (a bomb: 8 MiB
// of zeros, a few KiB compressed) and what its url downloads; both are
// refused with the setting named, and nothing reaches the store.
func TestURLUnpackLimits(t *testing.T) {
	bomb := tarGz(t, [][2]string{{"pkg/", ""}, {"pkg/zeros", string(make([]byte, 8<<20))}})
	big := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bomb.tar.gz":
			w.Write(bomb)
		case "/big.bin":
			w.Write(big)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	b := newTestBuilder(t, t.TempDir())
	pb := &modules.PackageBuilder{Store: b.Store, CacheDir: b.CacheDir}
	for _, tt := range []struct{ name, body, want string }{
		{"bomb", `url = "` + srv.URL + `/bomb.tar.gz"
    unpack   = true
    max_size = "1MiB"`, `max_size in package "tool"`},
		{"download", `url = "` + srv.URL + `/big.bin"
    max_size = "1MiB"`, `max_size in package "tool"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFleet(t, map[string]string{"fleet.hcl": `
host "h1" {
  address = "10.0.0.1"
  package "tool" {
    ` + tt.body + `
  }
}`})
			// deploy lock downloads within max_size too.
			_, diags := UpdateLock(ctx, load(t, dir), pb, false)
			if tt.name == "download" {
				if !diags.HasErrors() || !strings.Contains(diags.Error(), tt.want) {
					t.Fatalf("UpdateLock = %v, want a refusal naming %s", diags, tt.want)
				}
				return
			}
			lock, diags := UpdateLock(ctx, load(t, dir), pb, false)
			if diags.HasErrors() {
				t.Fatalf("UpdateLock = %v", diags)
			}
			lock.Write(dir)
			_, diags = b.Build(ctx, load(t, dir), "h1")
			if !diags.HasErrors() || !strings.Contains(diags.Error(), tt.want) || !strings.Contains(diags.Error(), "1 MiB") {
				t.Fatalf("Build = %v, want a refusal naming %s and 1 MiB", diags, tt.want)
			}
			if m, _ := filepath.Glob(filepath.Join(b.Store.RealDir, "*-tool*")); len(m) > 0 {
				t.Errorf("the store holds %v", m)
			}
		})
	}
}
