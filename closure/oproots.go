package closure

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The operator's store keeps two more kinds of roots beside RootsDir, for
// deploy store gc:
//
//   - builds/: one symlink per system built, named by the build's time
//     (Unix nanoseconds) and host, to the system path: recent builds are
//     kept (gc's --keep-since), older links are removed by gc;
//   - auto/: indirect roots, as Nix's gcroots/auto: a symlink to an out-link
//     (deploy build --out-link) outside the store. The out-link keeps its
//     system while it exists and still points into the store; when it is
//     removed or changed, the root is stale and gc removes it.

func (s *Store) buildsDir() string { return filepath.Join(filepath.Dir(s.RootsDir), "builds") }
func (s *Store) autoDir() string   { return filepath.Join(filepath.Dir(s.RootsDir), "auto") }

// BuildRoot is a recorded build.
type BuildRoot struct {
	Link string    // the symlink in builds/
	Path string    // the store path built
	Name string    // the host
	At   time.Time // when
}

// RecordBuild records that p (a host's system) was built for name at at.
func (s *Store) RecordBuild(p, name string, at time.Time) error {
	dir := s.buildsDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("store: record build: %w", err)
	}
	link := filepath.Join(dir, strconv.FormatInt(at.UnixNano(), 10)+"-"+strings.ReplaceAll(name, "/", "_"))
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(p, tmp); err != nil {
		return fmt.Errorf("store: record build: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return fmt.Errorf("store: record build: %w", err)
	}
	return nil
}

// BuildRoots returns the recorded builds, oldest first.
func (s *Store) BuildRoots() ([]BuildRoot, error) {
	entries, err := os.ReadDir(s.buildsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: builds: %w", err)
	}
	var out []BuildRoot
	for _, e := range entries {
		stamp, name, ok := strings.Cut(e.Name(), "-")
		ns, err := strconv.ParseInt(stamp, 10, 64)
		if !ok || err != nil || strings.HasSuffix(name, ".tmp") {
			continue
		}
		link := filepath.Join(s.buildsDir(), e.Name())
		p, err := os.Readlink(link)
		if err != nil || !strings.HasPrefix(p, s.StoreDir+"/") {
			continue
		}
		out = append(out, BuildRoot{Link: link, Path: p, Name: name, At: time.Unix(0, ns)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out, nil
}

// AddIndirectRoot makes the symlink at link (outside the store, pointing
// at a store path's real path) a root for as long as it so points.
func (s *Store) AddIndirectRoot(link string) error {
	abs, err := filepath.Abs(link)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.autoDir(), 0o755); err != nil {
		return fmt.Errorf("store: indirect root: %w", err)
	}
	sum := sha256.Sum256([]byte(abs))
	root := filepath.Join(s.autoDir(), hex.EncodeToString(sum[:16]))
	tmp := root + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(abs, tmp); err != nil {
		return fmt.Errorf("store: indirect root: %w", err)
	}
	if err := os.Rename(tmp, root); err != nil {
		return fmt.Errorf("store: indirect root: %w", err)
	}
	return nil
}

// IndirectRoot is an out-link that keeps a store path.
type IndirectRoot struct {
	Root string // the symlink in auto/
	Link string // the out-link
	Path string // the store path it keeps ("" when stale)
}

// IndirectRoots returns the indirect roots; those whose out-link is gone or
// no longer points into the store have no Path (stale).
func (s *Store) IndirectRoots() ([]IndirectRoot, error) {
	entries, err := os.ReadDir(s.autoDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: indirect roots: %w", err)
	}
	var out []IndirectRoot
	for _, e := range entries {
		root := filepath.Join(s.autoDir(), e.Name())
		link, err := os.Readlink(root)
		if err != nil {
			continue
		}
		ir := IndirectRoot{Root: root, Link: link}
		if target, err := os.Readlink(link); err == nil && filepath.Dir(target) == s.RealDir {
			ir.Path = s.StoreDir + "/" + filepath.Base(target)
		}
		out = append(out, ir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Link < out[j].Link })
	return out, nil
}
