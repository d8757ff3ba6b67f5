package modules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// RealisationKeyGo starts the realisation key of a go package: the hex
// SHA-256 of its build inputs follows (the source tree's NAR hash, the Go
// toolchain's version and, when pinned, its hash, the target platform, the
// flags and the package's name).
const RealisationKeyGo = "go-package-v1-"

// A Substituter finds the output of a build by its inputs elsewhere (a
// binary cache), so that it need not be built here.
type Substituter interface {
	// Substitute returns the store path that the build with realisation
	// key gave, made valid in the builder's store, or "" when nobody has
	// recorded one. An error says why a recorded one was not used (not
	// trusted, unreachable): the package is built here instead.
	Substitute(ctx context.Context, key string) (string, error)
}

// Realisation is a build's inputs (Key) and the store path they gave.
type Realisation struct {
	Key, Out string
}

// BuildCounts say how the go packages a builder needed were obtained.
type BuildCounts struct {
	Compiled, Substituted int
}

// built records that the build of key gave p.
func (b *PackageBuilder) built(key, p string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.realisations == nil {
		b.realisations = map[string]string{}
	}
	b.realisations[key] = p
}

func (b *PackageBuilder) countCompiled() {
	b.mu.Lock()
	b.counts.Compiled++
	b.mu.Unlock()
}

func (b *PackageBuilder) countSubstituted() {
	b.mu.Lock()
	b.counts.Substituted++
	b.mu.Unlock()
}

// Realisations returns the go packages this builder obtained (built,
// substituted or found in its cache), by their build keys, sorted: what a
// push to a binary cache records for other machines.
func (b *PackageBuilder) Realisations() []Realisation {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Realisation, 0, len(b.realisations))
	for k, p := range b.realisations {
		out = append(out, Realisation{Key: k, Out: p})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Counts says how many go packages this builder compiled and how many it
// substituted.
func (b *PackageBuilder) Counts() BuildCounts {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counts
}

// FirstDifference compares the trees a and b (a store path's real path and
// a fresh build's output) and describes the first difference in walking
// order: a file only one has, another type, another symlink target, the
// executable bit, or other content (with both SHA-256s); "" when they are
// the same. Other permission bits are not compared: the store normalizes
// them.
func FirstDifference(a, b string) (string, error) {
	list := func(root string) (map[string]fs.FileInfo, []string, error) {
		m := map[string]fs.FileInfo{}
		var names []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			info, err := d.Info()
			if err != nil {
				return err
			}
			m[rel] = info
			names = append(names, rel)
			return nil
		})
		return m, names, err
	}
	am, an, err := list(a)
	if err != nil {
		return "", err
	}
	bm, bn, err := list(b)
	if err != nil {
		return "", err
	}
	names := append(an, bn...)
	sort.Strings(names)
	names = slices.Compact(names)
	for _, n := range names {
		ai, aok := am[n]
		bi, bok := bm[n]
		switch {
		case !aok:
			return fmt.Sprintf("%s is only in the rebuild", n), nil
		case !bok:
			return fmt.Sprintf("%s is missing from the rebuild", n), nil
		case ai.Mode().Type() != bi.Mode().Type():
			return fmt.Sprintf("%s is a %v, in the rebuild a %v", n, ai.Mode().Type(), bi.Mode().Type()), nil
		case ai.Mode()&fs.ModeSymlink != 0:
			at, _ := os.Readlink(filepath.Join(a, n))
			bt, _ := os.Readlink(filepath.Join(b, n))
			if at != bt {
				return fmt.Sprintf("%s links to %q, in the rebuild to %q", n, at, bt), nil
			}
		case ai.Mode().IsRegular():
			if ai.Mode()&0o100 != bi.Mode()&0o100 {
				return fmt.Sprintf("%s: executable %t, in the rebuild %t", n, ai.Mode()&0o100 != 0, bi.Mode()&0o100 != 0), nil
			}
			ah, err := fileSHA256(filepath.Join(a, n))
			if err != nil {
				return "", err
			}
			bh, err := fileSHA256(filepath.Join(b, n))
			if err != nil {
				return "", err
			}
			if ah != bh {
				return fmt.Sprintf("%s has other content (sha256 %s, in the rebuild %s; %d and %d bytes)", n, ah, bh, ai.Size(), bi.Size()), nil
			}
		}
	}
	return "", nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
