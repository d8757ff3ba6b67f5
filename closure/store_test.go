package closure

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/testenv"
)

func TestNix32(t *testing.T) {
	empty := sha256.Sum256(nil)
	// Nix prints the SHA-256 of the empty string as this (nix hash to-base32).
	const want = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	if got := Nix32(empty[:]); got != want {
		t.Fatalf("Nix32(sha256(\"\")) = %q, want %q", got, want)
	}
	back, err := ParseNix32(want, 32)
	if err != nil || !bytes.Equal(back, empty[:]) {
		t.Fatalf("ParseNix32(%q) = %x, %v; want %x", want, back, err, empty)
	}
	for _, bad := range []string{"", "e" + want[1:], want[:51]} {
		if _, err := ParseNix32(bad, 32); err == nil {
			t.Errorf("ParseNix32(%q) succeeded", bad)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"hello-1.0", true}, {"a+b_c?d=e", true}, {"x", true}, {strings.Repeat("a", 211), true},
		{"", false}, {".hidden", false}, {"a b", false}, {"a/b", false}, {strings.Repeat("a", 212), false}, {"ü", false},
	} {
		if err := CheckName(tt.name); (err == nil) != tt.ok {
			t.Errorf("CheckName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func newTestStore(t testing.TB, storeDir string) *Store {
	t.Helper()
	s, err := NewLocalStore(t.TempDir(), storeDir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeTree(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestAddTreeMatchesNixStoreAdd(t *testing.T) {
	nixStore := testenv.NeedTool(t, "nix-store", "nix-bin")
	src := writeTree(t, filepath.Join(t.TempDir(), "my-tree"), map[string]string{"a": "1", "sub/b": "2"})
	os.Symlink("a", filepath.Join(src, "link"))
	os.Chmod(filepath.Join(src, "a"), 0o755)
	single := writeTree(t, t.TempDir(), map[string]string{"single-file": "content\n"})
	for _, tree := range []string{src, filepath.Join(single, "single-file")} {
		cmd := exec.Command(nixStore, "--store", filepath.Join(t.TempDir(), "nixroot"), "--add", tree)
		cmd.Env = append(os.Environ(), "NIX_REMOTE=")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nix-store --add %q: %v", tree, err)
		}
		want := strings.TrimSpace(string(out))
		s := newTestStore(t, "/nix/store")
		pi, err := s.AddTree(context.Background(), tree, filepath.Base(tree), nil)
		if err != nil {
			t.Fatal(err)
		}
		if pi.Path != want {
			t.Errorf("AddTree(%q) = %q, nix-store --add = %q", tree, pi.Path, want)
		}
	}
}

func TestStoreAddInfoClosure(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, DefaultStoreDir)
	dir := t.TempDir()
	add := func(name, content string, refs ...string) *PathInfo {
		t.Helper()
		src := writeTree(t, filepath.Join(dir, name), map[string]string{"f": content})
		pi, err := s.AddTree(ctx, src, name, refs)
		if err != nil {
			t.Fatalf("AddTree(%q): %v", name, err)
		}
		return pi
	}
	libc := add("libc", "libc")
	lib := add("lib", "lib", libc.Path)
	tool := add("tool", "tool", libc.Path)
	app := add("app", "app", tool.Path, lib.Path)

	again := add("app", "app", lib.Path, tool.Path)
	if again.Path != app.Path {
		t.Errorf("re-adding the same tree gave %q, want %q", again.Path, app.Path)
	}
	info, err := s.Info(app.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(info.References) != fmt.Sprint(sortedUnique([]string{lib.Path, tool.Path})) || info.NarHash != app.NarHash || info.NarSize != app.NarSize {
		t.Errorf("Info(%q) = %+v, want %+v", app.Path, info, app)
	}
	cl, err := s.Closure(app.Path)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, pi := range cl {
		pos[pi.Path] = i
	}
	if len(cl) != 4 {
		t.Fatalf("Closure(app) has %d paths, want 4", len(cl))
	}
	for _, pi := range cl {
		for _, r := range pi.References {
			if pos[r] >= pos[pi.Path] {
				t.Errorf("Closure order: %q comes before its reference %q", pi.Path, r)
			}
		}
	}
	missing, err := s.Missing([]string{app.Path, DefaultStoreDir + "/" + strings.Repeat("0", 32) + "-nope"})
	if err != nil || len(missing) != 1 {
		t.Errorf("Missing = %v, %v; want the one absent path", missing, err)
	}
	if _, err := s.Info(DefaultStoreDir + "/" + strings.Repeat("0", 32) + "-nope"); !errors.Is(err, ErrNotValid) {
		t.Errorf("Info(absent) = %v, want ErrNotValid", err)
	}
}

func narOf(t testing.TB, dir string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := nar.Dump(&b, dir); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func infoFor(t testing.TB, s *Store, data []byte, name string, refs ...string) *PathInfo {
	t.Helper()
	pi := &PathInfo{NarHash: sha256.Sum256(data), NarSize: int64(len(data)), References: refs}
	p, err := MakeSourcePath(s.StoreDir, pi.NarHash, name, refs)
	if err != nil {
		t.Fatal(err)
	}
	pi.Path = p
	return pi
}

func TestImportRejects(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, DefaultStoreDir)
	data := narOf(t, writeTree(t, t.TempDir(), map[string]string{"f": "payload"}))
	good := infoFor(t, s, data, "good")

	t.Run("path does not match hash", func(t *testing.T) {
		bad := *good
		bad.NarHash[0] ^= 1
		err := s.Import(ctx, bytes.NewReader(data), &bad)
		if err == nil || !strings.Contains(err.Error(), "does not match its NAR hash") {
			t.Fatalf("Import of a falsely named path = %v, want a content-address error", err)
		}
	})
	t.Run("wrong size", func(t *testing.T) {
		bad := *good
		bad.NarSize += 8
		bad.Path, _ = MakeSourcePath(s.StoreDir, bad.NarHash, "good", nil)
		err := s.Import(ctx, io.MultiReader(bytes.NewReader(data), bytes.NewReader(make([]byte, 8))), &bad)
		if err == nil || !strings.Contains(err.Error(), "trailing") {
			t.Fatalf("Import with a wrong size = %v, want trailing data", err)
		}
	})
	t.Run("hash mismatch", func(t *testing.T) {
		// A self-consistent claim (path made from the claimed hash) whose
		// content does not match.
		var h [32]byte
		h[0] = 1
		bad := &PathInfo{NarHash: h, NarSize: int64(len(data))}
		bad.Path, _ = MakeSourcePath(s.StoreDir, h, "good", nil)
		err := s.Import(ctx, bytes.NewReader(data), bad)
		var hm *HashMismatchError
		if !errors.As(err, &hm) || !strings.Contains(err.Error(), bad.Path) {
			t.Fatalf("Import with a wrong hash = %v, want a HashMismatchError naming the path", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		err := s.Import(ctx, bytes.NewReader(data[:len(data)-9]), good)
		if err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("Import of a truncated stream = %v, want truncated", err)
		}
	})
	t.Run("missing reference", func(t *testing.T) {
		ref := DefaultStoreDir + "/" + strings.Repeat("1", 32) + "-dep"
		pi := infoFor(t, s, data, "withref", ref)
		err := s.Import(ctx, bytes.NewReader(data), pi)
		if !errors.Is(err, ErrNotValid) || !strings.Contains(err.Error(), ref) {
			t.Fatalf("Import with a missing reference = %v, want ErrNotValid naming %q", err, ref)
		}
	})
	if ok, _ := s.Valid(good.Path); ok {
		t.Fatal("a rejected import left the path valid")
	}
	entries, _ := os.ReadDir(s.RealDir)
	if len(entries) != 0 {
		t.Fatalf("rejected imports left %d entries in the store", len(entries))
	}
	if err := s.Import(ctx, bytes.NewReader(data), good); err != nil {
		t.Fatalf("Import of the good archive: %v", err)
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("Verify = %v, %v", problems, err)
	}
}

func TestGC(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, DefaultStoreDir)
	dir := t.TempDir()
	add := func(name string, refs ...string) string {
		src := writeTree(t, filepath.Join(dir, name), map[string]string{"f": name})
		pi, err := s.AddTree(ctx, src, name, refs)
		if err != nil {
			t.Fatal(err)
		}
		return pi.Path
	}
	shared := add("shared")
	gen1 := add("system-1", shared)
	gen2 := add("system-2", shared)
	orphan := add("orphan", shared)
	extra := add("inflight")
	if err := os.Symlink(gen1, filepath.Join(s.RootsDir, "system-1-link")); err != nil {
		t.Fatal(err)
	}
	os.Symlink("system-1-link", filepath.Join(s.RootsDir, "system"))
	res, err := s.GC(ctx, []string{extra})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{gen2: true, orphan: true}
	if len(res.Deleted) != len(want) {
		t.Fatalf("GC deleted %v, want %v", res.Deleted, want)
	}
	for _, p := range res.Deleted {
		if !want[p] {
			t.Errorf("GC deleted %q", p)
		}
		if _, err := os.Lstat(s.RealPath(p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("GC left the content of %q", p)
		}
	}
	for _, p := range []string{shared, gen1, extra} {
		if ok, _ := s.Valid(p); !ok {
			t.Errorf("GC deleted live path %q", p)
		}
	}
	if problems, _ := s.Verify(ctx); len(problems) != 0 {
		t.Errorf("Verify after GC: %v", problems)
	}
}

func TestVerifyFindsCorruption(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, DefaultStoreDir)
	pi, err := s.AddTree(ctx, writeTree(t, t.TempDir(), map[string]string{"f": "good"}), "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(s.RealPath(pi.Path), "f")
	os.Chmod(f, 0o644)
	os.WriteFile(f, []byte("evil"), 0o444)
	problems, err := s.Verify(ctx)
	if err != nil || len(problems) != 1 || problems[0].Path != pi.Path {
		t.Fatalf("Verify = %v, %v; want one problem for %q", problems, err, pi.Path)
	}
}

// The child half of TestImportKilled: import a NAR file into a store.
func TestMain(m *testing.M) {
	if spec := os.Getenv("DEPLOY_TEST_IMPORT_CHILD"); spec != "" {
		os.Exit(importChild(spec))
	}
	os.Exit(m.Run())
}

func importChild(spec string) int {
	// spec: cacheRoot|narFile|name
	parts := strings.Split(spec, "|")
	s, _ := NewLocalStore(parts[0], DefaultStoreDir)
	f, err := os.Open(parts[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := s.AddNAR(context.Background(), f, parts[2], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestImportKilled(t *testing.T) {
	iterations := 40
	if testing.Short() {
		iterations = 10
	}
	src := t.TempDir()
	files := map[string]string{}
	for i := 0; i < 200; i++ {
		files[fmt.Sprintf("d%d/f%d", i%10, i)] = strings.Repeat(fmt.Sprint(i), 2000+i*37)
	}
	writeTree(t, src, files)
	narFile := filepath.Join(t.TempDir(), "tree.nar")
	data := narOf(t, src)
	if err := os.WriteFile(narFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cacheRoot := t.TempDir()
	s, _ := NewLocalStore(cacheRoot, DefaultStoreDir)
	want := infoFor(t, s, data, "tree")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Time one full import to spread the kills over it.
	run := func() *exec.Cmd {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "DEPLOY_TEST_IMPORT_CHILD="+cacheRoot+"|"+narFile+"|tree")
		return cmd
	}
	start := time.Now()
	if out, err := run().CombinedOutput(); err != nil {
		t.Fatalf("import child: %v\n%s", err, out)
	}
	full := time.Since(start)
	if _, err := s.GC(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	killedMidway := 0
	for i := 0; i < iterations; i++ {
		cmd := run()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(full))))
		cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err != nil {
			killedMidway++
		}
		// Whatever the moment of the kill: the path is valid and complete,
		// or not valid at all.
		valid, err := s.Valid(want.Path)
		if err != nil {
			t.Fatal(err)
		}
		problems, err := s.Verify(context.Background())
		if err != nil || len(problems) != 0 {
			t.Fatalf("iteration %d: Verify after a kill: %v %v", i, problems, err)
		}
		if valid {
			if _, err := s.GC(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			continue
		}
		// A rerun completes and cleans up the leftovers.
		if out, err := run().CombinedOutput(); err != nil {
			t.Fatalf("iteration %d: rerun: %v\n%s", i, err, out)
		}
		if ok, _ := s.Valid(want.Path); !ok {
			t.Fatalf("iteration %d: rerun did not make the path valid", i)
		}
		entries, _ := os.ReadDir(s.RealDir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				t.Fatalf("iteration %d: leftover %q after a rerun", i, e.Name())
			}
		}
		if _, err := s.GC(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d of %d imports killed before completing (one full import: %v)", killedMidway, iterations, full)
	if killedMidway == 0 {
		t.Fatal("no import was interrupted: the test proved nothing")
	}
}

// A path with thousands of references has a metadata line far longer than
// any default line buffer (64 KiB); it must round-trip exactly.
func TestPathInfoManyReferences(t *testing.T) {
	pi := &PathInfo{Path: DefaultStoreDir + "/" + strings.Repeat("1", 32) + "-root", NarHash: sha256.Sum256([]byte("x")), NarSize: 8}
	for i := 0; i < 3000; i++ {
		h := sha256.Sum256([]byte(fmt.Sprint(i)))
		pi.References = append(pi.References, DefaultStoreDir+"/"+Nix32(xorFold(h[:], 20))+"-p")
	}
	slices.Sort(pi.References)
	data := pi.marshal()
	if len(data) < 100<<10 {
		t.Fatalf("metadata is only %d bytes; the test wants a line over 64 KiB", len(data))
	}
	got, err := parsePathInfo(DefaultStoreDir, data)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.References, pi.References) || got.NarSize != pi.NarSize || got.NarHash != pi.NarHash {
		t.Fatalf("parsePathInfo(marshal(pi)) lost data: %d references, want %d", len(got.References), len(pi.References))
	}
}

// Two imports of the same path at once (a receive left over from a cut
// connection and its rerun): the path ends valid and complete, and never
// loses its content to the other import.
func TestConcurrentImportsOfOnePath(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, DefaultStoreDir)
	files := map[string]string{}
	for i := 0; i < 50; i++ {
		files[fmt.Sprint("f", i)] = strings.Repeat(fmt.Sprint(i), 5000)
	}
	data := narOf(t, writeTree(t, t.TempDir(), files))
	pi := infoFor(t, s, data, "shared")
	for round := 0; round < 10; round++ {
		// A watcher checks, all along, that a valid path has its content.
		stop := make(chan struct{})
		violated := make(chan string, 1)
		go func() {
			for {
				select {
				case <-stop:
					close(violated)
					return
				default:
				}
				if ok, _ := s.Valid(pi.Path); ok {
					if _, err := os.Lstat(filepath.Join(s.RealPath(pi.Path), "f0")); err != nil {
						violated <- err.Error()
						<-stop
						close(violated)
						return
					}
				}
			}
		}()
		errs := make(chan error, 4)
		for i := 0; i < 4; i++ {
			go func() { errs <- s.Import(ctx, bytes.NewReader(data), pi) }()
		}
		for i := 0; i < 4; i++ {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		close(stop)
		if v, ok := <-violated; ok {
			t.Fatalf("round %d: the path was valid without its content: %s", round, v)
		}
		if problems, err := s.Verify(ctx); err != nil || len(problems) != 0 {
			t.Fatalf("round %d: Verify: %v %v", round, problems, err)
		}
		if _, err := s.GC(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// The import's hasher runs on its own goroutine; whatever the sizes of the
// writes, its sum is SHA-256 of the bytes written, and stop ends it.
func TestAsyncHasher(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 3*asyncHashChunk*asyncHashChunks+12345)
	for i := range data {
		data[i] = byte(rnd.Uint32())
	}
	for _, max := range []int{1, 7, 4096, asyncHashChunk - 1, asyncHashChunk, 3*asyncHashChunk + 5} {
		a := newAsyncHasher()
		rest := data
		if max == 1 {
			rest = data[:100000]
		}
		want := sha256.Sum256(rest)
		var n int64
		for len(rest) > 0 {
			k := min(len(rest), 1+rnd.IntN(max))
			a.Write(rest[:k])
			n += int64(k)
			rest = rest[k:]
		}
		if got := a.sum(); got != want || a.n != n {
			t.Errorf("writes of up to %d bytes: sum %x (%d bytes), want %x (%d)", max, got, a.n, want, n)
		}
		a.stop() // after sum: nothing to do
	}
	// An abandoned hasher with chunks in flight stops.
	a := newAsyncHasher()
	a.Write(data)
	a.stop()
	a.stop()
}

// A path whose content was removed behind the store's back is missing, and
// importing it again restores it.
func TestContentRemovedBehindTheStore(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, DefaultStoreDir)
	pi, err := s.AddTree(ctx, writeTree(t, t.TempDir(), map[string]string{"f": "content"}), "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.Dump(&buf, pi.Path); err != nil {
		t.Fatal(err)
	}
	if err := nar.RemoveTree(s.RealPath(pi.Path)); err != nil {
		t.Fatal(err)
	}
	if missing, err := s.Missing([]string{pi.Path}); err != nil || len(missing) != 1 {
		t.Fatalf("Missing = %v, %v; want the removed path", missing, err)
	}
	if err := s.Import(ctx, &buf, pi); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(s.RealPath(pi.Path), "f")); err != nil || string(got) != "content" {
		t.Fatalf("after the re-import: %q, %v", got, err)
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("Verify = %v, %v", problems, err)
	}
}
