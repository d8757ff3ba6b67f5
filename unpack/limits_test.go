package unpack

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/limits"
)

// bombTarGz writes a .tar.gz holding one file of size zero bytes (a few
// KiB compressed per MiB) and returns its path.
func bombTarGz(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bomb.tar.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "pkg/zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
	io.Copy(tw, io.LimitReader(zeroReader{}, size))
	tw.Close()
	zw.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// A compressed archive that unpacks to more than the tree's MaxBytes is
// refused at the entry that crosses it, before its contents are read
// (nothing is spooled), naming the archive, the limit and the setting.
func TestArchiveBombRefused(t *testing.T) {
	bomb := bombTarGz(t, 64<<20)
	if fi, _ := os.Stat(bomb); fi.Size() > 1<<20 {
		t.Fatalf("the bomb is %d bytes compressed", fi.Size())
	}
	tr := newTree(t)
	tr.MaxBytes, tr.Settings = 1<<20, `in package "tool"`
	_, err := tr.ApplyFile(bomb, Options{Name: "https://example.com/tool.tar.gz"})
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) {
		t.Fatalf("ApplyFile(bomb) = %v, want a TooLargeError", err)
	}
	for _, want := range []string{"https://example.com/tool.tar.gz", `"pkg/zeros"`, "1 MiB", `max_size in package "tool"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := tr.SpoolSize(); n != 0 {
		t.Errorf("%d bytes spooled, want none", n)
	}
}

// The default limit (8 GiB) holds without a setting: an entry that claims
// 9 GiB is refused from its header, before its contents (here absent) are
// read.
func TestArchiveDefaultLimit(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "huge", Typeflag: tar.TypeReg, Mode: 0o644, Size: 9 << 30})
	tw.Flush()
	err := newTree(t).ApplyTar(&buf, Options{Name: "huge.tar"})
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) || tl.Limit != limits.DefaultUnpacked {
		t.Fatalf("ApplyTar(9 GiB entry) = %v, want a TooLargeError at the default limit", err)
	}
}

// An archive of more entries than MaxEntries is refused at the first
// entry past it.
func TestArchiveEntriesLimit(t *testing.T) {
	var es []entry
	for i := range 101 {
		es = append(es, file(fmt.Sprintf("f%03d", i), ""))
	}
	tr := newTree(t)
	tr.MaxEntries, tr.Settings = 100, `in package "tool"`
	err := tr.ApplyTar(bytes.NewReader(tarOf(t, es...)), Options{Name: "many.tar"})
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), "100 entries") || !strings.Contains(err.Error(), "max_entries") {
		t.Fatalf("ApplyTar(101 entries) = %v, want a TooLargeError naming 100 entries and max_entries", err)
	}
}

// The limits hold for an image's layers together: two layers of 600 KiB
// each pass one at a time but not in one tree of 1 MiB.
func TestLayersLimitTogether(t *testing.T) {
	body := strings.Repeat("x", 600<<10)
	tr := newTree(t)
	tr.MaxBytes = 1 << 20
	if err := tr.ApplyTar(bytes.NewReader(tarOf(t, file("a", body))), Options{Layer: true, Dir: "rootfs", Name: "layer 1"}); err != nil {
		t.Fatal(err)
	}
	err := tr.ApplyTar(bytes.NewReader(tarOf(t, file("b", body))), Options{Layer: true, Dir: "rootfs", Name: "layer 2"})
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), "layer 2") {
		t.Fatalf("second layer = %v, want a TooLargeError naming layer 2", err)
	}
}
