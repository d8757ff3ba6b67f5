package closure

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A store with a NAR cache dumps a path once and sends every later dump
// of it from memory, byte for byte the same; a path above MaxPath is
// dumped each time.
func TestNARCache(t *testing.T) {
	s := newTestStore(t, DefaultStoreDir)
	add := func(name string, size int) *PathInfo {
		t.Helper()
		src := filepath.Join(t.TempDir(), name)
		os.MkdirAll(src, 0o755)
		os.WriteFile(filepath.Join(src, "data"), bytes.Repeat([]byte(name[:1]), size), 0o644)
		pi, err := s.AddTree(context.Background(), src, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		return pi
	}
	small, big := add("small", 1000), add("big", 400<<10)
	dump := func(p string) []byte {
		t.Helper()
		var b bytes.Buffer
		if err := s.Dump(&b, p); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	want := map[string][]byte{small.Path: dump(small.Path), big.Path: dump(big.Path)}
	s.NARs = &NARCache{Max: 1 << 20, MaxPath: 100 << 10}
	for range 3 {
		for p, w := range want {
			if got := dump(p); !bytes.Equal(got, w) {
				t.Errorf("Dump(%q) through the cache: %d bytes, not the NAR (%d bytes)", p, len(got), len(w))
			}
		}
	}
	if len(s.NARs.nars) != 1 || s.NARs.nars[small.Path] == nil || s.NARs.used != small.NarSize {
		t.Errorf("cache holds %d paths (%d bytes), want only %q (%d bytes)", len(s.NARs.nars), s.NARs.used, small.Path, small.NarSize)
	}
}
