package closure

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/atomicfile"
)

// Roots returns the store paths that the symlinks in RootsDir point at,
// following chains of links inside RootsDir (profiles/system →
// system-3-link → store path), and the pinned paths (see [Store.Pin]).
// Links that lead nowhere are ignored.
func (s *Store) Roots() ([]string, error) {
	entries, err := os.ReadDir(s.RootsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store: roots: %w", err)
	}
	var roots []string
	for _, e := range entries {
		if p, ok := s.resolveRoot(filepath.Join(s.RootsDir, e.Name())); ok {
			roots = append(roots, p)
		}
	}
	pins, err := s.Pins()
	if err != nil {
		return nil, err
	}
	for _, p := range pins {
		roots = append(roots, p.Path)
	}
	return sortedUnique(roots), nil
}

func (s *Store) resolveRoot(link string) (string, bool) {
	for hops := 0; hops < 8; hops++ {
		target, err := os.Readlink(link)
		if err != nil {
			return "", false
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(link), target)
		}
		if rest, ok := strings.CutPrefix(target, s.StoreDir+"/"); ok {
			base, _, _ := strings.Cut(rest, "/")
			return s.StoreDir + "/" + base, true
		}
		if filepath.Dir(target) != s.RootsDir {
			return "", false
		}
		link = target
	}
	return "", false
}

// GCResult says what a collection removed.
type GCResult struct {
	Deleted    []string // store paths deleted, in deletion order
	BytesFreed int64    // their NAR sizes added up
	Unpinned   []Pin    // pins removed by the policy (GCWith)
}

// GC deletes every valid path not reachable from the roots in RootsDir or
// from extraRoots, and every leftover of an interrupted import. It holds the
// store lock exclusively, so it waits for imports in flight (whose paths are
// thereby roots too) and blocks new ones until it is done. Referrers are
// deleted before what they refer to, and a path's metadata before its
// content, so a crash during GC never leaves a valid path with a missing
// reference.
func (s *Store) GC(ctx context.Context, extraRoots []string) (*GCResult, error) {
	return s.gc(ctx, GCOptions{ExtraRoots: extraRoots})
}

func (s *Store) gc(ctx context.Context, opts GCOptions) (*GCResult, error) {
	if err := s.init(); err != nil {
		return nil, err
	}
	unlock, err := s.lockExclusive(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	unpinned, err := s.expirePins(now, opts.Pins)
	if err != nil {
		return nil, err
	}
	roots, err := s.Roots()
	if err != nil {
		return nil, err
	}
	roots = append(roots, opts.ExtraRoots...)
	var valid []string
	for _, r := range roots {
		if ok, err := s.Valid(r); err != nil {
			return nil, err
		} else if ok {
			valid = append(valid, r)
		}
	}
	live, err := s.Closure(valid...)
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, pi := range live {
		keep[pi.Path] = true
	}
	all, err := s.Paths()
	if err != nil {
		return nil, err
	}
	var dead []string
	for _, p := range all {
		if !keep[p] {
			dead = append(dead, p)
		}
	}
	order, err := s.Closure(dead...)
	if err != nil {
		return nil, err
	}
	res := &GCResult{Unpinned: unpinned}
	for _, pi := range slices.Backward(order) {
		if keep[pi.Path] {
			continue // a dead path's reference that is still live
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		f, _ := s.infoFile(pi.Path)
		if err := os.Remove(f); err != nil {
			return res, fmt.Errorf("store: gc %q: %w", pi.Path, err)
		}
		if err := atomicfile.SyncDir(s.DBDir); err != nil {
			return res, err
		}
		if err := nar.RemoveTree(s.RealPath(pi.Path)); err != nil {
			return res, fmt.Errorf("store: gc %q: %w", pi.Path, err)
		}
		res.Deleted = append(res.Deleted, pi.Path)
		res.BytesFreed += pi.NarSize
	}
	if err := s.sweep(); err != nil {
		return res, err
	}
	return res, nil
}

// InvalidReferenceError is a path whose reference Ref is not valid (Err
// says why, when it is not simply missing).
type InvalidReferenceError struct {
	Ref string
	Err error
}

func (e *InvalidReferenceError) Error() string {
	return fmt.Sprintf("reference %q is not valid (%v)", e.Ref, e.Err)
}

// Problem is one finding of [Store.Verify].
type Problem struct {
	Path string
	Err  error
}

// Verify rehashes the content of every valid path and checks that its
// references are valid. It returns what it found wrong; the error is for
// failures to run at all.
func (s *Store) Verify(ctx context.Context) ([]Problem, error) {
	paths, err := s.Paths()
	if err != nil {
		return nil, err
	}
	return s.VerifyPaths(ctx, paths)
}

// VerifyPaths is [Store.Verify] for the given paths only (a system's
// closure, say): each must be registered, have valid references and hash
// to its recorded NAR hash and size.
func (s *Store) VerifyPaths(ctx context.Context, paths []string) ([]Problem, error) {
	var problems []Problem
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return problems, err
		}
		pi, err := s.Info(p)
		if err != nil {
			problems = append(problems, Problem{p, err})
			continue
		}
		for _, r := range pi.References {
			if ok, err := s.Valid(r); !ok {
				problems = append(problems, Problem{p, &InvalidReferenceError{Ref: r, Err: err}})
			}
		}
		h := newHashWriter()
		if err := nar.Dump(h, s.RealPath(p)); err != nil {
			problems = append(problems, Problem{p, err})
			continue
		}
		if got := h.sum(); got != pi.NarHash || h.n != pi.NarSize {
			problems = append(problems, Problem{p, &HashMismatchError{Path: p, WantHash: pi.NarHash, GotHash: got, WantSize: pi.NarSize, GotSize: h.n}})
		}
	}
	return problems, nil
}
