package unpack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/limits"
)

type nodeType uint8

const (
	typeDir nodeType = iota
	typeFile
	typeSymlink
)

// node is one entry of a [Tree].
type node struct {
	typ    nodeType
	exec   bool
	target string // symlink
	// off and size locate a regular file's contents in the spool.
	off, size int64
	children  map[string]*node // directory
	// gen is the application (layer) that made or last declared the node;
	// touched is the latest application that made or declared it or
	// anything below it. Whiteouts remove only what earlier applications
	// made.
	gen, touched int
}

func newDir(gen int) *node {
	return &node{typ: typeDir, children: map[string]*node{}, gen: gen, touched: gen}
}

// Tree is a file tree in memory; regular files' contents are in a spool
// file. The zero value is not usable: use [NewTree], and Close the tree
// when done.
type Tree struct {
	root  *node
	spool *os.File
	end   int64
	gen   int
	// Skipped lists the entries left out of the tree (device nodes and
	// FIFOs of OCI layers), each as "ARCHIVE: ENTRY: why".
	Skipped []string

	// MaxBytes bounds the bytes the archives applied to the tree may
	// unpack to, together (the sizes their entries declare, whether kept,
	// replaced or skipped; default 8 GiB); MaxEntries bounds their entries
	// (default 1,000,000). An archive past either is refused with a
	// *limits.TooLargeError when the entry that crosses it is read, before
	// its contents are: a decompression bomb is cut off. Settings says how
	// to raise them, in errors ("in package \"web\"": max_size and
	// max_entries).
	MaxBytes   int64
	MaxEntries int64
	Settings   string
	bytes      int64
	entries    int64
}

// NewTree returns an empty tree (a directory) whose file contents are
// spooled to an unnamed file in tmpDir.
func NewTree(tmpDir string) (*Tree, error) {
	f, err := os.CreateTemp(tmpDir, ".unpack-spool-")
	if err != nil {
		return nil, fmt.Errorf("unpack: spool: %w", err)
	}
	// Unlinked at once: nothing is left behind, whatever happens.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unpack: spool: %w", err)
	}
	return &Tree{root: newDir(0), spool: f}, nil
}

// Close releases the spool.
func (t *Tree) Close() error { return t.spool.Close() }

// SpoolSize is how many bytes of file contents the tree has spooled,
// including contents that later entries replaced or removed.
func (t *Tree) SpoolSize() int64 { return t.end }

// count counts an entry of archive that declares size bytes against the
// tree's limits.
func (t *Tree) count(archive, entry string, size int64) error {
	maxBytes, maxEntries := t.MaxBytes, t.MaxEntries
	if maxBytes <= 0 {
		maxBytes = limits.DefaultUnpacked
	}
	if maxEntries <= 0 {
		maxEntries = limits.DefaultEntries
	}
	setting := func(name string) string {
		if t.Settings == "" {
			return ""
		}
		return name + " " + t.Settings
	}
	t.entries++
	if t.entries > maxEntries {
		return &limits.TooLargeError{Object: archive, What: "entries", Limit: maxEntries, Setting: setting("max_entries")}
	}
	if size < 0 || t.bytes+size > maxBytes || t.bytes+size < t.bytes {
		return &limits.TooLargeError{Object: fmt.Sprintf("%s (at entry %q)", archive, entry), Limit: maxBytes, Got: t.bytes + size, Setting: setting("max_size")}
	}
	t.bytes += size
	return nil
}

// spoolFrom appends r's bytes (exactly size of them) to the spool.
func (t *Tree) spoolFrom(r io.Reader, size int64) (int64, error) {
	off := t.end
	w := io.NewOffsetWriter(t.spool, off)
	n, err := io.Copy(w, io.LimitReader(r, size))
	if err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("contents end after %d of %d bytes", n, size)
	}
	t.end += n
	return off, nil
}

