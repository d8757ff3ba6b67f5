package secrets

import (
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// placeDestinations makes each entry's destination (a Path other than
// RunDir/secrets/NAME) a symlink to RunDir/secrets/NAME. It returns the
// destinations it created (not those that were already right).
func placeDestinations(runDir string, entries []entry) ([]string, error) {
	var placed []string
	for _, e := range entries {
		if e.dest == "" {
			continue
		}
		created, err := placeDestination(runDir, e.dest, filepath.Join(runDir, currentLink, e.name))
		if err != nil {
			return placed, fmt.Errorf("install secret %q: %w", e.name, err)
		}
		if created {
			placed = append(placed, e.dest)
		}
	}
	return placed, nil
}

// openDirNoFollow opens an absolute directory path component by component,
// never following a symlink; with create, missing directories are made
// (0755).
func openDirNoFollow(dir string, create bool) (int, error) {
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for _, c := range strings.Split(strings.Trim(dir, "/"), "/") {
		if c == "" {
			continue
		}
		next, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		unix.Close(fd)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return -1, fmt.Errorf("%q in %q is not a directory (symlinks are not followed): %w", c, dir, err)
			}
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// placeDestination creates dest → target unless it is already that
// symlink. It replaces only a symlink into RunDir/secrets/ (one deploy
// placed); anything else at dest is an error.
func placeDestination(runDir, dest, target string) (bool, error) {
	pfd, err := openDirNoFollow(filepath.Dir(dest), true)
	if err != nil {
		return false, fmt.Errorf("destination %q: %w", dest, err)
	}
	defer unix.Close(pfd)
	base := filepath.Base(dest)
	replace := false
	old, err := readlinkat(pfd, base)
	switch {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		return false, fmt.Errorf("destination %q exists and is not a symlink deploy placed; remove it or choose another path", dest)
	case old == target:
		return false, nil
	case strings.HasPrefix(old, filepath.Join(runDir, currentLink)+"/"):
		replace = true
	default:
		return false, fmt.Errorf("destination %q is a symlink to %q that deploy did not place; remove it or choose another path", dest, old)
	}
	tmp := "." + base + ".deploy-" + rand.Text()[:12]
	if err := unix.Symlinkat(target, pfd, tmp); err != nil {
		return false, fmt.Errorf("destination %q: create symlink: %w", dest, err)
	}
	flags := uint(unix.RENAME_NOREPLACE)
	if replace {
		flags = 0
	}
	if err := unix.Renameat2(pfd, tmp, pfd, base, flags); err != nil {
		_ = unix.Unlinkat(pfd, tmp, 0)
		return false, fmt.Errorf("destination %q: %w", dest, err)
	}
	_ = unix.Fsync(pfd)
	return true, nil
}

// removeDestination removes dest if it is a symlink into RunDir/secrets/.
func removeDestination(dest, runDir string) {
	pfd, err := openDirNoFollow(filepath.Dir(dest), false)
	if err != nil {
		return
	}
	defer unix.Close(pfd)
	base := filepath.Base(dest)
	if old, err := readlinkat(pfd, base); err == nil && strings.HasPrefix(old, filepath.Join(runDir, currentLink)+"/") {
		_ = unix.Unlinkat(pfd, base, 0)
	}
}

func readlinkat(dfd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}
