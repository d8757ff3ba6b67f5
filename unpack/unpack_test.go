package unpack

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/nar"
	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// entry is one tar entry of a test archive.
type entry struct {
	name string
	typ  byte
	body string // contents, or link target
	mode int64
}

func file(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, body: body, mode: 0o644}
}
func exe(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, body: body, mode: 0o755}
}
func dir(name string) entry              { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) entry      { return entry{name: name, typ: tar.TypeSymlink, body: to} }
func hardlink(name, to string) entry     { return entry{name: name, typ: tar.TypeLink, body: to} }
func device(name string, typ byte) entry { return entry{name: name, typ: typ, mode: 0o600} }

func tarOf(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Format: tar.FormatPAX}
		switch e.typ {
		case tar.TypeReg:
			h.Size = int64(len(e.body))
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = e.body
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// listing returns the tree as lines "path type [detail]", read back from
// its NAR with the store's own validating parser.
func listing(t testing.TB, tr *Tree) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := tr.WriteNAR(&buf); err != nil {
		t.Fatal(err)
	}
	s := &listSink{}
	if _, err := nar.Parse(&buf, s, nar.Options{}); err != nil {
		t.Fatalf("the tree's NAR does not parse: %v", err)
	}
	return s.lines
}

type listSink struct {
	stack []string
	lines []string
}

func (s *listSink) path(name string) string {
	return strings.TrimPrefix(strings.Join(append(slices.Clone(s.stack), name), "/"), "/")
}

func (s *listSink) Directory(name string) error {
	if p := s.path(name); p != "" {
		s.lines = append(s.lines, p+"/")
	}
	s.stack = append(s.stack, name)
	return nil
}
func (s *listSink) EndDirectory() error { s.stack = s.stack[:len(s.stack)-1]; return nil }
func (s *listSink) Symlink(name, target string) error {
	s.lines = append(s.lines, s.path(name)+" -> "+target)
	return nil
}
func (s *listSink) File(name string, exec bool, _ int64, r io.Reader) error {
	b, err := io.ReadAll(r)
	x := ""
	if exec {
		x = "*"
	}
	s.lines = append(s.lines, s.path(name)+x+" = "+string(b))
	return err
}