// EntryError is an archive entry that was refused.
type EntryError struct {
	// Archive names the archive (a URL, "layer 2 (sha256:...)").
	Archive string
	// Entry is the entry's name as the archive spells it.
	Entry string
	// Reason says what is wrong with it.
	Reason string
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("%s: entry %q: %s", e.Archive, e.Entry, e.Reason)
}

// Options says how an archive is applied to a tree.
type Options struct {
	// Dir is the directory of the tree (slash-separated, relative) that
	// the archive's root goes into; "" is the tree's root. It is created
	// when missing. Symbolic links of a layer resolve inside it.
	Dir string
	// StripComponents drops this many leading components of every name
	// (and hard link target); entries with no more components are left
	// out, as tar --strip-components does.
	StripComponents int
	// Layer applies the archive as an OCI image layer: whiteouts count and
	// the lenient policy of the package documentation applies.
	Layer bool
	// Name names the archive in errors.
	Name string
}

// applier applies the entries of one archive.
type applier struct {
	t    *Tree
	base *node
	opt  Options
}

func (t *Tree) begin(opt Options) (*applier, error) {
	t.gen++
	base := t.root
	if opt.Dir != "" {
		for _, c := range strings.Split(opt.Dir, "/") {
			if err := nar.CheckName(c); err != nil {
				return nil, fmt.Errorf("unpack: directory %q: %w", opt.Dir, err)
			}
			next, ok := base.children[c]
			if !ok {
				next = newDir(t.gen)
				base.children[c] = next
			}
			if next.typ != typeDir {
				return nil, fmt.Errorf("unpack: %q is not a directory", opt.Dir)
			}
			base = next
		}
	}
	if opt.Name == "" {
		opt.Name = "archive"
	}
	return &applier{t: t, base: base, opt: opt}, nil
}

func (a *applier) refuse(entry, format string, args ...any) error {
	return &EntryError{Archive: a.opt.Name, Entry: entry, Reason: fmt.Sprintf(format, args...)}
}

func (a *applier) skip(entry, why string) {
	a.t.Skipped = append(a.t.Skipped, fmt.Sprintf("%s: %s: %s", a.opt.Name, entry, why))
}

// split cleans an entry name into components below the archive's root. An
// empty result with ok is the root itself; !ok with a nil error means the
// entry is stripped away.
func (a *applier) split(name string) (parts []string, ok bool, err error) {
	p := name
	if strings.HasPrefix(p, "/") {
		if !a.opt.Layer {
			return nil, false, a.refuse(name, "the name is absolute; an archive may only hold relative names")
		}
		p = strings.TrimLeft(p, "/")
	}
	p = path.Clean(p)
	if p == ".." || strings.HasPrefix(p, "../") {
		return nil, false, a.refuse(name, "the name leaves the archive's root")
	}
	if p == "." {
		parts = nil
	} else {
		parts = strings.Split(p, "/")
	}
	if a.opt.StripComponents > 0 {
		if len(parts) <= a.opt.StripComponents {
			return nil, false, nil
		}
		parts = parts[a.opt.StripComponents:]
	}
	for _, c := range parts {
		if err := nar.CheckName(c); err != nil {
			return nil, false, a.refuse(name, "%v", err)
		}
	}
	return parts, true, nil
}

// resolve follows the path parts from the archive's root, resolving every
// symbolic link inside the root (an absolute target starts at the root,
// ".." stops there), and returns the node it names or nil. With
// followLast false a final symbolic link is returned as is; with create,
// missing directories are made on the way (mkdir -p inside the root).
func (a *applier) resolve(parts []string, followLast, create bool) (*node, error) {
	stack := []*node{a.base}
	comps := slices.Clone(parts)
	links := 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := stack[len(stack)-1]
		if cur.typ != typeDir {
			return nil, nil
		}
		child, ok := cur.children[c]
		if !ok {
			if !create {
				return nil, nil
			}
			child = newDir(a.t.gen)
			cur.children[c] = child
		}
		if child.typ == typeSymlink && (followLast || len(comps) > 0) {
			if links++; links > 40 {
				return nil, errors.New("too many levels of symbolic links")
			}
			if strings.HasPrefix(child.target, "/") {
				stack = stack[:1]
			}
			comps = append(strings.Split(child.target, "/"), comps...)
			continue
		}
		stack = append(stack, child)
	}
	return stack[len(stack)-1], nil
}

