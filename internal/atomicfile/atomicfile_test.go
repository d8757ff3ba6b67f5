package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// WriteFunc replaces the file with what was written, with its mode; a
// failed write leaves the old file and no temp file behind.
func TestWriteFunc(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "image.tar")
	if err := Write(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := WriteFunc(p, 0o644, func(w io.Writer) error { w.Write([]byte("half")); return boom }); !errors.Is(err, boom) {
		t.Errorf("WriteFunc(failing) = %v, want %v", err, boom)
	}
	if data, _ := os.ReadFile(p); string(data) != "old" {
		t.Errorf("after a failed write the file holds %q, want %q", data, "old")
	}
	if err := WriteFunc(p, 0o644, func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if data, _ := os.ReadFile(p); err != nil || string(data) != "new" || fi.Mode().Perm() != 0o644 {
		t.Errorf("after WriteFunc: %q, mode %v, %v; want \"new\", 0644", data, fi.Mode().Perm(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the directory holds %d entries, want the file alone", len(entries))
	}
}
