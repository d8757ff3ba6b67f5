package nar

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// hugeSparse is the size of the sparse test file: over 4 GiB and not a
// multiple of anything, so that no length fits in 32 bits.
const hugeSparse = 4<<30 + 3<<20 + 5

// makeCaseAndSparseTree writes two names that differ only in case and a
// sparse file of hugeSparse bytes with data at its start, middle and end.
func makeCaseAndSparseTree(t testing.TB, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "README"), []byte("upper\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "readme"), []byte("lower\n"), 0o644))
	f, err := os.Create(filepath.Join(dir, "big"))
	must(err)
	defer f.Close()
	must(f.Truncate(hugeSparse))
	for _, at := range []int64{0, 2<<30 + 12345, hugeSparse - 4} {
		_, err := f.WriteAt([]byte("data"), at)
		must(err)
	}
}

// caseSensitive reports whether dir's file system tells "README" from
// "readme" (ext4 without casefolding does).
func caseSensitive(t *testing.T, dir string) bool {
	t.Helper()
	p := filepath.Join(dir, "probe-Case")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	_, err := os.Lstat(filepath.Join(dir, "probe-case"))
	return err != nil
}

type hashCount struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (c *hashCount) Write(b []byte) (int, error) { c.n += int64(len(b)); return c.h.Write(b) }

func narHash(t *testing.T, p string) ([]byte, int64) {
	t.Helper()
	hc := &hashCount{h: sha256.New()}
	if err := Dump(hc, p); err != nil {
		t.Fatalf("Dump(%q): %v", p, err)
	}
	return hc.h.Sum(nil), hc.n
}

// Two names differing only in case both survive a restore on a
// case-sensitive file system, and a sparse file over 4 GiB round-trips:
// dump(restore(dump(tree))) == dump(tree), and the restored file stays
// sparse. (Case-insensitive file systems are out of scope.)
func TestRestoreCaseNamesAndHugeSparseFile(t *testing.T) {
	src := t.TempDir()
	if !caseSensitive(t, src) {
		t.Skip("the temporary directory's file system is case-insensitive")
	}
	makeCaseAndSparseTree(t, src)
	wantHash, wantSize := narHash(t, src)
	if wantSize < hugeSparse {
		t.Fatalf("the NAR is %d bytes, want more than the file's %d", wantSize, int64(hugeSparse))
	}

	dest := filepath.Join(t.TempDir(), "out")
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(Dump(pw, src)) }()
	n, err := Restore(pr, dest, RestoreOptions{Writeback: true, Sync: true})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { RemoveTree(dest) })
	if n != wantSize {
		t.Fatalf("Restore read %d bytes, want %d", n, wantSize)
	}
	for name, want := range map[string]string{"README": "upper\n", "readme": "lower\n"} {
		if got, err := os.ReadFile(filepath.Join(dest, name)); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dest, "big"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != hugeSparse || st.Blocks*512 > 64<<20 {
		t.Errorf("restored big: size %d (want %d), %d bytes allocated (want it sparse)", st.Size, int64(hugeSparse), st.Blocks*512)
	}
	f, _ := os.Open(filepath.Join(dest, "big"))
	tail := make([]byte, 4)
	f.ReadAt(tail, hugeSparse-4)
	f.Close()
	if string(tail) != "data" {
		t.Errorf("the last bytes of big = %q", tail)
	}
	if gotHash, gotSize := narHash(t, dest); !bytes.Equal(gotHash, wantHash) || gotSize != wantSize {
		t.Fatalf("dump(restore(dump(tree))): %x, %d bytes; want %x, %d", gotHash, gotSize, wantHash, wantSize)
	}
}