func newTree(t *testing.T) *Tree {
	t.Helper()
	tr, err := NewTree(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func layers(t *testing.T, ls ...[]entry) (*Tree, error) {
	t.Helper()
	tr := newTree(t)
	for i, l := range ls {
		if err := tr.ApplyTar(bytes.NewReader(tarOf(t, l...)), Options{Layer: true, Dir: "rootfs", Name: "layer " + string(rune('1'+i))}); err != nil {
			return tr, err
		}
	}
	return tr, nil
}

func TestLayers(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]entry
		want   []string
	}{
		{"whiteout of a file",
			[][]entry{{dir("a/"), file("a/f1", "1"), file("a/f2", "2")}, {file("a/.wh.f1", "")}},
			[]string{"rootfs/", "rootfs/a/", "rootfs/a/f2 = 2"}},
		{"whiteout of a directory",
			[][]entry{{file("d/x/y", "y"), file("keep", "k")}, {file(".wh.d", "")}},
			[]string{"rootfs/", "rootfs/keep = k"}},
		// go-containerregistry#1897: the opaque directory must lose a/b.
		{"opaque directory",
			[][]entry{{dir("a/"), dir("a/b/"), file("a/b/foo", "foo")}, {dir("a/"), file("a/.wh..wh..opq", "")}},
			[]string{"rootfs/", "rootfs/a/"}},
		// rm -rf dir && mkdir dir && touch new1 new2: the marker hides
		// only the lower layer, wherever it comes in the layer.
		{"opaque directory with entries before and after the marker",
			[][]entry{{file("dir/old1", "o"), file("dir/old2", "o")}, {dir("dir/"), file("dir/new1", "n"), file("dir/.wh..wh..opq", ""), file("dir/new2", "n")}},
			[]string{"rootfs/", "rootfs/dir/", "rootfs/dir/new1 = n", "rootfs/dir/new2 = n"}},
		{"opaque directory hides lower contents of a redeclared subdirectory",
			[][]entry{{file("d/sub/old", "o")}, {file("d/.wh..wh..opq", ""), dir("d/sub/"), file("d/sub/new", "n")}},
			[]string{"rootfs/", "rootfs/d/", "rootfs/d/sub/", "rootfs/d/sub/new = n"}},
		{"a whiteout does not remove what its own layer adds",
			[][]entry{{file("x", "1")}, {file("x", "2"), file(".wh.x", "")}},
			[]string{"rootfs/", "rootfs/x = 2"}},
		{"a whiteout in a missing directory makes nothing",
			[][]entry{{file("x", "1")}, {file("nope/.wh.y", ""), file("gone/.wh..wh..opq", "")}},
			[]string{"rootfs/", "rootfs/x = 1"}},
		{"whiteout of nothing",
			[][]entry{{file("x", "1")}, {file(".wh.nothing", "")}},
			[]string{"rootfs/", "rootfs/x = 1"}},
		{"later layers replace types",
			[][]entry{{file("a/b", "file"), symlink("l", "a")}, {file("a", "now a file"), dir("l/")}},
			[]string{"rootfs/", "rootfs/a = now a file", "rootfs/l/"}},
		{"hard link is a copy",
			[][]entry{{exe("bin/a", "A"), hardlink("bin/b", "bin/a"), hardlink("/bin/c", "/bin/a")}},
			[]string{"rootfs/", "rootfs/bin/", "rootfs/bin/a* = A", "rootfs/bin/b* = A", "rootfs/bin/c* = A"}},
		{"absolute names are relative to the root",
			[][]entry{{file("/etc/abs", "a"), file("./etc/dot", "d")}},
			[]string{"rootfs/", "rootfs/etc/", "rootfs/etc/abs = a", "rootfs/etc/dot = d"}},
		// A symlink that points out of the root is kept as it is; an
		// entry below it lands inside the root, where the link resolves
		// when the root is the service's root directory.
		{"symlink out of the root",
			[][]entry{{symlink("escape", "/etc"), symlink("up", "../../../../.."), file("escape/passwd", "p"), file("up/x", "x")}},
			[]string{"rootfs/", "rootfs/escape -> /etc", "rootfs/etc/", "rootfs/etc/passwd = p", "rootfs/up -> ../../../../..", "rootfs/x = x"}},
		{"merged /usr: entries through a directory symlink",
			[][]entry{{dir("usr/lib/"), symlink("lib", "usr/lib")}, {file("lib/libx.so", "x")}},
			[]string{"rootfs/", "rootfs/lib -> usr/lib", "rootfs/usr/", "rootfs/usr/lib/", "rootfs/usr/lib/libx.so = x"}},
		{"device nodes and FIFOs are skipped",
			[][]entry{{dir("dev/"), device("dev/null", tar.TypeChar), device("dev/sda", tar.TypeBlock), device("fifo", tar.TypeFifo), file("ok", "o")}},
			[]string{"rootfs/", "rootfs/dev/", "rootfs/ok = o"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := layers(t, tt.layers...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, listing(t, tr)); diff != "" {
				t.Errorf("tree (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLayerSkippedNamed(t *testing.T) {
	tr, err := layers(t, []entry{device("dev/null", tar.TypeChar), device("run/fifo", tar.TypeFifo)})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"layer 1: dev/null: a character device (a store path cannot hold one), skipped", "layer 1: run/fifo: a FIFO (a store path cannot hold one), skipped"}
	if diff := cmp.Diff(want, tr.Skipped); diff != "" {
		t.Errorf("Skipped (-want +got):\n%s", diff)
	}
}

func TestHostileRefused(t *testing.T) {
	tests := []struct {
		name    string
		layer   bool
		entries []entry
		entry   string // the entry the error must name
	}{
		{"dotdot in a layer", true, []entry{file("../evil", "x")}, "../evil"},
		{"dotdot in the middle of a layer", true, []entry{file("a/../../evil", "x")}, "a/../../evil"},
		{"hard link out of a layer", true, []entry{hardlink("h", "../../etc/shadow")}, "h"},
		{"hard link to nothing", true, []entry{hardlink("h", "missing")}, "h"},
		{"hard link to a directory", true, []entry{dir("d/"), hardlink("h", "d")}, "h"},
		{"parent is a symlink to a file", true, []entry{file("f", "f"), symlink("l", "/f"), file("l/x", "x")}, "l/x"},
		{"symlink loop", true, []entry{symlink("a", "b"), symlink("b", "a"), file("a/x", "x")}, "a/x"},
		{"dotdot in an archive", false, []entry{file("../evil", "x")}, "../evil"},
		{"absolute in an archive", false, []entry{file("/etc/cron.d/evil", "x")}, "/etc/cron.d/evil"},
		{"hard link out of an archive", false, []entry{hardlink("h", "../outside")}, "h"},
		{"absolute hard link in an archive", false, []entry{hardlink("h", "/etc/passwd")}, "h"},
		{"hard link through a symlink in an archive", false, []entry{symlink("l", "/etc"), hardlink("h", "l/passwd")}, "h"},
		{"entry below a symlink in an archive", false, []entry{symlink("l", "/etc"), file("l/passwd", "x")}, "l/passwd"},
		{"device in an archive", false, []entry{device("dev/sda", tar.TypeBlock)}, "dev/sda"},
		{"device outside /dev in a layer", true, []entry{device("etc/mem", tar.TypeChar)}, "etc/mem"},
		{"FIFO in an archive", false, []entry{device("fifo", tar.TypeFifo)}, "fifo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTree(t)
			err := tr.ApplyTar(bytes.NewReader(tarOf(t, tt.entries...)), Options{Layer: tt.layer, Name: "test.tar"})
			var ee *EntryError
			if !errors.As(err, &ee) {
				t.Fatalf("ApplyTar = %v, want an *EntryError", err)
			}
			if ee.Entry != tt.entry || ee.Archive != "test.tar" {
				t.Errorf("error %q names entry %q of %q, want %q of test.tar", err, ee.Entry, ee.Archive, tt.entry)
			}
			if !strings.Contains(err.Error(), tt.entry) {
				t.Errorf("error %q does not name %q", err, tt.entry)
			}
		})
	}
}

func TestStripComponents(t *testing.T) {
	tr := newTree(t)
	data := tarOf(t, dir("node_exporter-1.8.2/"), exe("node_exporter-1.8.2/node_exporter", "bin"), file("node_exporter-1.8.2/LICENSE", "l"),
		hardlink("node_exporter-1.8.2/ne", "node_exporter-1.8.2/node_exporter"), file("top", "dropped"))
	if err := tr.ApplyTar(bytes.NewReader(data), Options{StripComponents: 1, Name: "ne.tar"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"LICENSE = l", "ne* = bin", "node_exporter* = bin"}
	if diff := cmp.Diff(want, listing(t, tr)); diff != "" {
		t.Errorf("tree (-want +got):\n%s", diff)
	}
}

func TestFormats(t *testing.T) {
	plain := tarOf(t, dir("pkg/"), exe("pkg/bin/tool", "#!/bin/sh\n"), symlink("pkg/link", "bin/tool"))
	want := []string{"bin/", "bin/tool* = #!/bin/sh\n", "link -> bin/tool"}
	compress := map[Format]func([]byte) []byte{
		FormatTar: func(b []byte) []byte { return b },
		FormatTarGzip: func(b []byte) []byte {
			var out bytes.Buffer
			w := gzip.NewWriter(&out)
			w.Write(b)
			w.Close()
			return out.Bytes()
		},
		FormatTarXz: func(b []byte) []byte {
			var out bytes.Buffer
			w, err := xz.NewWriter(&out)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(b)
			w.Close()
			return out.Bytes()
		},
		FormatTarZstd: func(b []byte) []byte {
			w, err := zstd.NewWriter(nil)
			if err != nil {
				t.Fatal(err)
			}
			return w.EncodeAll(b, nil)
		},
		FormatTarBzip2: func([]byte) []byte {
			// bzip2 -c of the same three entries, made by python3's bz2.
			b, err := os.ReadFile("testdata/pkg.tar.bz2")
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		FormatZip: func([]byte) []byte {
			var out bytes.Buffer
			zw := zip.NewWriter(&out)
			hd := &zip.FileHeader{Name: "pkg/"}
			hd.SetMode(0o755 | os.ModeDir)
			zw.CreateHeader(hd)
			h := &zip.FileHeader{Name: "pkg/bin/tool", Method: zip.Deflate}
			h.SetMode(0o755)
			w, _ := zw.CreateHeader(h)
			w.Write([]byte("#!/bin/sh\n"))
			l := &zip.FileHeader{Name: "pkg/link"}
			l.SetMode(0o777 | os.ModeSymlink)
			w, _ = zw.CreateHeader(l)
			w.Write([]byte("bin/tool"))
			zw.Close()
			return out.Bytes()
		},
	}
	for f, c := range compress {
		t.Run(string(f), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "archive")
			if err := os.WriteFile(p, c(plain), 0o644); err != nil {
				t.Fatal(err)
			}
			tr := newTree(t)
			got, err := tr.ApplyFile(p, Options{StripComponents: 1})
			if err != nil {
				t.Fatal(err)
			}
			if got != f {
				t.Errorf("ApplyFile detected %q, want %q", got, f)
			}
			if diff := cmp.Diff(want, listing(t, tr)); diff != "" {
				t.Errorf("tree (-want +got):\n%s", diff)
			}
		})
	}
}

func TestZipHostile(t *testing.T) {
	for _, name := range []string{"../evil", "/abs"} {
		var out bytes.Buffer
		zw := zip.NewWriter(&out)
		w, _ := zw.Create(name)
		w.Write([]byte("x"))
		zw.Close()
		tr := newTree(t)
		err := tr.ApplyZip(bytes.NewReader(out.Bytes()), int64(out.Len()), Options{Name: "x.zip"})
		var ee *EntryError
		if !errors.As(err, &ee) || ee.Entry != name {
			t.Errorf("ApplyZip with entry %q = %v, want an *EntryError naming it", name, err)
		}
	}
}

func TestNotAnArchive(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x")
	os.WriteFile(p, []byte("just text"), 0o644)
	if _, err := newTree(t).ApplyFile(p, Options{Name: "https://example.com/x"}); err == nil || !strings.Contains(err.Error(), "https://example.com/x") {
		t.Errorf("ApplyFile(text) = %v, want an error naming the archive", err)
	}
}

// A tree added to the store is restored by the store's own restorer and
// gives the same path every time.
func TestAddToStore(t *testing.T) {
	s, err := closure.NewLocalStore(t.TempDir(), closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for range 2 {
		tr, err := layers(t, []entry{exe("bin/sh", "shell"), symlink("etc", "/host/etc"), dir("empty/")}, []entry{file("etc/passwd", "root")})
		if err != nil {
			t.Fatal(err)
		}
		tr.WriteFile("config.json", []byte("{}"), false)
		pi, err := tr.AddToStore(context.Background(), s, "oci-test", nil)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, pi.Path)
	}
	if paths[0] != paths[1] {
		t.Errorf("the same tree gave %q and %q", paths[0], paths[1])
	}
	real := s.RealPath(paths[0])
	if b, err := os.ReadFile(filepath.Join(real, "rootfs/bin/sh")); err != nil || string(b) != "shell" {
		t.Errorf("rootfs/bin/sh = %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(real, "rootfs/bin/sh")); err != nil || fi.Mode().Perm() != 0o555 {
		t.Errorf("rootfs/bin/sh mode %v, %v; want 0555", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(real, "rootfs/etc")); err != nil || l != "/host/etc" {
		t.Errorf("rootfs/etc -> %q, %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(real, "rootfs/host/etc/passwd")); err != nil {
		t.Errorf("etc/passwd, written through the symlink, is not inside the root: %v", err)
	}
	if problems, err := s.Verify(context.Background()); err != nil || len(problems) > 0 {
		t.Errorf("Verify = %v, %v", problems, err)
	}
}
