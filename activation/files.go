package activation

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// UnmanagedError is returned when a file or symlink of the new manifest
// would replace something no generation managed, without force.
type UnmanagedError struct {
	Path string
}

func (e *UnmanagedError) Error() string {
	return fmt.Sprintf("%q exists and is not managed by deploy: refusing to replace it (set force = true to take it over)", e.Path)
}

func parseMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("mode %q is not octal", s)
	}
	return uint32(m), nil
}

func lookupIDs(owner, group string) (int, int, error) {
	u, err := user.Lookup(owner)
	if err != nil {
		return 0, 0, fmt.Errorf("owner %q: %w", owner, err)
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, 0, fmt.Errorf("group %q: %w", group, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(g.Gid)
	return uid, gid, nil
}

// owned are the files and symlinks deploy wrote and still owns.
func (a *applier) owned() map[string]bool {
	m := map[string]bool{}
	for _, p := range a.rec.Owned {
		m[p] = true
	}
	return m
}

// own records path as deploy's before it is first written, durably, so
// that a crash right after the write still knows whose the file is.
func (a *applier) own(path string) error {
	if slices.Contains(a.rec.Owned, path) {
		return nil
	}
	a.rec.Owned = append(a.rec.Owned, path)
	slices.Sort(a.rec.Owned)
	return a.l.writeApplied(a.rec)
}

// disown forgets path after deploy removed it.
func (a *applier) disown(path string) error {
	i := slices.Index(a.rec.Owned, path)
	if i < 0 {
		return nil
	}
	a.rec.Owned = slices.Delete(a.rec.Owned, i, i+1)
	return a.l.writeApplied(a.rec)
}

func (a *applier) directories(ctx context.Context) error {
	for _, d := range a.next.Directories {
		uid, gid, err := lookupIDs(d.Owner, d.Group)
		if err != nil {
			return fmt.Errorf("directory %q: %w", d.Path, err)
		}
		mode, err := parseMode(d.Mode)
		if err != nil {
			return fmt.Errorf("directory %q: %w", d.Path, err)
		}
		if err := makeDir(d.Path, uid, gid, mode); err != nil {
			return fmt.Errorf("directory %q: %w", d.Path, err)
		}
	}
	return nil
}

// makeDir creates directory path (and missing parents) and gives it its
// owner and mode through a descriptor: never through a symlink, and what
// was opened is what is changed.
func makeDir(path string, uid, gid int, mode uint32) error {
	pfd, name, err := openParent(path, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return errors.New("exists and is not a directory")
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// files installs files and symlinks, then removes those deploy owns and
// next does not want.
func (a *applier) files(ctx context.Context) error {
	managed := a.owned()
	keep := map[string]bool{}
	for _, f := range a.next.Files {
		keep[f.Path] = true
		if err := a.installFile(f.Path, a.opts.real(f.Source), f.Owner, f.Group, f.Mode, managed[f.Path] || f.Force || a.opts.Force); err != nil {
			return err
		}
	}
	for _, s := range a.next.Symlinks {
		keep[s.Path] = true
		if err := a.installSymlink(s.Path, s.Target, managed[s.Path] || s.Force || a.opts.Force); err != nil {
			return err
		}
	}
	for _, d := range a.next.Directories {
		keep[d.Path] = true
	}
	for _, s := range a.next.Secrets {
		keep[s.Path] = true
	}
	for p := range managed {
		if keep[p] {
			continue
		}
		removed, err := a.remove(p)
		var ue *UnsafePathError
		if errors.As(err, &ue) {
			// What is there now is reached through someone else's
			// link: it is not what deploy wrote. Leave it, and forget it.
			a.opts.logf("not removing %s: %v", p, err)
		} else if err != nil {
			return fmt.Errorf("remove %q: %w", p, err)
		}
		if removed {
			a.opts.logf("removed %s", p)
		}
		if err := a.disown(p); err != nil {
			return err
		}
	}
	return nil
}

// remove removes the file or symlink p, relative to its directory opened
// without following symlinks. A missing p (or parent) is not an error; a
// directory is left alone.
func (a *applier) remove(p string) (bool, error) {
	pfd, name, err := openParent(p, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(pfd)
	st, err := lstatAt(pfd, name)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		a.opts.logf("not removing %q: it is a directory now", p)
		return false, nil
	}
	if err := unix.Unlinkat(pfd, name, 0); err != nil {
		return false, err
	}
	unix.Fsync(pfd)
	return true, nil
}

// lookupAt opens path's parent directory (not creating it, never through a
// symlink) and lstats path in it. pfd is -1 when the parent does not exist,
// st nil when path does not; the caller closes pfd. A directory in the way
// is an error: a file or symlink never replaces one.
func lookupAt(path string) (pfd int, name string, st *unix.Stat_t, err error) {
	pfd, name, err = openParent(path, false)
	if errors.Is(err, unix.ENOENT) {
		return -1, name, nil, nil
	}
	if err != nil {
		return -1, "", nil, err
	}
	st, err = lstatAt(pfd, name)
	switch {
	case errors.Is(err, unix.ENOENT):
		return pfd, name, nil, nil
	case err != nil:
		unix.Close(pfd)
		return -1, "", nil, err
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		unix.Close(pfd)
		return -1, "", nil, errors.New("a directory is in the way")
	}
	return pfd, name, st, nil
}

// installFile writes path atomically with src's content: a private temp
// file in the same directory (opened without following symlinks, see
// openDir) gets its owner and mode first, then the content, fsync, rename
// over path, fsync of the directory.
func (a *applier) installFile(path, src, owner, group, modeStr string, mayReplace bool) error {
	uid, gid, err := lookupIDs(owner, group)
	if err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	mode, err := parseMode(modeStr)
	if err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	content, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("file %q: source: %w", path, err)
	}
	pfd, name, st, err := lookupAt(path)
	if err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	if pfd >= 0 {
		defer unix.Close(pfd)
	}
	if st != nil && st.Mode&unix.S_IFMT == unix.S_IFREG && int(st.Uid) == uid && int(st.Gid) == gid && st.Mode&0o7777 == mode {
		if cur, err := readFileAt(pfd, name); err == nil && bytes.Equal(cur, content) {
			return nil // already in place
		}
	}
	if exists := st != nil; exists && !mayReplace {
		return &UnmanagedError{Path: path}
	}
	if err := a.own(path); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	if pfd < 0 {
		if pfd, name, err = openParent(path, true); err != nil {
			return fmt.Errorf("file %q: %w", path, err)
		}
		defer unix.Close(pfd)
	}
	tmp := ".deploy-tmp-" + name + "-" + randHex(6)
	if len(tmp) > 255 {
		tmp = ".deploy-tmp-" + randHex(12)
	}
	fd, err := unix.Openat(pfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			unix.Unlinkat(pfd, tmp, 0)
		}
	}()
	if err := f.Chown(uid, gid); err != nil {
		return fmt.Errorf("file %q: chown: %w", path, err)
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("file %q: chmod: %w", path, err)
	}
	if _, err := f.Write(content); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	if err := unix.Renameat(pfd, tmp, pfd, name); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	ok = true
	a.opts.logf("file %s", path)
	if err := unix.Fsync(pfd); err != nil {
		return fmt.Errorf("file %q: sync directory: %w", path, err)
	}
	return nil
}

func (a *applier) installSymlink(path, target string, mayReplace bool) error {
	pfd, name, st, err := lookupAt(path)
	if err != nil {
		return fmt.Errorf("symlink %q: %w", path, err)
	}
	if pfd >= 0 {
		defer unix.Close(pfd)
	}
	if st != nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if cur, err := readlinkat(pfd, name); err == nil && cur == target {
			return nil
		}
	}
	if exists := st != nil; exists && !mayReplace {
		return &UnmanagedError{Path: path}
	}
	if err := a.own(path); err != nil {
		return fmt.Errorf("symlink %q: %w", path, err)
	}
	if pfd < 0 {
		if pfd, name, err = openParent(path, true); err != nil {
			return fmt.Errorf("symlink %q: %w", path, err)
		}
		defer unix.Close(pfd)
	}
	tmp := ".deploy-tmp-" + randHex(12)
	if err := unix.Symlinkat(target, pfd, tmp); err != nil {
		return fmt.Errorf("symlink %q: %w", path, err)
	}
	if err := unix.Renameat(pfd, tmp, pfd, name); err != nil {
		unix.Unlinkat(pfd, tmp, 0)
		return fmt.Errorf("symlink %q: %w", path, err)
	}
	if err := unix.Fsync(pfd); err != nil {
		return fmt.Errorf("symlink %q: sync directory: %w", path, err)
	}
	a.opts.logf("symlink %s -> %s", path, target)
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
