// Package cache reads and writes Nix binary caches: the layout, narinfo
// files and signatures exactly as Nix's libstore makes them, so that `nix`
// reads what deploy pushes and deploy fetches what Nix pushed.
//
// # Layout
//
// A cache is a flat key space (an S3 bucket and prefix, an HTTP(S) URL, a
// directory):
//
//	nix-cache-info          StoreDir, WantMassQuery, Priority
//	<hash>.narinfo          one per path (hash: the store path's hash part)
//	nar/<filehash>.nar.zst  the path's NAR, compressed (.nar.xz, .nar)
//
// A path's NAR is always written before its narinfo, so a narinfo never
// points at a missing or partial NAR.
//
// # Trust
//
// Nothing is trusted for where it came from. A fetched path is accepted only
// when its narinfo carries a signature by one of the trusted keys over the
// path's fingerprint ([Fingerprint]), and its NAR matches the signed hash
// and size; the store then also checks that the path's name is its content
// address. Keys are ed25519, written as Nix writes them: "name:base64".
package cache

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/declarative/deploy/closure"
)

// NarInfo is a path's narinfo file.
type NarInfo struct {
	closure.PathInfo
	// URL is the NAR's key relative to the cache root, "nar/<filehash>.nar.zst".
	URL string
	// Compression is "zstd", "xz", "bzip2" or "none".
	Compression string
	// FileHash and FileSize describe the compressed NAR as stored.
	FileHash [32]byte
	FileSize int64
	// CA is the path's content address, "fixed:r:sha256:<nix32>" for the
	// paths deploy makes ("" when unknown).
	CA string
}

// Key returns the narinfo's key in the cache: "<hash part>.narinfo".
func Key(storePath string) string {
	base := path.Base(storePath)
	hash, _, _ := strings.Cut(base, "-")
	return hash + ".narinfo"
}

// Marshal writes the narinfo as Nix's NarInfo::to_string does: the same
// fields in the same order, references as base names.
func (ni *NarInfo) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "StorePath: %s\n", ni.Path)
	fmt.Fprintf(&b, "URL: %s\n", ni.URL)
	fmt.Fprintf(&b, "Compression: %s\n", ni.Compression)
	fmt.Fprintf(&b, "FileHash: sha256:%s\n", closure.Nix32(ni.FileHash[:]))
	fmt.Fprintf(&b, "FileSize: %d\n", ni.FileSize)
	fmt.Fprintf(&b, "NarHash: %s\n", ni.NarHashString())
	fmt.Fprintf(&b, "NarSize: %d\n", ni.NarSize)
	refs := make([]string, len(ni.References))
	for i, r := range ni.References {
		refs[i] = path.Base(r)
	}
	slices.Sort(refs)
	fmt.Fprintf(&b, "References: %s\n", strings.Join(refs, " "))
	if ni.Deriver != "" {
		fmt.Fprintf(&b, "Deriver: %s\n", path.Base(ni.Deriver))
	}
	sigs := slices.Clone(ni.Sig)
	slices.Sort(sigs)
	for _, s := range sigs {
		fmt.Fprintf(&b, "Sig: %s\n", s)
	}
	if ni.CA != "" {
		fmt.Fprintf(&b, "CA: %s\n", ni.CA)
	}
	return b.Bytes()
}

// ErrCorrupt is a narinfo that cannot be read.
var ErrCorrupt = errors.New("corrupt narinfo")

// ParseNarInfo reads a narinfo of a cache whose store directory is
// storeDir, as Nix's NarInfo constructor does: "Name: value" lines,
// references as base names, a missing Compression meaning bzip2; StorePath,
// URL, NarHash and a positive NarSize are required. Unknown fields are
// ignored.
func ParseNarInfo(storeDir string, data []byte) (*NarInfo, error) {
	ni := &NarInfo{}
	var havePath, haveHash bool
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: expecting \"Name: value\"", ErrCorrupt, i+1)
		}
		var err error
		switch name {
		case "StorePath":
			if _, _, err = closure.SplitPath(storeDir, value); err == nil {
				ni.Path, havePath = value, true
			}
		case "URL":
			ni.URL = value
		case "Compression":
			ni.Compression = value
		case "FileHash":
			ni.FileHash, err = closure.ParseNarHash(value)
		case "FileSize":
			ni.FileSize, err = strconv.ParseInt(value, 10, 64)
		case "NarHash":
			ni.NarHash, err = closure.ParseNarHash(value)
			haveHash = err == nil
		case "NarSize":
			ni.NarSize, err = strconv.ParseInt(value, 10, 64)
		case "References":
			if ni.References != nil {
				err = errors.New("extra References")
				break
			}
			ni.References = []string{}
			for _, r := range strings.Fields(value) {
				p := storeDir + "/" + r
				if _, _, err = closure.SplitPath(storeDir, p); err != nil {
					break
				}
				ni.References = append(ni.References, p)
			}
		case "Deriver":
			if value != "unknown-deriver" {
				ni.Deriver = storeDir + "/" + value
			}
		case "Sig":
			ni.Sig = append(ni.Sig, value)
		case "CA":
			ni.CA = value
		}
		if err != nil {
			return nil, fmt.Errorf("%w: line %d (%s): %v", ErrCorrupt, i+1, name, err)
		}
	}
	if ni.Compression == "" {
		ni.Compression = "bzip2"
	}
	switch {
	case !havePath:
		return nil, fmt.Errorf("%w: StorePath missing", ErrCorrupt)
	case !haveHash:
		return nil, fmt.Errorf("%w: NarHash missing", ErrCorrupt)
	case ni.URL == "":
		return nil, fmt.Errorf("%w: URL missing", ErrCorrupt)
	case ni.NarSize <= 0:
		return nil, fmt.Errorf("%w: NarSize missing or zero", ErrCorrupt)
	}
	if ni.References == nil {
		ni.References = []string{}
	}
	slices.Sort(ni.References)
	return ni, nil
}

// CacheInfo is a cache's nix-cache-info file.
type CacheInfo struct {
	StoreDir      string
	WantMassQuery bool
	Priority      int
}

// Marshal writes nix-cache-info.
func (ci *CacheInfo) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "StoreDir: %s\n", ci.StoreDir)
	if ci.WantMassQuery {
		b.WriteString("WantMassQuery: 1\n")
	}
	if ci.Priority != 0 {
		fmt.Fprintf(&b, "Priority: %d\n", ci.Priority)
	}
	return b.Bytes()
}

// ParseCacheInfo reads nix-cache-info.
func ParseCacheInfo(data []byte) (*CacheInfo, error) {
	ci := &CacheInfo{}
	for _, line := range strings.Split(string(data), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch name {
		case "StoreDir":
			ci.StoreDir = value
		case "WantMassQuery":
			ci.WantMassQuery = value == "1"
		case "Priority":
			ci.Priority, _ = strconv.Atoi(value)
		}
	}
	if ci.StoreDir == "" {
		return nil, errors.New("nix-cache-info: no StoreDir")
	}
	return ci, nil
}

// ContentAddress is the CA field of a path deploy made: every store path
// deploy makes is Nix's recursive (NAR) SHA-256 fixed-output path, its
// "source" recipe.
func ContentAddress(pi *closure.PathInfo) string {
	return "fixed:r:sha256:" + closure.Nix32(pi.NarHash[:])
}
