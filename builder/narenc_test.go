package builder

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/declarative/deploy/closure/nar"
)

// narBytes must produce exactly what nar.Dump writes for the same tree.
func TestNarBytesMatchesDump(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "root")
	mustWrite(t, filepath.Join(dir, "manifest.json"), "{}\n")
	mustWrite(t, filepath.Join(dir, "etc", "a", "b.conf"), "odd length!")
	mustWrite(t, filepath.Join(dir, "bin", "x"), "#!/bin/sh\n")
	if err := os.Chmod(filepath.Join(dir, "bin", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/var/lib/deploy/store/aaaa-agent", filepath.Join(dir, "agent")); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "empty"), "")

	tree := memDir()
	tree.dir["manifest.json"] = &memNode{contents: []byte("{}\n")}
	etc, a := memDir(), memDir()
	tree.dir["etc"] = etc
	etc.dir["a"] = a
	a.dir["b.conf"] = &memNode{contents: []byte("odd length!")}
	bin := memDir()
	tree.dir["bin"] = bin
	bin.dir["x"] = &memNode{contents: []byte("#!/bin/sh\n"), executable: true}
	tree.dir["agent"] = &memNode{target: "/var/lib/deploy/store/aaaa-agent"}
	tree.dir["empty"] = &memNode{}

	for name, c := range map[string]struct {
		path string
		node *memNode
	}{
		"tree": {dir, tree},
		"file": {filepath.Join(dir, "etc", "a", "b.conf"), a.dir["b.conf"]},
		"exec": {filepath.Join(dir, "bin", "x"), bin.dir["x"]},
	} {
		var want bytes.Buffer
		if err := nar.Dump(&want, c.path); err != nil {
			t.Fatal(err)
		}
		if got := narBytes(c.node); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("narBytes(%s) differs from nar.Dump:\n got %q\nwant %q", name, got, want.Bytes())
		}
	}
}