// parent returns the directory that holds the entry parts, creating
// missing directories on the way.
func (a *applier) parent(entry string, parts []string) (*node, error) {
	cur := a.base
	cur.touched = a.t.gen
	for i, c := range parts[:len(parts)-1] {
		child, ok := cur.children[c]
		switch {
		case !ok:
			child = newDir(a.t.gen)
			cur.children[c] = child
		case child.typ == typeSymlink:
			if !a.opt.Layer {
				return nil, a.refuse(entry, "it is below the symbolic link %q", strings.Join(parts[:i+1], "/"))
			}
			dir, err := a.resolve(parts[:i+1], true, true)
			if err != nil {
				return nil, a.refuse(entry, "resolving %q: %v", strings.Join(parts[:i+1], "/"), err)
			}
			if dir == nil || dir.typ != typeDir {
				return nil, a.refuse(entry, "its parent %q is a symbolic link to no directory inside the root", strings.Join(parts[:i+1], "/"))
			}
			child = dir
		case child.typ != typeDir:
			return nil, a.refuse(entry, "its parent %q is not a directory", strings.Join(parts[:i+1], "/"))
		}
		child.touched = a.t.gen
		cur = child
	}
	return cur, nil
}

// whiteout prefixes of OCI layers.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
)

// prune removes what earlier applications made below dir, keeping what
// this one made.
func (a *applier) prune(dir *node) {
	for name, c := range dir.children {
		if c.touched < a.t.gen {
			delete(dir.children, name)
		} else if c.typ == typeDir {
			a.prune(c)
		}
	}
}

// put places n at parts (an entry of the archive), replacing what is
// there, unless it is a whiteout.
func (a *applier) put(entry string, parts []string, n *node) error {
	if len(parts) == 0 {
		if n.typ != typeDir {
			return a.refuse(entry, "the archive's root must be a directory")
		}
		return nil
	}
	name := parts[len(parts)-1]
	if a.opt.Layer && strings.HasPrefix(name, whiteoutPrefix) {
		// A whiteout makes nothing: in a directory that does not exist
		// there is nothing to hide.
		dir, err := a.resolve(parts[:len(parts)-1], true, false)
		if err != nil || dir == nil || dir.typ != typeDir {
			return nil
		}
		if name == opaqueWhiteout {
			a.prune(dir)
			return nil
		}
		victim := strings.TrimPrefix(name, whiteoutPrefix)
		if old, ok := dir.children[victim]; ok {
			if old.touched < a.t.gen {
				delete(dir.children, victim)
			} else if old.typ == typeDir {
				a.prune(old)
			}
		}
		return nil
	}
	dir, err := a.parent(entry, parts)
	if err != nil {
		return err
	}
	n.gen, n.touched = a.t.gen, a.t.gen
	if old, ok := dir.children[name]; ok && old.typ == typeDir && n.typ == typeDir {
		old.gen, old.touched = a.t.gen, a.t.gen
		return nil
	}
	dir.children[name] = n
	return nil
}

// link returns a copy of the node that a hard link entry points to.
func (a *applier) link(entry, target string) (*node, error) {
	parts, ok, err := a.split(target)
	if err != nil {
		var ee *EntryError
		if errors.As(err, &ee) {
			return nil, a.refuse(entry, "hard link to %q, outside the archive", target)
		}
		return nil, err
	}
	if !ok || len(parts) == 0 {
		return nil, a.refuse(entry, "hard link to %q, which is not a file of the archive", target)
	}
	if !a.opt.Layer {
		// Strict: no link may go through a symbolic link.
		cur := a.base
		for i, c := range parts[:len(parts)-1] {
			next, ok := cur.children[c]
			if !ok || next.typ != typeDir {
				return nil, a.refuse(entry, "hard link to %q, which is not a file of the archive (%q is no directory)", target, strings.Join(parts[:i+1], "/"))
			}
			cur = next
		}
	}
	n, err := a.resolve(parts, false, false)
	if err != nil {
		return nil, a.refuse(entry, "hard link to %q: %v", target, err)
	}
	if n == nil || n.typ == typeDir {
		return nil, a.refuse(entry, "hard link to %q, which is not a file of the archive before this entry", target)
	}
	c := *n
	c.children = nil
	return &c, nil
}

