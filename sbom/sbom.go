// Package sbom describes a host's system closure as a software bill of
// materials: every store path with its kind, NAR hash and references, the
// Go modules (with versions) of Go binaries, read from their build info,
// and the manifest digest of OCI images. [Describe] reads it from the
// store; [BOM.CycloneDX] and [BOM.SPDX] render it in those standards' JSON
// forms.
//
// # Kinds
//
// The system path is "system", the agent's path "agent"; a package of the
// manifest is "package-go" (it holds Go executables), "package-oci" (an
// image: manifest.json, config.json and rootfs/), "package-nix" (a path
// under /nix/store) or "package"; unit files are "unit", file contents
// "file", activation scripts "activation-script"; anything else the
// closure holds (what those reference) is "dependency".
//
// # Why a path is there
//
// [Chain] finds the shortest chain of references from one path to another
// (as nix why-depends does), and [FindReference] the file of a path that
// holds a reference.
package sbom

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
)

// Kinds of store paths.
const (
	KindSystem           = "system"
	KindAgent            = "agent"
	KindPackage          = "package"
	KindPackageGo        = "package-go"
	KindPackageOCI       = "package-oci"
	KindPackageNix       = "package-nix"
	KindUnit             = "unit"
	KindFile             = "file"
	KindActivationScript = "activation-script"
	KindDependency       = "dependency"
)

// BOM is the bill of materials of one host's system.
type BOM struct {
	Host       string
	System     string      // the system's store path
	Components []Component // every path of the closure, references first
}

// Component is one store path.
type Component struct {
	Path       string // full store path
	Name       string // the package's name in the fleet, else the path's name
	Kind       string
	NarHash    [32]byte
	NarSize    int64
	References []string // full store paths, sorted, without the path itself
	// Binaries are the Go executables in the path (agent and Go packages).
	Binaries []GoBinary
	// ImageDigest is an OCI image's manifest digest ("sha256:...").
	ImageDigest string
}

// GoBinary is a Go executable and what it was built from.
type GoBinary struct {
	File      string // relative to the store path
	GoVersion string // "go1.26.1"
	Main      Module
	Deps      []Module
}

// Module is a Go module, as recorded in a binary's build info.
type Module struct {
	Path    string
	Version string // "(devel)" for a main module built from a directory
	Sum     string // go.sum's h1: hash, when recorded
}

// Describe makes the BOM of a closure (closure order: references first)
// whose root is system and whose manifest is m. realPath maps a store path
// to where its files are on this machine ([closure.Store.RealPath]).
func Describe(cl []*closure.PathInfo, m *manifest.Manifest, system string, realPath func(string) string) (*BOM, error) {
	kinds := map[string]string{}
	names := map[string]string{}
	if m != nil {
		for _, u := range m.Units {
			kinds[u.Source] = KindUnit
		}
		for _, f := range m.Files {
			kinds[f.Source] = KindFile
		}
		for _, a := range m.ActivationScripts {
			kinds[a.Source] = KindActivationScript
		}
		for _, p := range m.Packages {
			kinds[p.Path] = KindPackage
			names[p.Path] = p.Name
		}
		if m.Agent != "" {
			kinds[m.Agent] = KindAgent
		}
	}
	kinds[system] = KindSystem
	b := &BOM{System: system}
	if m != nil {
		b.Host = m.Host
	}
	found := false
	for _, pi := range cl {
		c := Component{Path: pi.Path, Name: names[pi.Path], Kind: kinds[pi.Path], NarHash: pi.NarHash, NarSize: pi.NarSize}
		if c.Name == "" {
			c.Name = pathName(pi.Path)
		}
		if c.Kind == "" {
			c.Kind = KindDependency
		}
		for _, r := range pi.References {
			if r != pi.Path {
				c.References = append(c.References, r)
			}
		}
		dir := realPath(pi.Path)
		switch c.Kind {
		case KindPackage, KindAgent, KindDependency:
			bins, err := goBinaries(dir)
			if err != nil {
				return nil, fmt.Errorf("sbom of %q: %w", pi.Path, err)
			}
			c.Binaries = bins
			digest, isImage, err := imageDigest(dir)
			if err != nil {
				return nil, fmt.Errorf("sbom of %q: %w", pi.Path, err)
			}
			switch {
			case c.Kind != KindPackage:
			case isImage:
				c.Kind, c.ImageDigest = KindPackageOCI, digest
			case len(bins) > 0:
				c.Kind = KindPackageGo
			case strings.HasPrefix(pi.Path, "/nix/store/"):
				c.Kind = KindPackageNix
			}
		}
		if pi.Path == system {
			found = true
		}
		b.Components = append(b.Components, c)
	}
	if !found {
		return nil, fmt.Errorf("sbom: the closure does not hold the system %q", system)
	}
	return b, nil
}

