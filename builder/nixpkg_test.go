package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/manifest"
)

// A nix package: a signed store path (not content-addressed, as Nix's
// builds are) fetched with its closure from a binary cache when the store
// directory is /nix/store; the host's result names the key that vouches for
// it. With another store directory it is a configuration error at the
// package.
func TestNixPackage(t *testing.T) {
	sk, pk, _ := cache.GenerateKey("pkgs-1")
	cacheDir := t.TempDir()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "bin", "jq"), []byte("#!/bin/sh\necho jq\n"), 0o755)
	var buf bytes.Buffer
	if err := nar.Dump(&buf, tree); err != nil {
		t.Fatal(err)
	}
	p := "/nix/store/0c5sl7s4dlcrpf0yv21i0n8i1gdnd3vw-jq-1.7.1-bin"
	ni := &cache.NarInfo{PathInfo: closure.PathInfo{Path: p, NarHash: sha256.Sum256(buf.Bytes()), NarSize: int64(buf.Len()), References: []string{}},
		Compression: "none", FileHash: sha256.Sum256(buf.Bytes()), FileSize: int64(buf.Len())}
	ni.URL = "nar/" + closure.Nix32(ni.FileHash[:]) + ".nar"
	ni.Sig = []string{sk.Sign(&ni.PathInfo)}
	os.MkdirAll(filepath.Join(cacheDir, "nar"), 0o755)
	os.WriteFile(filepath.Join(cacheDir, ni.URL), buf.Bytes(), 0o644)
	os.WriteFile(filepath.Join(cacheDir, cache.Key(p)), ni.Marshal(), 0o644)

	fleet := writeFleet(t, map[string]string{"fleet.hcl": `host "web1" {
  address = "192.0.2.1"
  package "jq" {
    nix {
      path       = "` + p + `"
      cache      = "file://` + cacheDir + `"
      public_key = "` + pk.String() + `"
    }
  }
}
`})
	f, diags := Load(fleet)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	ctx := context.Background()
	s, _ := closure.NewLocalStore(t.TempDir(), "/nix/store")
	b := &Builder{Store: s, CacheDir: t.TempDir(), Agent: Agent{Binary: testAgent(t)}}
	res, diags := b.Build(ctx, f, "web1")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if !slices.ContainsFunc(res.Manifest.Packages, func(pkg manifest.Package) bool { return pkg.Path == p }) || !slices.Equal(res.TrustedKeys, []string{pk.String()}) {
		t.Fatalf("packages %v, trusted keys %v; want %s, vouched for by %s", res.Manifest.Packages, res.TrustedKeys, p, pk)
	}
	if got, err := os.ReadFile(filepath.Join(s.RealPath(p), "bin", "jq")); err != nil || !strings.Contains(string(got), "echo jq") {
		t.Fatalf("the fetched package: %q, %v", got, err)
	}

	_, diags = newTestBuilder(t, t.TempDir()).Build(ctx, f, "web1")
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "needs /nix/store") || diags[0].Subject == nil {
		t.Fatalf("a nix package with the default store directory: %v, want an error at the package naming /nix/store", diags)
	}
}