// Lookup reports what the tree holds at p (slash-separated, relative to the
// tree's root, no symbolic links followed): "directory", "file",
// "executable", "symlink", or "" for nothing.
func (t *Tree) Lookup(p string) string {
	n := t.root
	if p != "" && p != "." {
		for _, c := range strings.Split(path.Clean(p), "/") {
			if n.typ != typeDir {
				return ""
			}
			var ok bool
			if n, ok = n.children[c]; !ok {
				return ""
			}
		}
	}
	switch {
	case n.typ == typeDir:
		return "directory"
	case n.typ == typeSymlink:
		return "symlink"
	case n.exec:
		return "executable"
	}
	return "file"
}

// Empty reports whether the tree's root directory has no entries.
func (t *Tree) Empty() bool { return len(t.root.children) == 0 }

// ReadFile returns the contents of the regular file at p (see Lookup), up
// to max bytes.
func (t *Tree) ReadFile(p string, max int64) ([]byte, error) {
	n := t.root
	for _, c := range strings.Split(path.Clean(p), "/") {
		if n.typ != typeDir || n.children[c] == nil {
			return nil, fmt.Errorf("unpack: %q: no such file", p)
		}
		n = n.children[c]
	}
	if n.typ != typeFile {
		return nil, fmt.Errorf("unpack: %q is not a regular file", p)
	}
	if n.size > max {
		return nil, fmt.Errorf("unpack: %q is larger than %d bytes", p, max)
	}
	buf := make([]byte, n.size)
	if _, err := t.spool.ReadAt(buf, n.off); err != nil && !(errors.Is(err, io.EOF) && n.size == 0) {
		return nil, fmt.Errorf("unpack: reading %q: %w", p, err)
	}
	return buf, nil
}

// place returns the directory node at p, creating missing directories; an
// existing non-directory there is an error.
func (t *Tree) place(p string) (*node, string, error) {
	parts := strings.Split(path.Clean(p), "/")
	for _, c := range parts {
		if err := nar.CheckName(c); err != nil {
			return nil, "", fmt.Errorf("unpack: %q: %w", p, err)
		}
	}
	cur := t.root
	for i, c := range parts[:len(parts)-1] {
		next, ok := cur.children[c]
		if !ok {
			next = newDir(t.gen)
			cur.children[c] = next
		}
		if next.typ != typeDir {
			return nil, "", fmt.Errorf("unpack: %q is not a directory", strings.Join(parts[:i+1], "/"))
		}
		cur = next
	}
	return cur, parts[len(parts)-1], nil
}

// Mkdir makes the directory p (and its parents) unless p is already a
// directory; anything else at p is replaced.
func (t *Tree) Mkdir(p string) error {
	dir, name, err := t.place(p)
	if err != nil {
		return err
	}
	if old, ok := dir.children[name]; ok && old.typ == typeDir {
		return nil
	}
	dir.children[name] = newDir(t.gen)
	return nil
}

// WriteFile makes p a regular file with the given contents, replacing
// whatever is there.
func (t *Tree) WriteFile(p string, data []byte, executable bool) error {
	dir, name, err := t.place(p)
	if err != nil {
		return err
	}
	off, err := t.spoolFrom(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return fmt.Errorf("unpack: spool: %w", err)
	}
	dir.children[name] = &node{typ: typeFile, exec: executable, off: off, size: int64(len(data)), gen: t.gen, touched: t.gen}
	return nil
}

