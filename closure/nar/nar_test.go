package nar

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/declarative/deploy/internal/testenv"
)

// makeTree writes a tree exercising every rule of the format.
func makeTree(t testing.TB, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte(content), mode))
		must(os.Chmod(p, mode))
	}
	write("plain", "hello\n", 0o644)
	write("exec", "#!/bin/sh\necho hi\n", 0o755)
	write("user-exec-only", "x", 0o700)
	write("empty", "", 0o644)
	write("padded-7", "1234567", 0o644)
	write("padded-8", "12345678", 0o644)
	write("padded-9", "123456789", 0o644)
	write("sub/dir/file", strings.Repeat("abc", 10000), 0o600)
	// A sparse file above the size from which Dump skips holes: holes at
	// its start, in the middle and at its end.
	sp, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	must(sp.Truncate(3<<20 + 7))
	_, err = sp.WriteAt([]byte("island"), 1<<20+3)
	must(err)
	_, err = sp.WriteAt([]byte("shore"), 2<<20+4090)
	must(err)
	must(sp.Close())
	must(os.MkdirAll(filepath.Join(dir, "empty-dir"), 0o755))
	must(os.Symlink("plain", filepath.Join(dir, "rel-link")))
	must(os.Symlink("/etc/passwd", filepath.Join(dir, "abs-link")))
	must(os.Symlink("../does/not/exist", filepath.Join(dir, "dangling")))
	must(os.Symlink("sub", filepath.Join(dir, "dir-link")))
	// Unusual but legal names.
	for _, name := range []string{" space", "-dash", "tab\there", "new\nline", "ünïcödé", "UPPER", "a.b.c", "~tilde", strings.Repeat("n", 255), "\x01ctrl", "\xff"} {
		write(filepath.Join("names", name), name, 0o644)
	}
	// Deep nesting: the deepest node sits at depth MaxDepth-1.
	deep := dir
	for i := 0; i < MaxDepth-2; i++ {
		deep = filepath.Join(deep, "d")
	}
	must(os.MkdirAll(deep, 0o755))
	write(filepath.Join(strings.TrimPrefix(deep, dir), "leaf"), "deep", 0o644)
}

func dumpBytes(t testing.TB, path string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Dump(&b, path); err != nil {
		t.Fatalf("Dump(%q): %v", path, err)
	}
	return b.Bytes()
}

func TestDumpMatchesNix(t *testing.T) {
	nixStore := testenv.NeedTool(t, "nix-store", "nix-bin")
	dir := t.TempDir()
	makeTree(t, dir)
	cases := []string{dir, filepath.Join(dir, "plain"), filepath.Join(dir, "exec"), filepath.Join(dir, "empty"),
		filepath.Join(dir, "rel-link"), filepath.Join(dir, "empty-dir"), filepath.Join(dir, "names"), filepath.Join(dir, "d"),
		filepath.Join(dir, "sparse")}
	for _, p := range cases {
		t.Run(filepath.Base(p), func(t *testing.T) {
			want, err := exec.Command(nixStore, "--dump", p).Output()
			if err != nil {
				t.Fatalf("nix-store --dump %q: %v", p, err)
			}
			got := dumpBytes(t, p)
			if !bytes.Equal(got, want) {
				t.Fatalf("Dump(%q): sha256 %s (%d bytes), nix-store --dump: sha256 %s (%d bytes)",
					p, hash(got), len(got), hash(want), len(want))
			}
		})
	}
}