// pathName is the name part of a store path ("<hash>-<name>").
func pathName(p string) string {
	base := filepath.Base(p)
	if i := strings.IndexByte(base, '-'); i >= 0 {
		return base[i+1:]
	}
	return base
}

// goBinaries finds the Go executables in dir (a file, or a tree walked
// without following symlinks) and reads their build info.
func goBinaries(dir string) ([]GoBinary, error) {
	var out []GoBinary
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o111 == 0 || !isELF(p) {
			return nil
		}
		bi, err := buildinfo.ReadFile(p)
		if err != nil {
			return nil // not a Go binary (or one without build info)
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			rel = filepath.Base(p)
		}
		g := GoBinary{File: rel, GoVersion: bi.GoVersion,
			Main: Module{Path: bi.Main.Path, Version: bi.Main.Version, Sum: bi.Main.Sum}}
		for _, m := range bi.Deps {
			if m.Replace != nil {
				m = m.Replace
			}
			g.Deps = append(g.Deps, Module{Path: m.Path, Version: m.Version, Sum: m.Sum})
		}
		sort.Slice(g.Deps, func(i, j int) bool { return g.Deps[i].Path < g.Deps[j].Path })
		out = append(out, g)
		return nil
	})
	return out, err
}

func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	return err == nil && string(magic[:]) == "\x7fELF"
}

// imageDigest reports whether dir is an OCI image as the oci package
// stores it (manifest.json, config.json, layers) and its manifest's
// digest: the SHA-256 of manifest.json's bytes, which are the registry's.
func imageDigest(dir string) (string, bool, error) {
	for _, n := range []string{"config.json", "layers"} {
		if _, err := os.Lstat(filepath.Join(dir, n)); err != nil {
			return "", false, nil
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:]), true, nil
}

// Chain returns the shortest chain of references from from to to in the
// closure cl, both ends included, or nil if from does not depend on to.
func Chain(cl []*closure.PathInfo, from, to string) []string {
	refs := map[string][]string{}
	for _, pi := range cl {
		refs[pi.Path] = pi.References
	}
	if _, ok := refs[from]; !ok {
		return nil
	}
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var chain []string
			for q := to; q != ""; q = prev[q] {
				chain = append([]string{q}, chain...)
			}
			return chain
		}
		for _, r := range refs[p] {
			if _, seen := prev[r]; !seen {
				prev[r] = p
				queue = append(queue, r)
			}
		}
	}
	return nil
}

// FindReference returns the first file (relative to dir, "." for dir
// itself; a symlink's target counts) under dir that contains hashPart, the
// hash part of a store path, with up to 30 bytes of context either side.
func FindReference(dir, hashPart string) (file, context string, err error) {
	needle := []byte(hashPart)
	errFound := errors.New("found")
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var data []byte
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			data = []byte(t)
		case d.Type().IsRegular():
			data, err = os.ReadFile(p)
			if err != nil {
				return err
			}
		default:
			return nil
		}
		i := bytes.Index(data, needle)
		if i < 0 {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		file = rel
		lo, hi := max(0, i-30), min(len(data), i+len(needle)+30)
		context = printable(data[lo:hi])
		return errFound
	})
	if errors.Is(err, errFound) {
		return file, context, nil
	}
	return "", "", err
}

func printable(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			s.WriteByte(c)
		} else {
			s.WriteByte('.')
		}
	}
	return s.String()
}
