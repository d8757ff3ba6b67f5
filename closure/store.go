package closure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/declarative/deploy/closure/nar"
)

// ErrNotValid is returned (wrapped) for a store path that is not valid.
var ErrNotValid = errors.New("not a valid store path")

// Store is a content-addressed store on a local disk: the target's store at
// /var/lib/deploy, or the operator's cache, which keeps the same logical
// paths (StoreDir) under another physical directory (RealDir).
//
// The zero value is not usable; use [NewTargetStore] or [NewLocalStore], or
// set every field.
type Store struct {
	// StoreDir is the logical store directory that store paths name.
	StoreDir string
	// RealDir is where the objects are on this machine's disk.
	RealDir string
	// DBDir holds one metadata file per valid path, and the store lock.
	DBDir string
	// RootsDir holds GC roots: symlinks (possibly chained within RootsDir)
	// to store paths. On a target these are the generation links.
	RootsDir string
	// PinsDir holds the pushed closures' roots (see [Store.Pin]); empty:
	// the store keeps none.
	PinsDir string
	// NARs, if set, keeps dumped NARs in memory for the next [Store.Dump]
	// of the same path (an operator sending one closure to many hosts).
	NARs *NARCache

	// swept says that this Store swept the leftovers of interrupted
	// imports once (see lockShared).
	swept atomic.Bool
}

// NewTargetStore returns the store of a target machine under stateDir
// (normally /var/lib/deploy): objects in stateDir/store, which is also the
// logical store directory, metadata in stateDir/db, roots in
// stateDir/profiles, pushed closures' roots in stateDir/pushed.
func NewTargetStore(stateDir string) *Store {
	return &Store{
		StoreDir: filepath.Join(stateDir, "store"),
		RealDir:  filepath.Join(stateDir, "store"),
		DBDir:    filepath.Join(stateDir, "db"),
		RootsDir: filepath.Join(stateDir, "profiles"),
		PinsDir:  filepath.Join(stateDir, "pushed"),
	}
}

// NewLocalStore returns the operator's store for the logical directory
// storeDir, kept under cacheRoot (normally $XDG_CACHE_HOME/deploy). Each
// logical store directory gets its own subdirectory, so stores for different
// logical directories never mix.
func NewLocalStore(cacheRoot, storeDir string) (*Store, error) {
	if err := CheckStoreDir(storeDir); err != nil {
		return nil, err
	}
	base := filepath.Join(cacheRoot, strings.ReplaceAll(strings.TrimPrefix(storeDir, "/"), "/", "-"))
	return &Store{
		StoreDir: storeDir,
		RealDir:  filepath.Join(base, "store"),
		DBDir:    filepath.Join(base, "db"),
		RootsDir: filepath.Join(base, "roots"),
	}, nil
}

// DefaultCacheRoot returns $XDG_CACHE_HOME/deploy, or ~/.cache/deploy.
func DefaultCacheRoot() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("locating the cache directory: %w", err)
	}
	return filepath.Join(dir, "deploy"), nil
}

func (s *Store) init() error {
	if err := CheckStoreDir(s.StoreDir); err != nil {
		return err
	}
	for _, d := range []string{s.RealDir, s.DBDir, s.RootsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	return nil
}

// RealPath returns where store path p is on this machine's disk.
func (s *Store) RealPath(p string) string {
	return filepath.Join(s.RealDir, path.Base(p))
}

func (s *Store) infoFile(p string) (string, error) {
	hash, _, err := SplitPath(s.StoreDir, p)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.DBDir, hash+".narinfo"), nil
}

// Info returns the metadata of p, or an error wrapping [ErrNotValid].
func (s *Store) Info(p string) (*PathInfo, error) {
	f, err := s.infoFile(p)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(f)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%q: %w", p, ErrNotValid)
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	pi, err := parsePathInfo(s.StoreDir, data)
	if err != nil {
		return nil, fmt.Errorf("store: metadata %q: %w", f, err)
	}
	if pi.Path != p {
		// Same hash part, different name: p itself is not valid.
		return nil, fmt.Errorf("%q: %w", p, ErrNotValid)
	}
	return pi, nil
}

// Valid reports whether p is a valid path of the store: its metadata is
// registered and its content is there. A path whose content was removed
// behind the store's back (an operator's rm -rf) is not valid, so the next
// copy sends it again instead of activating a system with files missing.
func (s *Store) Valid(p string) (bool, error) {
	_, err := s.Info(p)
	if errors.Is(err, ErrNotValid) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if _, err := os.Lstat(s.RealPath(p)); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("store: %w", err)
	}
	return true, nil
}

// Paths lists every valid path, sorted.
func (s *Store) Paths() ([]string, error) {
	entries, err := os.ReadDir(s.DBDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".narinfo") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.DBDir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		pi, err := parsePathInfo(s.StoreDir, data)
		if err != nil {
			return nil, fmt.Errorf("store: metadata %q: %w", e.Name(), err)
		}
		out = append(out, pi.Path)
	}
	slices.Sort(out)
	return out, nil
}