func hash(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestRestoreRoundTrip(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	want := dumpBytes(t, src)
	// Files are created with their final mode where the umask allows it
	// (see createMode); under a umask that would take bits off, and with
	// the umask unknown, they are chmodded after, so the modes are the
	// same in every case.
	type setup struct {
		sync  bool
		umask int // the process's umask for the restore; -1: unknown
	}
	for _, c := range []setup{{false, 0o022}, {true, 0o022}, {false, 0o077}, {false, -1}} {
		if c.umask >= 0 {
			old := syscall.Umask(c.umask)
			defer syscall.Umask(old)
		}
		oldUmask := umask
		umask = c.umask
		defer func() { umask = oldUmask }()
		dest := filepath.Join(t.TempDir(), "out")
		n, err := Restore(bytes.NewReader(want), dest, RestoreOptions{Sync: c.sync})
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if n != int64(len(want)) {
			t.Errorf("Restore returned size %d, want %d", n, len(want))
		}
		if got := dumpBytes(t, dest); !bytes.Equal(got, want) {
			t.Fatalf("dump(restore(dump(tree))) differs from dump(tree)")
		}
		for name, mode := range map[string]os.FileMode{"plain": 0o444, "exec": 0o555, "user-exec-only": 0o555, "sub": 0o555 | os.ModeDir} {
			fi, err := os.Lstat(filepath.Join(dest, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != mode {
				t.Errorf("%+v: mode of %q = %v, want %v", c, name, fi.Mode(), mode)
			}
		}
		if err := RemoveTree(dest); err != nil {
			t.Fatalf("RemoveTree: %v", err)
		}
		if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("RemoveTree left %q: %v", dest, err)
		}
	}
}

func TestRestoreSizedFraming(t *testing.T) {
	// Two archives back to back, each read with its exact size.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("one"), 0o644)
	a := dumpBytes(t, filepath.Join(dir, "f"))
	stream := bytes.NewReader(append(append([]byte{}, a...), a...))
	for i := 0; i < 2; i++ {
		dest := filepath.Join(t.TempDir(), "x")
		if _, err := Restore(stream, dest, RestoreOptions{Size: int64(len(a))}); err != nil {
			t.Fatalf("archive %d: %v", i, err)
		}
	}
	if stream.Len() != 0 {
		t.Fatalf("%d bytes left unread", stream.Len())
	}
	// A declared size smaller than the archive: truncated; larger: trailing.
	if _, err := Restore(bytes.NewReader(a), filepath.Join(t.TempDir(), "x"), RestoreOptions{Size: int64(len(a) - 8)}); err == nil {
		t.Error("Restore with a too-small size: no error")
	}
	padded := append(append([]byte{}, a...), make([]byte, 8)...)
	if _, err := Restore(bytes.NewReader(padded), filepath.Join(t.TempDir(), "x"), RestoreOptions{Size: int64(len(padded))}); !errors.Is(err, ErrTrailingData) {
		t.Errorf("Restore with a too-large size: %v, want ErrTrailingData", err)
	}
}

func TestDumpRejects(t *testing.T) {
	dir := t.TempDir()
	deep := dir
	for i := 0; i < MaxDepth; i++ {
		deep = filepath.Join(deep, "d")
	}
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Dump(&bytes.Buffer{}, dir); err == nil || !strings.Contains(err.Error(), "deeper") {
		t.Errorf("Dump of a tree %d deep: %v, want a depth error", MaxDepth, err)
	}
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscallMkfifo(fifo); err != nil {
		t.Skip(err)
	}
	if err := Dump(&bytes.Buffer{}, fifo); err == nil || !strings.Contains(err.Error(), fifo) {
		t.Errorf("Dump of a FIFO: %v, want an error naming it", err)
	}
}

// archive builds a NAR from tokens: a string is written as a NAR string,
// []byte is written raw.
func archive(tokens ...any) []byte {
	var b bytes.Buffer
	for _, tok := range tokens {
		switch v := tok.(type) {
		case string:
			var n [8]byte
			binary.LittleEndian.PutUint64(n[:], uint64(len(v)))
			b.Write(n[:])
			b.WriteString(v)
			if len(v)%8 != 0 {
				b.Write(make([]byte, 8-len(v)%8))
			}
		case []byte:
			b.Write(v)
		}
	}
	return b.Bytes()
}

func u64(n uint64) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	return b[:]
}

func file(content string) []any {
	return []any{"(", "type", "regular", "contents", content, ")"}
}

func dirOf(entries ...[]any) []any {
	out := []any{"(", "type", "directory"}
	for _, e := range entries {
		out = append(out, e...)
	}
	return append(out, ")")
}

func entry(name string, node []any) []any {
	return append(append([]any{"entry", "(", "name", name, "node"}, node...), ")")
}

func cat(parts ...[]any) []any {
	var out []any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func nested(depth int) []any {
	node := file("x")
	for i := 0; i < depth; i++ {
		node = dirOf(entry("d", node))
	}
	return node
}

// rejectionCases lists one archive for each rule the reader enforces.
func rejectionCases() []struct {
	name string
	nar  []byte
	want string
} {
	m := []any{Magic}
	return []struct {
		name string
		nar  []byte
		want string
	}{
		{"bad magic", archive(cat([]any{"nix-archive-2"}, file("x"))...), "magic"},
		{"empty input", nil, "truncated"},
		{"missing type", archive(cat(m, []any{"(", "regular", "contents", "x", ")"})...), "type"},
		{"unknown type", archive(cat(m, []any{"(", "type", "fifo", ")"})...), "unknown node type"},
		{"contents before executable", archive(cat(m, []any{"(", "type", "regular", "contents", "x", "executable", "", ")"})...), "node end"},
		{"non-empty executable marker", archive(cat(m, []any{"(", "type", "regular", "executable", "yes", "contents", "x", ")"})...), "executable marker"},
		{"executable twice", archive(cat(m, []any{"(", "type", "regular", "executable", "", "executable", "", "contents", "x", ")"})...), "regular file tag"},
		{"unsorted names", archive(cat(m, dirOf(entry("b", file("")), entry("a", file(""))))...), "not sorted"},
		{"duplicate names", archive(cat(m, dirOf(entry("a", file("")), entry("a", file(""))))...), "duplicate"},
		{"empty name", archive(cat(m, dirOf(entry("", file(""))))...), "empty name"},
		{"dot name", archive(cat(m, dirOf(entry(".", file(""))))...), "not allowed"},
		{"dotdot name", archive(cat(m, dirOf(entry("..", file(""))))...), "not allowed"},
		{"slash in name", archive(cat(m, dirOf(entry("a/b", file(""))))...), "contains"},
		{"NUL in name", archive(cat(m, dirOf(entry("a\x00b", file(""))))...), "contains"},
		{"name too long", archive(cat(m, dirOf(entry(strings.Repeat("n", 256), file(""))))...), "exceeds limit"},
		{"empty symlink target", archive(cat(m, []any{"(", "type", "symlink", "target", "", ")"})...), "empty symlink target"},
		{"NUL in symlink target", archive(cat(m, []any{"(", "type", "symlink", "target", "a\x00", ")"})...), "NUL"},
		{"symlink target too long", archive(cat(m, []any{"(", "type", "symlink", "target", strings.Repeat("t", 4096), ")"})...), "exceeds limit"},
		{"too deep", archive(cat(m, nested(MaxDepth))...), "deeper"},
		{"non-zero padding", append(archive(Magic, "(", "type", "regular", "contents"), append(u64(1), 'x', 0, 0, 1, 0, 0, 0, 0)...), "padding"},
		{"trailing garbage", archive(cat(m, file("x"), []any{"extra"})...), "trailing"},
		{"truncated contents", archive(Magic, "(", "type", "regular", "contents", u64(100), []byte("short")), "truncated"},
		{"huge name length", archive(Magic, "(", "type", "directory", "entry", "(", "name", u64(1<<62)), "exceeds limit"},
		{"huge tag length", archive(Magic, u64(1<<63)), "exceeds limit"},
		{"missing close", archive(Magic, "(", "type", "regular", "contents", "x"), "truncated"},
		{"entry without node tag", archive(cat(m, []any{"(", "type", "directory", "entry", "(", "name", "a", "(", "type"})...), "entry node tag"},
	}
}

func TestParseRejects(t *testing.T) {
	for _, tt := range rejectionCases() {
		t.Run(tt.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "out")
			_, err := Restore(bytes.NewReader(tt.nar), dest, RestoreOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Restore(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
			if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Restore(%s) left %q behind", tt.name, dest)
			}
		})
	}
}

func TestParseSizeLimitBeforeAllocation(t *testing.T) {
	// A contents length larger than the declared archive size is rejected
	// before any read of the contents.
	nar := archive(Magic, "(", "type", "regular", "contents", u64(1<<40))
	_, err := Parse(bytes.NewReader(nar), discardSink{}, Options{Size: int64(len(nar))})
	if err == nil || !strings.Contains(err.Error(), "bytes left") {
		t.Fatalf("Parse = %v, want a length-exceeds-remaining error", err)
	}
}

type discardSink struct{}

func (discardSink) Directory(string) error    { return nil }
func (discardSink) EndDirectory() error       { return nil }
func (discardSink) Symlink(_, _ string) error { return nil }
func (discardSink) File(_ string, _ bool, _ int64, _ io.Reader) error {
	return nil
}

func TestRestoreNeverFollowsSymlinks(t *testing.T) {
	// An archive whose root is a directory restored to a dest whose name is
	// a planted symlink: Mkdir fails instead of writing through it.
	outside := t.TempDir()
	parent := t.TempDir()
	dest := filepath.Join(parent, "out")
	if err := os.Symlink(outside, dest); err != nil {
		t.Fatal(err)
	}
	nar := archive(cat([]any{Magic}, dirOf(entry("f", file("x"))))...)
	if _, err := Restore(bytes.NewReader(nar), dest, RestoreOptions{}); err == nil {
		t.Fatal("Restore onto a planted symlink succeeded")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("Restore wrote %d entries through a symlink", len(entries))
	}
	// A file root onto a planted symlink.
	nar = archive(cat([]any{Magic}, file("x"))...)
	target := filepath.Join(outside, "victim")
	if err := os.Symlink(target, filepath.Join(parent, "file")); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(bytes.NewReader(nar), filepath.Join(parent, "file"), RestoreOptions{}); err == nil {
		t.Fatal("Restore of a file onto a planted symlink succeeded")
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Restore created a file through a symlink")
	}
}

// snapshot describes the tree at p (types, modes, contents, link targets)
// without following symlinks.
func snapshot(t *testing.T, p string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(p, func(q string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(q)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v", strings.TrimPrefix(q, p), fi.Mode())
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(q)
			fmt.Fprintf(&b, " -> %s", target)
		case fi.Mode().IsRegular():
			data, _ := os.ReadFile(q)
			fmt.Fprintf(&b, " %q", data)
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// A restore onto a DEST that exists fails and leaves DEST exactly as it
// was, whatever DEST is (a directory with read-only subdirectories, a file,
// a symlink) and whatever the archive's root is.
func TestRestoreNeverRemovesExistingDest(t *testing.T) {
	roots := map[string][]byte{
		"directory": archive(cat([]any{Magic}, dirOf(entry("f", file("new"))))...),
		"file":      archive(cat([]any{Magic}, file("new"))...),
		"symlink":   archive(Magic, "(", "type", "symlink", "target", "/new", ")"),
	}
	dests := map[string]func(t *testing.T, p string){
		"directory": func(t *testing.T, p string) {
			for _, d := range []string{p, p + "/ro", p + "/ro/deeper"} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			os.WriteFile(p+"/keep", []byte("mine"), 0o644)
			os.WriteFile(p+"/ro/deeper/precious", []byte("mine too"), 0o400)
			os.Chmod(p+"/ro/deeper", 0o555)
			os.Chmod(p+"/ro", 0o555)
		},
		"file": func(t *testing.T, p string) {
			if err := os.WriteFile(p, []byte("mine"), 0o640); err != nil {
				t.Fatal(err)
			}
		},
		"symlink": func(t *testing.T, p string) {
			if err := os.Symlink("/somewhere/else", p); err != nil {
				t.Fatal(err)
			}
		},
	}
	for rootName, nar := range roots {
		for destName, mk := range dests {
			t.Run(rootName+" onto "+destName, func(t *testing.T) {
				dest := filepath.Join(t.TempDir(), "dest")
				mk(t, dest)
				before := snapshot(t, dest)
				t.Cleanup(func() { RemoveTree(dest) })
				_, err := Restore(bytes.NewReader(nar), dest, RestoreOptions{Sync: true})
				if err == nil {
					t.Fatalf("Restore onto an existing %s succeeded", destName)
				}
				if !errors.Is(err, os.ErrExist) {
					t.Errorf("Restore = %v, want an error wrapping %v", err, os.ErrExist)
				}
				if after := snapshot(t, dest); after != before {
					t.Fatalf("Restore changed the existing %s:\nbefore:\n%s\nafter:\n%s", destName, before, after)
				}
			})
		}
	}
}

// TestDumpFileChangedWhileRead dumps files whose content does not match the
// size lstat gave: procfs files say 0 and have content (as if they grew
// after the lstat), sysfs attributes say 4096 and have less (as if they
// shrank). Either is an error naming the file, never a NAR with the wrong
// bytes.
func TestDumpFileChangedWhileRead(t *testing.T) {
	for _, c := range []struct{ path, want string }{
		{"/proc/self/status", "grew while reading"},
		{"/sys/kernel/profiling", "shrank while reading"},
	} {
		if fi, err := os.Lstat(c.path); err != nil || !fi.Mode().IsRegular() {
			t.Logf("skipping %s: %v", c.path, err)
			continue
		}
		err := Dump(io.Discard, c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("Dump(%s) = %v, want an error naming it: %q", c.path, err, c.want)
		}
	}
}
