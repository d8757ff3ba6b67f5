package imageroot

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// EntryError is a layer entry that was refused.
type EntryError struct {
	// Layer names the layer ("layer 2 (sha256:...)").
	Layer string
	// Entry is the entry's name as the layer spells it.
	Entry string
	// Reason says what is wrong with it.
	Reason string
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("%s: entry %q: %s", e.Layer, e.Entry, e.Reason)
}

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// ApplyLayer applies the layer read from r (a tar stream, compressed with
// gzip or zstd or not) to the directory root, named name in errors. It
// returns the entries it skipped (device nodes under /dev, tar entry types
// that hold no file), each as "ENTRY: why".
func ApplyLayer(root *os.File, r io.Reader, name string) (skipped []string, err error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head, _ := br.Peek(4)
	var tr io.Reader = br
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		defer z.Close()
		tr = z
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		z, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		defer z.Close()
		tr = z
	}
	a := &applier{root: int(root.Fd()), name: name, created: map[string]bool{}}
	t := tar.NewReader(tr)
	for {
		hdr, err := t.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.skipped, fmt.Errorf("%s: %w", name, err)
		}
		if err := a.entry(t, hdr); err != nil {
			return a.skipped, err
		}
	}
	// Drain what follows the end-of-archive marker, so a reader that
	// hashes the stream sees all of it.
	if _, err := io.Copy(io.Discard, tr); err != nil {
		return a.skipped, fmt.Errorf("%s: %w", name, err)
	}
	return a.skipped, nil
}

// applier applies one layer.
type applier struct {
	root    int
	name    string
	created map[string]bool // clean relative paths this layer made
	skipped []string
}

func (a *applier) refuse(entry, format string, args ...any) error {
	return &EntryError{Layer: a.name, Entry: entry, Reason: fmt.Sprintf(format, args...)}
}

// clean returns the entry's name relative to the root ("." for the root),
// or false when it leaves the root.
func clean(name string) (string, bool) {
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", false
	}
	return p, true
}

func (a *applier) entry(tr *tar.Reader, hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil
	}
	p, ok := clean(hdr.Name)
	if !ok {
		return a.refuse(hdr.Name, "the name leaves the root")
	}
	if p == "." {
		if hdr.Typeflag != tar.TypeDir {
			return a.refuse(hdr.Name, "the root is not a directory")
		}
		if err := a.meta(a.root, hdr); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		return nil
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	switch {
	case base == opaqueMarker:
		fd, err := a.openDir(dir, true)
		if err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		defer unix.Close(fd)
		if err := a.pruneLower(fd, dir); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		return nil
	case strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix):
		a.skipped = append(a.skipped, hdr.Name+": an AUFS metadata entry")
		return nil
	case strings.HasPrefix(base, whiteoutPrefix):
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target == "" || target == "." || target == ".." {
			return a.refuse(hdr.Name, "a whiteout of nothing")
		}
		fd, err := a.openDir(dir, false)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil
		}
		if err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		defer unix.Close(fd)
		tp := join(dir, target)
		if a.created[tp] {
			// Made by this layer: only what lower layers put below it goes.
			sub, err := unix.Openat(fd, target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil
			}
			defer unix.Close(sub)
			return a.pruneLower(sub, tp)
		}
		if err := removeAt(fd, target); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		return nil
	}

	if (hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock) && (p == "dev" || strings.HasPrefix(p, "dev/")) {
		a.skipped = append(a.skipped, hdr.Name+": a device node under /dev, where the service's own /dev is mounted")
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
	case tar.TypeChar, tar.TypeBlock:
		return a.refuse(hdr.Name, "a device node outside /dev")
	default:
		a.skipped = append(a.skipped, fmt.Sprintf("%s: tar entry type %q", hdr.Name, hdr.Typeflag))
		return nil
	}

	fd, err := a.openDir(dir, true)
	if err != nil {
		return a.refuse(hdr.Name, "%v", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	exists := unix.Fstatat(fd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	if hdr.Typeflag == tar.TypeDir && exists && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		// A directory over a directory merges: only its metadata changes.
		a.created[p] = true
		return a.metaAt(fd, base, hdr)
	}
	if hdr.Typeflag == tar.TypeLink {
		// Resolve the target before anything at p goes: it may be p.
		return a.hardlink(fd, base, p, hdr, exists)
	}
	if exists {
		if err := removeAt(fd, base); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(fd, base, 0o700); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
	case tar.TypeReg:
		f, err := unix.Openat(fd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		file := os.NewFile(uintptr(f), base)
		n, err := io.Copy(file, tr)
		if err == nil && n != hdr.Size {
			err = fmt.Errorf("%d of %d bytes", n, hdr.Size)
		}
		if err == nil {
			err = a.meta(f, hdr)
		}
		if cerr := file.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		a.created[p] = true
		return a.times(fd, base, hdr)
	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return a.refuse(hdr.Name, "a symbolic link to nothing")
		}
		if err := unix.Symlinkat(hdr.Linkname, fd, base); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		if err := unix.Fchownat(fd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
		a.created[p] = true
		return a.times(fd, base, hdr)
	case tar.TypeFifo:
		if err := unix.Mknodat(fd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
	}
	a.created[p] = true
	return a.metaAt(fd, base, hdr)
}

// metaAt sets owner, mode, xattrs and time of the directory or FIFO base.
func (a *applier) metaAt(dirfd int, base string, hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeFifo {
		// Opening a FIFO would block: set it by name, in a directory only
		// this realization writes to.
		if err := unix.Fchownat(dirfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return a.refuse(hdr.Name, "chown: %v", err)
		}
		if err := unix.Fchmodat(dirfd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
			return a.refuse(hdr.Name, "chmod: %v", err)
		}
		return a.times(dirfd, base, hdr)
	}
	f, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return a.refuse(hdr.Name, "%v", err)
	}
	defer unix.Close(f)
	if err := a.meta(f, hdr); err != nil {
		return a.refuse(hdr.Name, "%v", err)
	}
	return nil // a directory's time changes as entries land in it
}

// meta sets the owner, then the mode, then the xattrs of the open file or
// directory fd. An xattr the file system does not support is skipped (and
// listed), as container runtimes do, but for security.capability, without
// which the program would not run as the image says.
func (a *applier) meta(fd int, hdr *tar.Header) error {
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&0o7777)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || name == "security.selinux" {
			continue
		}
		if err := unix.Fsetxattr(fd, name, []byte(v), 0); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) && name != "security.capability" {
				a.skipped = append(a.skipped, fmt.Sprintf("%s: xattr %s: %v", hdr.Name, name, err))
				continue
			}
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	return nil
}

