package activation

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths the activation writes are resolved one component at a time,
// relative to the directory opened before (openat with O_NOFOLLOW), never
// through a path string the kernel would resolve again: a directory
// writable by another user on the way (a home directory, say) cannot
// redirect a root write by swapping a component for a symlink, and what was
// checked is what is written. A symlink on the way is followed only when
// root owns it and the directory holding it is root's and writable by
// nobody else, so that only root could have placed it (/bin → usr/bin,
// /var/run → /run); any other symlink is refused.

// UnsafePathError is a path the activation refuses to write through.
type UnsafePathError struct {
	Path   string // the path being written
	Link   string // the symlink on the way
	Reason string
}

func (e *UnsafePathError) Error() string {
	return fmt.Sprintf("refusing to follow the symlink %q on the way: %s", e.Link, e.Reason)
}

const maxLinkHops = 40

// openDir opens directory dir (absolute) for *at operations, resolving it
// as described above; with create, missing directories are made (0755,
// owned by the caller). The caller closes the descriptor.
func openDir(dir string, create bool) (int, error) {
	if !filepath.IsAbs(dir) {
		return -1, fmt.Errorf("%q is not an absolute path", dir)
	}
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	comps := splitPath(dir)
	cur := "/"
	hops := 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		next := filepath.Join(cur, c)
		nfd, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err := unix.Mkdirat(fd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return -1, fmt.Errorf("mkdir %q: %w", next, err)
			}
			nfd, err = unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			var st unix.Stat_t
			if serr := unix.Fstatat(fd, c, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				if reason := untrustedLink(fd, &st); reason != "" {
					unix.Close(fd)
					return -1, &UnsafePathError{Path: dir, Link: next, Reason: reason}
				}
				target, rerr := readlinkat(fd, c)
				if rerr != nil {
					unix.Close(fd)
					return -1, fmt.Errorf("readlink %q: %w", next, rerr)
				}
				if hops++; hops > maxLinkHops {
					unix.Close(fd)
					return -1, fmt.Errorf("open %q: %w", dir, unix.ELOOP)
				}
				comps = append(splitPath(target), comps...)
				if filepath.IsAbs(target) {
					unix.Close(fd)
					if fd, err = unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
						return -1, err
					}
					cur = "/"
				}
				continue
			}
		}
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("open %q: %w", next, err)
		}
		fd, cur = nfd, next
	}
	return fd, nil
}

// untrustedLink says why the symlink st in directory dirfd may have been
// placed by someone other than root ("" when it cannot have been).
func untrustedLink(dirfd int, st *unix.Stat_t) string {
	if st.Uid != 0 {
		return fmt.Sprintf("it is owned by uid %d, not root", st.Uid)
	}
	var dst unix.Stat_t
	if err := unix.Fstat(dirfd, &dst); err != nil {
		return err.Error()
	}
	if dst.Uid != 0 || dst.Mode&0o022 != 0 {
		return fmt.Sprintf("its directory (owner uid %d, mode %04o) is writable by a user other than root", dst.Uid, dst.Mode&0o7777)
	}
	return ""
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// openParent opens the directory holding path (creating missing
// directories when create is set) and returns it with path's last
// component.
func openParent(path string, create bool) (int, string, error) {
	path = filepath.Clean(path)
	name := filepath.Base(path)
	if !filepath.IsAbs(path) || name == "/" || name == "." || name == ".." {
		return -1, "", fmt.Errorf("%q is not an absolute path to a file", path)
	}
	fd, err := openDir(filepath.Dir(path), create)
	return fd, name, err
}

// lstatAt stats name in dirfd without following a symlink.
func lstatAt(dirfd int, name string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, err
	}
	return &st, nil
}

// readFileAt reads the regular file name in dirfd, never through a
// symlink.
func readFileAt(dirfd int, name string) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return io.ReadAll(f)
}