// Missing returns the paths of ps that are not valid, in the order given.
func (s *Store) Missing(ps []string) ([]string, error) {
	var out []string
	for _, p := range ps {
		ok, err := s.Valid(p)
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// Closure returns the closure of roots: every path reachable through
// references, ordered so that each path comes after all its references, ties
// broken by path so that the order is deterministic.
func (s *Store) Closure(roots ...string) ([]*PathInfo, error) {
	infos := map[string]*PathInfo{}
	var visit func(p string, stack []string) error
	var order []*PathInfo
	state := map[string]int{} // 1 visiting, 2 done
	visit = func(p string, stack []string) error {
		switch state[p] {
		case 1:
			return fmt.Errorf("store: reference cycle through %q", p)
		case 2:
			return nil
		}
		state[p] = 1
		pi, err := s.Info(p)
		if err != nil {
			if len(stack) > 0 {
				return fmt.Errorf("store: %q (referenced by %q): %w", p, stack[len(stack)-1], err)
			}
			return err
		}
		infos[p] = pi
		for _, r := range pi.References {
			if err := visit(r, append(stack, p)); err != nil {
				return err
			}
		}
		state[p] = 2
		order = append(order, pi)
		return nil
	}
	sorted := slices.Clone(roots)
	slices.Sort(sorted)
	for _, r := range slices.Compact(sorted) {
		if err := visit(r, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Dump writes the NAR of valid path p to w.
func (s *Store) Dump(w io.Writer, p string) error {
	info, err := s.Info(p)
	if err != nil {
		return err
	}
	if ok, err := s.NARs.dump(w, p, s.RealPath(p), info.NarSize); ok {
		return err
	}
	return nar.Dump(w, s.RealPath(p))
}

// checkRefs checks that every reference of pi is a path other than pi
// itself that is valid, or pending: staged earlier in the same batch.
func (s *Store) checkRefs(pi *PathInfo, pending map[string]bool) error {
	for _, r := range pi.References {
		if r == pi.Path {
			return fmt.Errorf("store: %q refers to itself; self-references are not supported", pi.Path)
		}
		if pending[r] {
			continue
		}
		ok, err := s.Valid(r)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("store: %q: reference %q: %w", pi.Path, r, ErrNotValid)
		}
	}
	return nil
}

// AddTree adds the file tree at src as a content-addressed path with the
// given name and references (which must be valid), returning its metadata.
// Adding a tree that is already present is cheap and changes nothing.
func (s *Store) AddTree(ctx context.Context, src, name string, refs []string) (*PathInfo, error) {
	h := newHashWriter()
	if err := nar.Dump(h, src); err != nil {
		return nil, err
	}
	pi := &PathInfo{NarHash: h.sum(), NarSize: h.n, References: sortedUnique(refs)}
	p, err := MakeSourcePath(s.StoreDir, pi.NarHash, name, pi.References)
	if err != nil {
		return nil, err
	}
	pi.Path = p
	if ok, err := s.Valid(p); err != nil || ok {
		if ok {
			pi, err = s.Info(p)
		}
		return pi, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(nar.Dump(pw, src)) }()
	err = s.Import(ctx, pr, pi)
	pr.CloseWithError(errors.New("import finished"))
	if err != nil {
		return nil, err
	}
	return pi, nil
}

// AddNAR adds the archive read from r (which must be the whole input) as a
// content-addressed path with the given name and references.
func (s *Store) AddNAR(ctx context.Context, r io.Reader, name string, refs []string) (*PathInfo, error) {
	if err := s.init(); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(s.DBDir, ".tmp-nar-")
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := newHashWriter()
	// Validate while spooling, so that a bad archive fails before it is
	// named.
	if _, err := nar.Parse(io.TeeReader(r, io.MultiWriter(tmp, h)), discardSink{}, nar.Options{}); err != nil {
		return nil, err
	}
	pi := &PathInfo{NarHash: h.sum(), NarSize: h.n, References: sortedUnique(refs)}
	if pi.Path, err = MakeSourcePath(s.StoreDir, pi.NarHash, name, pi.References); err != nil {
		return nil, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := s.Import(ctx, tmp, pi); err != nil {
		return nil, err
	}
	return pi, nil
}

type discardSink struct{}

func (discardSink) Directory(string) error    { return nil }
func (discardSink) EndDirectory() error       { return nil }
func (discardSink) Symlink(_, _ string) error { return nil }
func (discardSink) File(_ string, _ bool, _ int64, r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func sortedUnique(ss []string) []string {
	out := slices.Clone(ss)
	slices.Sort(out)
	return slices.Compact(out)
}
