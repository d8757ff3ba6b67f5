package imageroot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// RootDir is the name of the root filesystem inside a realized image's
// directory.
const RootDir = "rootfs"

// Layer is one layer of an image to realize.
type Layer struct {
	// Digest is the blob's digest ("sha256:HEX"); the blob is checked
	// against it as it is applied.
	Digest string
	// Blob is the file holding the blob.
	Blob string
}

// mountDirs and mountFiles are what systemd mounts over when the root is a
// unit's RootDirectory= (MountAPIVFS=, PrivateTmp=, ProtectSystem=,
// ProtectHome=, BindReadOnlyPaths= of resolv.conf and hosts): made when
// the image lacks them, so that systemd never has to.
var (
	mountDirs  = []string{"dev", "proc", "sys", "run", "tmp", "var/tmp", "root", "home", "usr"}
	mountFiles = []string{"etc/resolv.conf", "etc/hosts"}
)

// HexDigest returns the hex digits of a "sha256:HEX" digest, checked.
func HexDigest(digest string) (string, error) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(h) != 64 {
		return "", fmt.Errorf("digest %q is not sha256:HEX", digest)
	}
	if _, err := hex.DecodeString(h); err != nil || strings.ToLower(h) != h {
		return "", fmt.Errorf("digest %q is not sha256:HEX", digest)
	}
	return h, nil
}

// Path returns where [Realize] puts the image whose manifest digest is
// digest, below dir: dir/HEX (its root is dir/HEX/rootfs).
func Path(dir, digest string) string {
	return filepath.Join(dir, strings.TrimPrefix(digest, "sha256:"))
}

// Realize makes the root of the image whose manifest digest is digest at
// dir/HEX/rootfs from its layers (bottom first), unless it is there. dir
// is made mode 0700: a realized root holds the image's set-user-ID
// programs, which no user of the host may reach. Leftovers of interrupted
// realizations (dir/.tmp-*) are removed first; the caller serialises
// realizations in dir. It returns whether it made the root, and the
// entries skipped.
func Realize(ctx context.Context, dir, digest string, layers []Layer) (made bool, skipped []string, err error) {
	h, err := HexDigest(digest)
	if err != nil {
		return false, nil, err
	}
	final := filepath.Join(dir, h)
	if fi, err := os.Lstat(final); err == nil && fi.IsDir() {
		return false, nil, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return false, nil, err
	}
	if err := RemoveTemps(dir); err != nil {
		return false, nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-"+h[:12]+"-")
	if err != nil {
		return false, nil, err
	}
	done := false
	defer func() {
		if !done {
			RemoveAll(tmp)
		}
	}()
	if err := os.Mkdir(filepath.Join(tmp, RootDir), 0o755); err != nil {
		return false, nil, err
	}
	root, err := os.Open(filepath.Join(tmp, RootDir))
	if err != nil {
		return false, nil, err
	}
	defer root.Close()
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return false, skipped, err
		}
		sk, err := applyBlob(root, l, fmt.Sprintf("layer %d (%s)", i+1, l.Digest))
		skipped = append(skipped, sk...)
		if err != nil {
			return false, skipped, err
		}
	}
	if err := addMountPoints(root); err != nil {
		return false, skipped, err
	}
	if err := unix.Syncfs(int(root.Fd())); err != nil {
		return false, skipped, fmt.Errorf("syncfs: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return false, skipped, err
	}
	done = true
	d, err := os.Open(dir)
	if err != nil {
		return true, skipped, err
	}
	defer d.Close()
	return true, skipped, d.Sync()
}

// applyBlob applies one layer blob, checking it against its digest.
func applyBlob(root *os.File, l Layer, name string) ([]string, error) {
	want, err := HexDigest(l.Digest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f, err := os.Open(l.Blob)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer f.Close()
	hash := sha256.New()
	tee := io.TeeReader(f, hash)
	skipped, err := ApplyLayer(root, tee, name)
	if err != nil {
		return skipped, err
	}
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return skipped, fmt.Errorf("%s: %w", name, err)
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != want {
		return skipped, fmt.Errorf("%s: the blob %s has sha256 %s", name, l.Blob, got)
	}
	return skipped, nil
}

// addMountPoints makes the mount points the image lacks: directories, and
// regular files where the image has none (a symbolic link there, which
// systemd would follow, is replaced).
func addMountPoints(root *os.File) error {
	a := &applier{root: int(root.Fd()), name: "mount points", created: map[string]bool{}}
	for _, d := range mountDirs {
		fd, err := a.openDir(d, true)
		if err != nil {
			return fmt.Errorf("adding mount point /%s: %w", d, err)
		}
		unix.Close(fd)
	}
	for _, f := range mountFiles {
		dir, base := filepath.Split(f)
		fd, err := a.openDir(strings.TrimSuffix(dir, "/"), true)
		if err != nil {
			return fmt.Errorf("adding mount point /%s: %w", f, err)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			unix.Close(fd)
			continue
		}
		err = removeAt(fd, base)
		if err == nil {
			var nf int
			nf, err = unix.Openat(fd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
			if err == nil {
				unix.Close(nf)
			}
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("adding mount point /%s: %w", f, err)
		}
	}
	return nil
}

// RemoveTemps removes what interrupted realizations left in dir.
func RemoveTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if err := RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// RemoveAll removes the tree at p without following a symbolic link in it.
func RemoveAll(p string) error {
	parent, err := unix.Open(filepath.Dir(p), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	defer unix.Close(parent)
	return removeAt(parent, filepath.Base(p))
}
