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
