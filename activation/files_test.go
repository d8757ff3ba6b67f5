package activation

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/declarative/deploy/internal/testenv"
	"github.com/declarative/deploy/manifest"
)

// symlinkWorld is a small file system under a temp dir: a root-owned
// "etc" that must never be written through a planted link, a home
// directory owned by another user, and links placed by root and by that
// user.
type symlinkWorld struct {
	t    *testing.T
	root string
	src  string // a source file holding "new"
	l    Layout
}

const nobody = 65534

func newSymlinkWorld(t *testing.T) *symlinkWorld {
	t.Helper()
	testenv.NeedRoot(t)
	root := t.TempDir()
	w := &symlinkWorld{t: t, root: root, src: filepath.Join(root, "src"),
		l: Layout{StateDir: filepath.Join(root, "state"), RunDir: filepath.Join(root, "run"), UnitDir: filepath.Join(root, "units")}}
	w.mkdir("etc", 0o755, 0)
	w.mkdir("home/alice", 0o755, nobody)
	w.mkdir("usr/lib", 0o755, 0)
	w.must(os.WriteFile(w.src, []byte("new"), 0o644))
	w.must(os.WriteFile(w.p("etc/passwd-like"), []byte("precious"), 0o644))
	// alice's own link to etc, in her home.
	w.must(os.Symlink(w.p("etc"), w.p("home/alice/conf")))
	w.must(os.Lchown(w.p("home/alice/conf"), nobody, nobody))
	// A root-owned link that alice could have moved into her home.
	w.must(os.Symlink(w.p("etc"), w.p("home/alice/rootlink")))
	// A link only root could have placed (root's link in root's 0755 dir).
	w.must(os.Symlink("usr/lib", w.p("lib")))
	w.must(w.l.Init())
	return w
}

func (w *symlinkWorld) must(err error) {
	w.t.Helper()
	if err != nil {
		w.t.Fatal(err)
	}
}

func (w *symlinkWorld) p(rel string) string { return filepath.Join(w.root, rel) }

func (w *symlinkWorld) mkdir(rel string, mode os.FileMode, uid int) {
	w.t.Helper()
	w.must(os.MkdirAll(w.p(rel), 0o755))
	w.must(os.Chmod(w.p(rel), mode))
	w.must(os.Chown(w.p(rel), uid, uid))
}

func (w *symlinkWorld) apply(prev, next *manifest.Manifest) error {
	next.SchemaVersion = manifest.SchemaVersion
	return Apply(context.Background(), prev, next, Options{Layout: w.l, System: "/test/system", Generation: 1, Logf: w.t.Logf})
}

func (w *symlinkWorld) file(rel string) manifest.File {
	return manifest.File{Path: w.p(rel), Source: w.src, Owner: "root", Group: "root", Mode: "0600"}
}

// etcUnchanged checks that nothing was written into etc.
func (w *symlinkWorld) etcUnchanged() {
	w.t.Helper()
	entries, err := os.ReadDir(w.p("etc"))
	w.must(err)
	if len(entries) != 1 || entries[0].Name() != "passwd-like" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		w.t.Fatalf("etc holds %v, want only passwd-like: a write went through a planted symlink", names)
	}
	fi, err := os.Stat(w.p("etc"))
	w.must(err)
	if fi.Mode().Perm() != 0o755 {
		w.t.Fatalf("etc has mode %v, want 0755: a chmod went through a planted symlink", fi.Mode().Perm())
	}
	if data, _ := os.ReadFile(w.p("etc/passwd-like")); string(data) != "precious" {
		w.t.Fatalf("etc/passwd-like = %q", data)
	}
}

// Files, directories and symlinks under a directory another user can
// write are never written through a symlink that user could have placed;
// a link only root could have placed is followed.
func TestApplyNeverFollowsPlantedSymlinks(t *testing.T) {
	refused := []struct {
		name string
		m    *manifest.Manifest
	}{
		{"file under a user's link", &manifest.Manifest{Files: []manifest.File{{}}}},
		{"file under root's link in a user's directory", &manifest.Manifest{Files: []manifest.File{{}}}},
		{"directory under a user's link", &manifest.Manifest{Directories: []manifest.Directory{{Owner: "root", Group: "root", Mode: "0700"}}}},
		{"symlink under a user's link", &manifest.Manifest{Symlinks: []manifest.Symlink{{Target: "/x"}}}},
		{"new directory below a user's link", &manifest.Manifest{Files: []manifest.File{{}}}},
	}
	for i, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			w := newSymlinkWorld(t)
			switch i {
			case 0:
				tt.m.Files[0] = w.file("home/alice/conf/app.conf")
			case 1:
				tt.m.Files[0] = w.file("home/alice/rootlink/app.conf")
			case 2:
				tt.m.Directories[0].Path = w.p("home/alice/conf/sub")
			case 3:
				tt.m.Symlinks[0].Path = w.p("home/alice/conf/link")
			case 4:
				tt.m.Files[0] = w.file("home/alice/conf/new/dir/app.conf")
			}
			err := w.apply(nil, tt.m)
			var ue *UnsafePathError
			if !errors.As(err, &ue) {
				t.Fatalf("Apply = %v, want an *UnsafePathError", err)
			}
			t.Logf("refused: %v", err)
			w.etcUnchanged()
		})
	}

	t.Run("root's link in root's directory", func(t *testing.T) {
		w := newSymlinkWorld(t)
		m := &manifest.Manifest{Files: []manifest.File{w.file("lib/app.conf")},
			Directories: []manifest.Directory{{Path: w.p("lib/sub"), Owner: "root", Group: "root", Mode: "0700"}}}
		if err := w.apply(nil, m); err != nil {
			t.Fatalf("Apply through /lib → usr/lib = %v", err)
		}
		if data, err := os.ReadFile(w.p("usr/lib/app.conf")); err != nil || string(data) != "new" {
			t.Fatalf("usr/lib/app.conf = %q, %v", data, err)
		}
		if fi, err := os.Stat(w.p("usr/lib/sub")); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("usr/lib/sub: %v, %v", fi, err)
		}
	})

	t.Run("removal after the parent became a link", func(t *testing.T) {
		w := newSymlinkWorld(t)
		w.mkdir("home/alice/app", 0o755, nobody)
		m := &manifest.Manifest{Files: []manifest.File{w.file("home/alice/app/passwd-like")}}
		if err := w.apply(nil, m); err != nil {
			t.Fatal(err)
		}
		// alice swaps the directory for a link to etc; the next
		// generation drops the file.
		w.must(os.Rename(w.p("home/alice/app"), w.p("home/alice/old")))
		w.must(os.Symlink(w.p("etc"), w.p("home/alice/app")))
		w.must(os.Lchown(w.p("home/alice/app"), nobody, nobody))
		if err := w.apply(m, &manifest.Manifest{}); err != nil {
			t.Fatalf("Apply = %v, want success, leaving what is behind the link alone", err)
		}
		w.etcUnchanged()
		if data, err := os.ReadFile(w.p("home/alice/old/passwd-like")); err != nil || string(data) != "new" {
			t.Fatalf("the file deploy wrote, now in alice's renamed directory: %q, %v", data, err)
		}
	})
}