// times sets the modification (and access) time of base, not following a
// symbolic link.
func (a *applier) times(dirfd int, base string, hdr *tar.Header) error {
	mt := unix.NsecToTimespec(hdr.ModTime.UnixNano())
	if hdr.ModTime.IsZero() {
		return nil
	}
	if err := unix.UtimesNanoAt(dirfd, base, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return a.refuse(hdr.Name, "setting its time: %v", err)
	}
	return nil
}

// hardlink makes base (p) a hard link to the entry's target.
func (a *applier) hardlink(fd int, base, p string, hdr *tar.Header, exists bool) error {
	tp, ok := clean(hdr.Linkname)
	if !ok || tp == "." {
		return a.refuse(hdr.Name, "a hard link to %q, outside the root", hdr.Linkname)
	}
	if tp == p {
		return a.refuse(hdr.Name, "a hard link to itself")
	}
	tdir, tbase := path.Split(tp)
	tdir = strings.TrimSuffix(tdir, "/")
	if tdir == "" {
		tdir = "."
	}
	tfd, err := a.openDir(tdir, false)
	if err != nil {
		return a.refuse(hdr.Name, "a hard link to %q: %v", hdr.Linkname, err)
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return a.refuse(hdr.Name, "a hard link to %q: %v", hdr.Linkname, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return a.refuse(hdr.Name, "a hard link to the directory %q", hdr.Linkname)
	}
	if exists {
		if err := removeAt(fd, base); err != nil {
			return a.refuse(hdr.Name, "%v", err)
		}
	}
	if err := unix.Linkat(tfd, tbase, fd, base, 0); err != nil {
		return a.refuse(hdr.Name, "a hard link to %q: %v", hdr.Linkname, err)
	}
	a.created[p] = true
	return nil
}

// openHow resolves every path inside the root.
var openHow = unix.OpenHow{
	Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
	Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
}

// openDir opens the directory p (relative to the root; symbolic links
// resolved inside it), making the missing ones (root-owned, 0755) when
// create is set.
func (a *applier) openDir(p string, create bool) (int, error) {
	return a.openDirDepth(p, create, 0)
}

func (a *applier) openDirDepth(p string, create bool, links int) (int, error) {
	fd, err := unix.Openat2(a.root, p, &openHow)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	// Make it component by component, each resolved inside the root.
	parent, err := unix.Openat2(a.root, ".", &openHow)
	if err != nil {
		return -1, err
	}
	comps := strings.Split(p, "/")
	sofar := "."
	for i, c := range comps {
		prev := sofar
		sofar = join(sofar, c)
		next, err := unix.Openat2(a.root, sofar, &openHow)
		if errors.Is(err, unix.ENOENT) {
			err = unix.Mkdirat(parent, c, 0o755)
			if errors.Is(err, unix.EEXIST) {
				// A symbolic link to a missing directory: make its
				// target, inside the root, as a runtime does.
				target, rerr := readlinkAt(parent, c)
				unix.Close(parent)
				if rerr != nil || links >= 40 {
					return -1, fmt.Errorf("%s: %w", sofar, unix.ENOENT)
				}
				if !strings.HasPrefix(target, "/") {
					target = join(prev, target)
				}
				rest := strings.Join(append([]string{target}, comps[i+1:]...), "/")
				return a.openDirDepth(inRoot(rest), true, links+1)
			}
			if err != nil {
				unix.Close(parent)
				return -1, err
			}
			next, err = unix.Openat2(a.root, sofar, &openHow)
		}
		unix.Close(parent)
		if err != nil {
			return -1, fmt.Errorf("%s: %w", sofar, err)
		}
		parent = next
	}
	return parent, nil
}

// inRoot cleans p the way it resolves when the root is "/": ".." at the
// root stays there.
func inRoot(p string) string {
	var stack []string
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".":
		case "..":
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		default:
			stack = append(stack, c)
		}
	}
	if len(stack) == 0 {
		return "."
	}
	return strings.Join(stack, "/")
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// pruneLower removes below the open directory fd (at p) what this layer did
// not make, descending into what it made.
func (a *applier) pruneLower(fd int, p string) error {
	names, err := readNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		cp := join(p, n)
		if !a.created[cp] {
			if err := removeAt(fd, n); err != nil {
				return err
			}
			continue
		}
		sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // not a directory
		}
		err = a.pruneLower(sub, cp)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

func join(dir, name string) string {
	if dir == "." || dir == "" {
		return name
	}
	return dir + "/" + name
}

// readNames lists the open directory fd.
func readNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeAt removes name (a whole tree if it is a directory) from the open
// directory dirfd, following no symbolic link; a missing name is no error.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	sub, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readNames(sub)
	if err == nil {
		for _, n := range names {
			if err = removeAt(sub, n); err != nil {
				break
			}
		}
	}
	unix.Close(sub)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
