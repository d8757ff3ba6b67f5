package nar

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzRestore checks that every archive the reader accepts is canonical:
// dumping the restored tree gives back the input byte for byte. The seed
// corpus holds a valid tree and one archive for each rejection rule.
func FuzzRestore(f *testing.F) {
	src := f.TempDir()
	os.WriteFile(filepath.Join(src, "a"), []byte("hello"), 0o755)
	os.Mkdir(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "b"), nil, 0o644)
	os.Symlink("../a", filepath.Join(src, "d", "l"))
	f.Add(dumpBytes(f, src))
	f.Add(archive(cat([]any{Magic}, file(""))...))
	f.Add(archive(cat([]any{Magic}, nested(3))...))
	for _, tt := range rejectionCases() {
		f.Add(tt.nar)
	}
	scratch := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		dest, err := os.MkdirTemp(scratch, "r")
		if err != nil {
			t.Fatal(err)
		}
		defer RemoveTree(dest)
		out := filepath.Join(dest, "out")
		n, err := Restore(bytes.NewReader(in), out, RestoreOptions{})
		if err != nil {
			if _, serr := os.Lstat(out); serr == nil {
				t.Fatalf("rejected input (%v) left %q behind", err, out)
			}
			return
		}
		if n != int64(len(in)) {
			t.Fatalf("accepted input of %d bytes, Restore reported %d", len(in), n)
		}
		var b bytes.Buffer
		if err := Dump(&b, out); err != nil {
			t.Fatalf("accepted input, but dumping the restored tree failed: %v", err)
		}
		if !bytes.Equal(b.Bytes(), in) {
			t.Fatalf("accepted a non-canonical archive: dump(restore(x)) != x")
		}
	})
}
