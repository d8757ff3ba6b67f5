package modules

import (
	"context"
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
