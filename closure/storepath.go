package closure

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/declarative/deploy/agentapi"
)

// DefaultStoreDir is the logical store directory on every target.
const DefaultStoreDir = agentapi.DefaultStateDir + "/store"

// HashLen is the length of the nix32 hash part of a store path's base name.
const HashLen = 32

// MaxNameLen is the longest name Nix accepts in a store path.
const MaxNameLen = 211

// CheckName reports whether name is a valid store path name, by Nix's rules:
// 1 to 211 characters from [A-Za-z0-9+-._?=], not starting with a period.
func CheckName(name string) error {
	if name == "" {
		return fmt.Errorf("store path name is empty")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("store path name %q: longer than %d characters", name, MaxNameLen)
	}
	if name[0] == '.' {
		return fmt.Errorf("store path name %q: starts with a period", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("+-._?=", c) >= 0:
		default:
			return fmt.Errorf("store path name %q: invalid character %q", name, c)
		}
	}
	return nil
}

// CheckStoreDir reports whether dir can serve as a logical store directory:
// an absolute, clean path other than "/".
func CheckStoreDir(dir string) error {
	if !path.IsAbs(dir) || path.Clean(dir) != dir || dir == "/" {
		return fmt.Errorf("store directory %q: must be an absolute clean path other than /", dir)
	}
	return nil
}

// MakeSourcePath computes the store path of a content-addressed "source"
// object with the given NAR hash (SHA-256), name and references (full store
// paths), exactly as Nix does for `nix-store --add` and fixed-output
// recursive SHA-256 paths:
//
//	type        = "source" + ":" + ref ... (references sorted)
//	fingerprint = type + ":sha256:" + hex(narHash) + ":" + storeDir + ":" + name
//	path        = storeDir + "/" + nix32(xorfold20(sha256(fingerprint))) + "-" + name
//
// Self-references are not supported.
func MakeSourcePath(storeDir string, narHash [32]byte, name string, refs []string) (string, error) {
	if err := CheckStoreDir(storeDir); err != nil {
		return "", err
	}
	if err := CheckName(name); err != nil {
		return "", err
	}
	sorted := slices.Clone(refs)
	slices.Sort(sorted)
	var b strings.Builder
	b.WriteString("source")
	for _, r := range sorted {
		if _, _, err := SplitPath(storeDir, r); err != nil {
			return "", fmt.Errorf("reference: %w", err)
		}
		b.WriteString(":")
		b.WriteString(r)
	}
	b.WriteString(":sha256:")
	b.WriteString(hex.EncodeToString(narHash[:]))
	b.WriteString(":")
	b.WriteString(storeDir)
	b.WriteString(":")
	b.WriteString(name)
	h := sha256.Sum256([]byte(b.String()))
	return storeDir + "/" + Nix32(xorFold(h[:], 20)) + "-" + name, nil
}

// SplitPath checks that p is a store path directly inside storeDir and returns
// its hash part and name.
func SplitPath(storeDir, p string) (hash, name string, err error) {
	dir, base := path.Split(p)
	if dir != storeDir+"/" {
		return "", "", fmt.Errorf("path %q: not in store %q", p, storeDir)
	}
	hash, name, ok := strings.Cut(base, "-")
	if !ok || len(hash) != HashLen {
		return "", "", fmt.Errorf("path %q: base name is not <hash>-<name>", p)
	}
	if _, err := ParseNix32(hash, 20); err != nil {
		return "", "", fmt.Errorf("path %q: bad hash part: %w", p, err)
	}
	if err := CheckName(name); err != nil {
		return "", "", fmt.Errorf("path %q: %w", p, err)
	}
	return hash, name, nil
}
