package imageroot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRealizeHelper realizes an image for TestRealizeKilled in a process
// of its own.
func TestRealizeHelper(t *testing.T) {
	dir := os.Getenv("IMAGEROOT_HELPER_DIR")
	if dir == "" {
		t.Skip("a helper of TestRealizeKilled")
	}
	_, _, err := Realize(context.Background(), dir, os.Getenv("IMAGEROOT_HELPER_IMAGE"),
		[]Layer{{Digest: os.Getenv("IMAGEROOT_HELPER_DIGEST"), Blob: os.Getenv("IMAGEROOT_HELPER_BLOB")}})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRealizeKilled kills -9 a realization half-way through its layer (the
// layer comes through a FIFO the test writes, so the kill lands while an
// entry is being written): no root is left under its final name, and the
// next realization removes the leftovers and makes the whole root.
func TestRealizeKilled(t *testing.T) {
	needRoot(t)
	images, blobs := filepath.Join(t.TempDir(), "images"), t.TempDir()
	big := strings.Repeat("0123456789abcdef", 1<<20) // 16 MiB
	data := layer(t, dir("srv/", 0o755, 0), file("srv/first", "first\n", 0o600, 77), file("srv/big", big, 0o644, 0), file("srv/last", "last\n", 0o644, 0))
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	const image = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	fifo := filepath.Join(blobs, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRealizeHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "IMAGEROOT_HELPER_DIR="+images, "IMAGEROOT_HELPER_IMAGE="+image,
		"IMAGEROOT_HELPER_DIGEST="+digest, "IMAGEROOT_HELPER_BLOB="+fifo)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // until the helper opens it
	if err != nil {
		t.Fatal(err)
	}
	// Everything up to the middle of the big file.
	half := bytes.Index(data, []byte(big)) + len(big)/2
	go w.Write(data[:half])
	// Wait for the big file to be under way in the temporary root.
	for {
		m, _ := filepath.Glob(filepath.Join(images, ".tmp-*", RootDir, "srv", "big"))
		if len(m) == 1 {
			if fi, err := os.Stat(m[0]); err == nil && fi.Size() > 0 {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("the helper ended before the kill: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	w.Close()
	if _, err := os.Lstat(Path(images, image)); err == nil {
		t.Fatalf("a killed realization left a root under its final name")
	}
	if m, _ := filepath.Glob(filepath.Join(images, ".tmp-*")); len(m) != 1 {
		t.Fatalf("leftovers = %q, want the killed realization's temporary directory", m)
	}

	blob := filepath.Join(blobs, "blob")
	if err := os.WriteFile(blob, data, 0o444); err != nil {
		t.Fatal(err)
	}
	made, _, err := Realize(context.Background(), images, image, []Layer{{Digest: digest, Blob: blob}})
	if err != nil || !made {
		t.Fatalf("Realize after the kill = %v, %v", made, err)
	}
	ents, _ := os.ReadDir(images)
	if len(ents) != 1 || ents[0].Name() != strings.TrimPrefix(image, "sha256:") {
		t.Errorf("after the second realization %s holds %v, want only the root", images, ents)
	}
	root := filepath.Join(Path(images, image), RootDir)
	if b, err := os.ReadFile(filepath.Join(root, "srv/last")); err != nil || string(b) != "last\n" {
		t.Errorf("srv/last = %q, %v", b, err)
	}
	if st := lstat(t, filepath.Join(root, "srv/first")); st.Uid != 77 || st.Mode&0o777 != 0o600 {
		t.Errorf("srv/first: uid %d mode %o", st.Uid, st.Mode&0o777)
	}
}
