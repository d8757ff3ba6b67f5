package activation

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/declarative/deploy/internal/atomicfile"
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
		if err := os.MkdirAll(d.Path, 0o755); err != nil {
			return fmt.Errorf("directory %q: %w", d.Path, err)
		}
		fi, err := os.Lstat(d.Path)
		if err != nil {
			return fmt.Errorf("directory %q: %w", d.Path, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("directory %q: exists and is not a directory", d.Path)
		}
		if err := os.Lchown(d.Path, uid, gid); err != nil {
			return fmt.Errorf("directory %q: %w", d.Path, err)
		}
		if err := syscall.Chmod(d.Path, mode); err != nil {
			return fmt.Errorf("directory %q: chmod: %w", d.Path, err)
		}
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
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("remove %q: %w", p, err)
		}
		if fi.IsDir() {
			a.opts.logf("not removing %q: it is a directory now", p)
			continue
		}
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("remove %q: %w", p, err)
		}
		atomicfile.SyncDir(filepath.Dir(p))
		a.opts.logf("removed %s", p)
		if err := a.disown(p); err != nil {
			return err
		}
	}
	return nil
}

// installFile writes path atomically with src's content: a private temp
// file in the same directory gets its owner and mode first, then the
// content, fsync, rename over path, fsync of the directory.
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
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("file %q: %w", path, err)
	case fi.IsDir():
		return fmt.Errorf("file %q: a directory is in the way", path)
	default:
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().IsRegular() && int(st.Uid) == uid && int(st.Gid) == gid && st.Mode&0o7777 == mode {
			if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, content) {
				return nil // already in place
			}
		}
		if !mayReplace {
			return &UnmanagedError{Path: path}
		}
	}
	if err := a.own(path); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	tmp := filepath.Join(dir, ".deploy-tmp-"+filepath.Base(path)+"-"+randHex(6))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chown(uid, gid); err != nil {
		return fmt.Errorf("file %q: chown: %w", path, err)
	}
	if err := syscall.Fchmod(int(f.Fd()), mode); err != nil {
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
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("file %q: %w", path, err)
	}
	ok = true
	a.opts.logf("file %s", path)
	return atomicfile.SyncDir(dir)
}

func (a *applier) installSymlink(path, target string, mayReplace bool) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("symlink %q: %w", path, err)
	case fi.IsDir():
		return fmt.Errorf("symlink %q: a directory is in the way", path)
	default:
		if cur, err := os.Readlink(path); err == nil && cur == target {
			return nil
		}
		if !mayReplace {
			return &UnmanagedError{Path: path}
		}
	}
	if err := a.own(path); err != nil {
		return fmt.Errorf("symlink %q: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("symlink %q: %w", path, err)
	}
	if err := symlinkAtomic(target, path); err != nil {
		return err
	}
	a.opts.logf("symlink %s -> %s", path, target)
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
