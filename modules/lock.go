package modules

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/internal/atomicfile"
)

// LockFileName is the lock file's name in a fleet directory.
const LockFileName = "deploy.lock"

// LockVersion is the version of the lock file format.
const LockVersion = 1

// Lock is deploy.lock: every external input of a fleet, pinned by hash.
// The external inputs are url packages, keyed by URL, OCI images, keyed by
// the image reference and the platform (see [ImageLockKey]), and the Go
// toolchain, keyed by the platform that builds (see [GoToolchainLockKey]).
type Lock struct {
	Version int                    `json:"version"`
	Inputs  map[string]LockedInput `json:"inputs"`
}

// LockedInput is one pinned input.
type LockedInput struct {
	// Type is "url", "oci" or "go".
	Type string `json:"type"`
	// SHA256 is the hex SHA-256 of a url input's bytes.
	SHA256 string `json:"sha256,omitempty"`
	// Digest is the digest of an oci input's image manifest for the
	// platform ("sha256:<hex>").
	Digest string `json:"digest,omitempty"`
	// Sum is the go.sum hash of a go input's toolchain module zip for the
	// platform ("h1:<base64>").
	Sum string `json:"sum,omitempty"`
}

// Lock input types.
const (
	LockURL = "url"
	LockOCI = "oci"
)

// ImageLockKey is the key of deploy.lock under which image ref is pinned
// for Linux hosts of architecture arch (a GOARCH): the reference as written,
// a space and the platform, e.g. "registry.example.com/nginx:1.27
// linux/amd64". Hosts of different architectures pin different manifests of
// the same multi-platform image.
func ImageLockKey(ref, arch string) string { return ref + " linux/" + arch }

// ReadLock reads the lock file of fleetDir; a missing file is an empty lock.
func ReadLock(fleetDir string) (*Lock, error) {
	data, err := os.ReadFile(filepath.Join(fleetDir, LockFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return &Lock{Version: LockVersion, Inputs: map[string]LockedInput{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", LockFileName, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var l Lock
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", LockFileName, err)
	}
	if l.Version != LockVersion {
		return nil, fmt.Errorf("parsing %s: version %d is not supported (want %d)", LockFileName, l.Version, LockVersion)
	}
	if l.Inputs == nil {
		l.Inputs = map[string]LockedInput{}
	}
	for k, in := range l.Inputs {
		switch in.Type {
		case LockURL:
			if _, err := ParseSHA256(in.SHA256); err != nil || in.Digest != "" {
				return nil, fmt.Errorf("parsing %s: input %q: a url input has a hex sha256 and no digest", LockFileName, k)
			}
		case LockOCI:
			if !validDigest(in.Digest) || in.SHA256 != "" || !strings.Contains(k, " linux/") {
				return nil, fmt.Errorf("parsing %s: input %q: an oci input is keyed \"IMAGE linux/ARCH\" and has a digest \"sha256:<64 hex digits>\"", LockFileName, k)
			}
		case LockGo:
			version, platform, _ := strings.Cut(k, " ")
			if strings.Count(platform, "/") != 1 || CheckGoVersion(version) != nil || !strings.HasPrefix(in.Sum, "h1:") || in.SHA256 != "" || in.Digest != "" {
				return nil, fmt.Errorf("parsing %s: input %q: a go input is keyed \"goVERSION GOOS/GOARCH\" (\"go1.27.3 linux/amd64\") and has a sum \"h1:...\"", LockFileName, k)
			}
		default:
			return nil, fmt.Errorf("parsing %s: input %q: type %q is not \"url\", \"oci\" or \"go\" (a newer deploy wrote it?)", LockFileName, k, in.Type)
		}
	}
	return &l, nil
}

// Marshal returns the lock file's canonical encoding.
func (l *Lock) Marshal() []byte {
	c := *l
	c.Version = LockVersion
	if c.Inputs == nil {
		c.Inputs = map[string]LockedInput{}
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		panic("modules: encoding a Lock cannot fail: " + err.Error())
	}
	return append(data, '\n')
}

// Write writes the lock file into fleetDir atomically.
func (l *Lock) Write(fleetDir string) error {
	if err := atomicfile.Write(filepath.Join(fleetDir, LockFileName), l.Marshal(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", LockFileName, err)
	}
	return nil
}

// ParseSHA256 accepts a SHA-256 as 64 hex digits or as SRI
// ("sha256-<base64>") and returns it as lowercase hex.
func ParseSHA256(s string) (string, error) {
	if rest, ok := strings.CutPrefix(s, "sha256-"); ok {
		b, err := base64.StdEncoding.DecodeString(rest)
		if err != nil || len(b) != 32 {
			return "", fmt.Errorf("%q is not a SHA-256 in SRI form (sha256-<44 base64 characters>)", s)
		}
		return hex.EncodeToString(b), nil
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return "", fmt.Errorf("%q is not a SHA-256: want 64 hex digits or sha256-<base64>", s)
	}
	return hex.EncodeToString(b), nil
}

// validDigest reports whether d is "sha256:" and 64 lowercase hex digits.
func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}
