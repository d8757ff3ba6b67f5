package cache

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/declarative/deploy/closure"
)

// Fingerprint is what a narinfo's signature signs, as Nix's
// ValidPathInfo::fingerprint makes it:
// "1;<store path>;sha256:<nix32 NAR hash>;<NAR size>;<references as full
// paths, sorted, comma-separated>".
func Fingerprint(pi *closure.PathInfo) string {
	refs := slices.Sorted(slices.Values(pi.References))
	return "1;" + pi.Path + ";" + pi.NarHashString() + ";" + strconv.FormatInt(pi.NarSize, 10) + ";" + strings.Join(refs, ",")
}

// SecretKey is a signing key, as in Nix's secret key files: "name:base64"
// of the 64-byte ed25519 private key.
type SecretKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// PublicKey is a trusted key, as in Nix's trusted-public-keys:
// "name:base64" of the 32-byte ed25519 public key.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// GenerateKey makes a new key pair named name (for example
// "cache.example.com-1").
func GenerateKey(name string) (*SecretKey, *PublicKey, error) {
	if err := checkKeyName(name); err != nil {
		return nil, nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return &SecretKey{Name: name, Key: priv}, &PublicKey{Name: name, Key: pub}, nil
}

func checkKeyName(name string) error {
	if name == "" || strings.ContainsAny(name, ": \t\n") {
		return fmt.Errorf("key name %q: want a non-empty name without ':' or white space", name)
	}
	return nil
}

// String returns the key file's content (without a newline).
func (k *SecretKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// Public returns the key's public half.
func (k *SecretKey) Public() *PublicKey {
	return &PublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// String returns the key as Nix writes it.
func (k *PublicKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// ParseSecretKey reads a secret key file's content. The error never
// contains the key.
func ParseSecretKey(s string) (*SecretKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || checkKeyName(name) != nil {
		return nil, errors.New("secret key: want \"name:base64\" as written by deploy cache key generate or nix key generate-secret")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("secret key %q: not a base64 ed25519 private key", name)
	}
	return &SecretKey{Name: name, Key: ed25519.PrivateKey(raw)}, nil
}

// ParsePublicKey reads a public key, "name:base64".
func ParsePublicKey(s string) (*PublicKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || checkKeyName(name) != nil {
		return nil, fmt.Errorf("public key %q: want \"name:base64\"", s)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key %q: not a base64 ed25519 public key", s)
	}
	return &PublicKey{Name: name, Key: ed25519.PublicKey(raw)}, nil
}

// Sign returns the signature of pi, "name:base64", as Nix writes it in Sig.
func (k *SecretKey) Sign(pi *closure.PathInfo) string {
	sig := ed25519.Sign(k.Key, []byte(Fingerprint(pi)))
	return k.Name + ":" + base64.StdEncoding.EncodeToString(sig)
}

// ErrUntrusted is a path whose narinfo has no valid signature by a trusted
// key.
var ErrUntrusted = errors.New("no valid signature by a trusted key")

// Verify checks that one of pi's signatures is a valid signature of pi by
// one of keys. It returns the name of the key that signed it, or an error
// wrapping [ErrUntrusted] that says what was found.
func Verify(pi *closure.PathInfo, keys []*PublicKey) (string, error) {
	name, names := verifySigs(pi.Sig, []byte(Fingerprint(pi)), keys)
	switch {
	case name != "":
		return name, nil
	case len(names) == 0:
		return "", fmt.Errorf("%q: unsigned: %w", pi.Path, ErrUntrusted)
	}
	return "", fmt.Errorf("%q: signed by %s: %w", pi.Path, strings.Join(names, ", "), ErrUntrusted)
}

// verifySigs returns the name of the key of keys whose valid signature of
// msg is among sigs ("name:base64"), or "" and the names the signatures
// claim.
func verifySigs(sigs []string, msg []byte, keys []*PublicKey) (string, []string) {
	var names []string
	for _, s := range sigs {
		name, b64, ok := strings.Cut(s, ":")
		if !ok {
			continue
		}
		names = append(names, name)
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(sig) != ed25519.SignatureSize {
			continue
		}
		for _, k := range keys {
			if k.Name == name && ed25519.Verify(k.Key, msg, sig) {
				return name, nil
			}
		}
	}
	return "", names
}
