package closure

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A store path holding a sparse file over 4 GiB and two names that differ
// only in case is copied (the transfer protocol, both ends real stores on
// ext4) and verifies on the target; the file stays sparse there.
func TestTransferHugeSparseFileAndCaseNames(t *testing.T) {
	const size = 4<<30 + 3<<20 + 5
	src := t.TempDir()
	probe := filepath.Join(src, "probe-Case")
	os.WriteFile(probe, nil, 0o644)
	if _, err := os.Lstat(filepath.Join(src, "probe-case")); err == nil {
		t.Skip("the temporary directory's file system is case-insensitive")
	}
	os.Remove(probe)
	os.WriteFile(filepath.Join(src, "README"), []byte("upper\n"), 0o644)
	os.WriteFile(filepath.Join(src, "readme"), []byte("lower\n"), 0o644)
	f, err := os.Create(filepath.Join(src, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), size-4)
	f.Close()

	local := newTestStore(t, DefaultStoreDir)
	pi, err := local.AddTree(context.Background(), src, "huge", nil)
	if err != nil {
		t.Fatal(err)
	}
	if pi.NarSize <= size {
		t.Fatalf("NarSize %d, want more than %d", pi.NarSize, int64(size))
	}
	remote := newTestStore(t, DefaultStoreDir)
	s, r, serr, rerr := transfer(t, local, remote, []string{pi.Path}, SendOptions{}, nil)
	if serr != nil || rerr != nil || s.Imported != 1 || r.NarBytes != pi.NarSize {
		t.Fatalf("transfer: %+v / %+v, %v, %v", s, r, serr, rerr)
	}
	if problems, err := remote.Verify(context.Background()); err != nil || len(problems) != 0 {
		t.Fatalf("Verify on the target: %v, %v", problems, err)
	}
	got, err := remote.Info(pi.Path)
	if err != nil || got.NarHash != pi.NarHash || got.NarSize != pi.NarSize {
		t.Fatalf("the target's metadata %+v, %v; want the source's hash and size %d", got, err, pi.NarSize)
	}
	dir := remote.RealPath(pi.Path)
	for name, want := range map[string]string{"README": "upper\n", "readme": "lower\n"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s on the target = %q, %v", name, b, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "big"), &st); err != nil || st.Size != size || st.Blocks*512 > 64<<20 {
		t.Errorf("big on the target: size %d, %d bytes allocated, %v; want %d bytes, sparse", st.Size, st.Blocks*512, err, int64(size))
	}
}
