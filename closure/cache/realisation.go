package cache

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"strings"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/limits"
)

// A Realisation says which store path a build's inputs gave: Key names the
// inputs (for a go package, "go-package-v1-" and the hex SHA-256 of its
// source tree's NAR hash, the Go toolchain's version and hash, the target
// platform, flags and name: modules' build key), Out is the output. Whoever
// builds and pushes (CI) writes one per package it built, signed with the
// cache's key, at realisations/KEY.json, after the output's closure; a
// machine about to build the same inputs reads it, checks the signature
// against the fleet's cache keys, fetches Out's closure (each path checked
// as any fetched path is) and builds nothing. Nix calls this a realisation
// (of a content-addressed derivation's output) and keeps them under
// realisations/ too; the format here is deploy's own (JSON, below), the
// narinfos and NARs of the outputs stay Nix's.
//
//	{"key": "go-package-v1-<64 hex>", "out": "/var/lib/deploy/store/<hash>-hello",
//	 "sigs": ["cache-1:<base64 ed25519 signature of the fingerprint>"]}
//
// The fingerprint signed is "deploy-realisation-1;KEY;OUT".
type Realisation struct {
	Key  string   `json:"key"`
	Out  string   `json:"out"`
	Sigs []string `json:"sigs"`
}

// realisationKeyRE is what a realisation key may look like: it becomes a
// file name in the cache.
var realisationKeyRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*-v[0-9]+-[0-9a-f]{64}$`)

// RealisationFile is the cache key of the realisation of key.
func RealisationFile(key string) string { return "realisations/" + key + ".json" }

func (r *Realisation) fingerprint() []byte {
	return []byte("deploy-realisation-1;" + r.Key + ";" + r.Out)
}

// SignRealisation adds k's signature to r.
func (k *SecretKey) SignRealisation(r *Realisation) {
	sig := ed25519.Sign(k.Key, r.fingerprint())
	r.Sigs = append(r.Sigs, k.Name+":"+base64.StdEncoding.EncodeToString(sig))
}

// VerifyRealisation checks that one of r's signatures is valid by one of
// keys and returns that key's name, or an error wrapping [ErrUntrusted].
func VerifyRealisation(r *Realisation, keys []*PublicKey) (string, error) {
	name, names := verifySigs(r.Sigs, r.fingerprint(), keys)
	switch {
	case name != "":
		return name, nil
	case len(names) == 0:
		return "", fmt.Errorf("realisation %s: unsigned: %w", r.Key, ErrUntrusted)
	}
	return "", fmt.Errorf("realisation %s: signed by %s: %w", r.Key, strings.Join(names, ", "), ErrUntrusted)
}

// PushRealisations signs each of rs with p.Key and writes it. Their outputs'
// closures must be in the cache already (push them first): a realisation
// never names a path the cache lacks.
func (p *Pusher) PushRealisations(ctx context.Context, rs []Realisation) error {
	if p.Key == nil {
		return errors.New("cache push: no signing key")
	}
	for _, r := range rs {
		if !realisationKeyRE.MatchString(r.Key) {
			return fmt.Errorf("realisation key %q: not a build key", r.Key)
		}
		r.Sigs = nil
		p.Key.SignRealisation(&r)
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if err := p.Cache.Put(ctx, RealisationFile(r.Key), strings.NewReader(string(data)), int64(len(data)), "application/json"); err != nil {
			return fmt.Errorf("writing %s: %w", RealisationFile(r.Key), err)
		}
	}
	return nil
}

// Substitute returns the output path that a trusted realisation of key
// names, with its closure fetched into s (every path checked), or "" when
// the cache has no realisation of key. A realisation that is there but not
// trusted (unsigned, signed by another key, malformed, naming another
// store) is an error wrapping [ErrUntrusted] or a *[VerifyError]: the
// caller builds instead, and says why.
func (f *Fetcher) Substitute(ctx context.Context, s *closure.Store, key string) (string, error) {
	if !realisationKeyRE.MatchString(key) {
		return "", fmt.Errorf("realisation key %q: not a build key", key)
	}
	file := RealisationFile(key)
	rctx, cancel, hit := limits.WithDeadline(ctx, f.timeout())
	defer cancel()
	rc, err := f.Cache.Get(rctx, file)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if hit(err) {
		return "", &UnavailableError{Cache: f.Cache.String(), Err: fmt.Errorf("reading %s: deadline", file)}
	}
	if err != nil {
		return "", err
	}
	data, err := io.ReadAll(&limits.Reader{R: rc, Limit: orInt(f.MaxNarInfoSize, limits.DefaultDocument), Object: file})
	rc.Close()
	if err != nil {
		return "", &UnavailableError{Cache: f.Cache.String(), Err: fmt.Errorf("reading %s: %w", file, err)}
	}
	var r Realisation
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return "", &VerifyError{Path: file, Err: fmt.Errorf("malformed: %w", err)}
	}
	if r.Key != key {
		return "", &VerifyError{Path: file, Err: fmt.Errorf("it is the realisation of %q", r.Key)}
	}
	if _, err := VerifyRealisation(&r, f.Keys); err != nil {
		return "", &VerifyError{Path: file, Err: err}
	}
	if dir, _, ok := strings.Cut(strings.TrimPrefix(r.Out, s.StoreDir+"/"), "/"); !strings.HasPrefix(r.Out, s.StoreDir+"/") || ok || dir == "" {
		return "", &VerifyError{Path: file, Err: fmt.Errorf("its output %q is not a path of the store %s", r.Out, s.StoreDir)}
	}
	if _, err := f.FetchClosure(ctx, s, r.Out); err != nil {
		return "", err
	}
	return r.Out, nil
}