// WriteNAR writes the tree as a NAR (the format of package closure/nar). It
// fails, naming the path, on what a NAR cannot hold: nesting deeper than
// nar.MaxDepth.
func (t *Tree) WriteNAR(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	nw := &narWriter{w: bw, spool: t.spool}
	nw.str(nar.Magic)
	if err := nw.node(t.root, "", 0); err != nil {
		return err
	}
	if nw.err != nil {
		return nw.err
	}
	return bw.Flush()
}

type narWriter struct {
	w     *bufio.Writer
	spool *os.File
	err   error
	buf   [8]byte
}

func (nw *narWriter) u64(n uint64) {
	if nw.err != nil {
		return
	}
	binary.LittleEndian.PutUint64(nw.buf[:], n)
	_, nw.err = nw.w.Write(nw.buf[:])
}

func (nw *narWriter) pad(n uint64) {
	if nw.err == nil && n%8 != 0 {
		var zero [8]byte
		_, nw.err = nw.w.Write(zero[:8-n%8])
	}
}

func (nw *narWriter) str(s string) {
	nw.u64(uint64(len(s)))
	if nw.err == nil {
		_, nw.err = nw.w.WriteString(s)
	}
	nw.pad(uint64(len(s)))
}

func (nw *narWriter) node(n *node, p string, depth int) error {
	if depth >= nar.MaxDepth {
		return fmt.Errorf("unpack: %q is nested %d directories deep; a store path holds at most %d", p, depth, nar.MaxDepth-1)
	}
	nw.str("(")
	nw.str("type")
	switch n.typ {
	case typeDir:
		nw.str("directory")
		names := make([]string, 0, len(n.children))
		for name := range n.children {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			nw.str("entry")
			nw.str("(")
			nw.str("name")
			nw.str(name)
			nw.str("node")
			if err := nw.node(n.children[name], path.Join(p, name), depth+1); err != nil {
				return err
			}
			nw.str(")")
		}
	case typeSymlink:
		nw.str("symlink")
		nw.str("target")
		nw.str(n.target)
	case typeFile:
		nw.str("regular")
		if n.exec {
			nw.str("executable")
			nw.str("")
		}
		nw.str("contents")
		nw.u64(uint64(n.size))
		if nw.err == nil {
			var m int64
			m, nw.err = io.Copy(nw.w, io.NewSectionReader(nw.spool, n.off, n.size))
			if nw.err == nil && m != n.size {
				nw.err = fmt.Errorf("unpack: spool of %q is short", p)
			}
		}
		nw.pad(uint64(n.size))
	}
	nw.str(")")
	return nw.err
}

type countingHash struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (c *countingHash) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return c.h.Write(b)
}

// AddToStore adds the tree to s as a content-addressed path with the given
// name and references (which must be valid). The NAR is generated twice,
// once to hash it and once into the store's import, so nothing but the
// spool is written besides the store path itself. Adding a tree already
// present changes nothing.
func (t *Tree) AddToStore(ctx context.Context, s *closure.Store, name string, refs []string) (*closure.PathInfo, error) {
	ch := &countingHash{h: sha256.New()}
	if err := t.WriteNAR(ch); err != nil {
		return nil, err
	}
	var sum [32]byte
	copy(sum[:], ch.h.Sum(nil))
	refs = slices.Compact(slices.Sorted(slices.Values(refs)))
	p, err := closure.MakeSourcePath(s.StoreDir, sum, name, refs)
	if err != nil {
		return nil, err
	}
	if ok, err := s.Valid(p); err != nil {
		return nil, err
	} else if ok {
		return s.Info(p)
	}
	pi := &closure.PathInfo{Path: p, NarHash: sum, NarSize: ch.n, References: refs}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(t.WriteNAR(pw)) }()
	err = s.Import(ctx, pr, pi)
	pr.CloseWithError(errors.New("import finished"))
	if err != nil {
		return nil, err
	}
	return pi, nil
}
