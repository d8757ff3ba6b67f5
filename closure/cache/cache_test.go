package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/testenv"
)

// nixCmd runs nix (single-user, no daemon) and returns its stdout.
func nixCmd(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	nix := testenv.NeedTool(t, "nix", "nix-bin")
	cmd := exec.Command(nix, append([]string{"--extra-experimental-features", "nix-command"}, args...)...)
	cmd.Env = append(os.Environ(), "NIX_REMOTE=", "HOME="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, errors.New(err.Error() + ": " + stderr.String())
	}
	return out, nil
}

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// nixStoreClosure adds a library and an app that refers to it to a store
// for /nix/store, and returns the closure, references first.
func nixStoreClosure(t *testing.T) (*closure.Store, []string) {
	t.Helper()
	s, err := closure.NewLocalStore(t.TempDir(), "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lib, err := s.AddTree(ctx, writeTree(t, map[string]string{"lib/libhello.so": strings.Repeat("lib ", 5000)}), "hello-lib", nil)
	if err != nil {
		t.Fatal(err)
	}
	app, err := s.AddTree(ctx, writeTree(t, map[string]string{"bin/hello": "#!/bin/sh\n# uses " + lib.Path + "\necho hello\n"}), "hello", []string{lib.Path})
	if err != nil {
		t.Fatal(err)
	}
	return s, []string{lib.Path, app.Path}
}

// A nix-made narinfo reads and writes back byte for byte, and our
// signature over the same path with the same key is Nix's (ed25519 is
// deterministic): the fingerprint is exactly Nix's.
func TestNarInfoAndSignatureMatchNix(t *testing.T) {
	dir := t.TempDir()
	nixStore := testenv.NeedTool(t, "nix-store", "nix-bin")
	gen := exec.Command(nixStore, "--generate-binary-cache-key", "test-1", filepath.Join(dir, "sec"), filepath.Join(dir, "pub"))
	gen.Env = append(os.Environ(), "NIX_REMOTE=")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("nix-store --generate-binary-cache-key: %v\n%s", err, out)
	}
	root := filepath.Join(dir, "root")
	tree := writeTree(t, map[string]string{"a": "hello\n", "sub/b": "b\n"})
	out, err := nixCmd(t, "store", "add-path", "--store", root, tree)
	if err != nil {
		t.Fatal(err)
	}
	storePath := strings.TrimSpace(string(out))
	cacheDir := filepath.Join(dir, "cache")
	if _, err := nixCmd(t, "copy", "--store", root, "--to", "file://"+cacheDir+"?secret-key="+filepath.Join(dir, "sec"), storePath); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(cacheDir, Key(storePath)))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := ParseNarInfo("/nix/store", data)
	if err != nil {
		t.Fatal(err)
	}
	if got := ni.Marshal(); !bytes.Equal(got, data) {
		t.Errorf("Marshal(ParseNarInfo(nix's narinfo)):\n%s\nwant nix's:\n%s", got, data)
	}
	secData, _ := os.ReadFile(filepath.Join(dir, "sec"))
	sk, err := ParseSecretKey(string(secData))
	if err != nil {
		t.Fatal(err)
	}
	if got := sk.Sign(&ni.PathInfo); got != ni.Sig[0] {
		t.Errorf("our signature %s, nix's %s", got, ni.Sig[0])
	}
	pubData, _ := os.ReadFile(filepath.Join(dir, "pub"))
	pk, err := ParsePublicKey(string(pubData))
	if err != nil {
		t.Fatal(err)
	}
	if pk.String() != sk.Public().String() {
		t.Errorf("public key %s, derived from the secret key %s", pk, sk.Public())
	}
	if name, err := Verify(&ni.PathInfo, []*PublicKey{pk}); err != nil || name != "test-1" {
		t.Errorf("Verify(nix's narinfo) = %q, %v", name, err)
	}
	if ni.CA != ContentAddress(&ni.PathInfo) {
		t.Errorf("nix's CA %q, ours %q", ni.CA, ContentAddress(&ni.PathInfo))
	}
}

// A closure we push is read by nix: path-info lists it with our hash, size,
// signature and content address, and nix copy with our public key trusted
// copies it into a Nix store. (Nix also accepts these paths without a
// trusted signature, because their CA field proves their name: that our
// signature is exactly Nix's is TestNarInfoAndSignatureMatchNix.)
func TestNixReadsOurCache(t *testing.T) {
	s, paths := nixStoreClosure(t)
	sk, pk, err := GenerateKey("deploy-test-1")
	if err != nil {
		t.Fatal(err)
	}
	dir := Dir(t.TempDir())
	stats, err := (&Pusher{Cache: dir, Key: sk}).Push(context.Background(), s, paths)
	if err != nil || stats.Uploaded != 2 {
		t.Fatalf("Push = %+v, %v", stats, err)
	}
	again, err := (&Pusher{Cache: dir, Key: sk}).Push(context.Background(), s, paths)
	if err != nil || again.Uploaded != 0 {
		t.Fatalf("second Push = %+v, %v; want nothing uploaded", again, err)
	}
	out, err := nixCmd(t, "path-info", "--store", "file://"+string(dir), "--json", "--recursive", paths[1])
	if err != nil {
		t.Fatal(err)
	}
	var infos []struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    int64    `json:"narSize"`
		References []string `json:"references"`
		Signatures []string `json:"signatures"`
		CA         string   `json:"ca"`
	}
	if err := json.Unmarshal(out, &infos); err != nil || len(infos) != 2 {
		t.Fatalf("nix path-info: %v\n%s", err, out)
	}
	for _, in := range infos {
		pi, _ := s.Info(in.Path)
		sri := "sha256-" + base64.StdEncoding.EncodeToString(pi.NarHash[:])
		if in.NarHash != sri || in.NarSize != pi.NarSize || len(in.Signatures) != 1 || in.Signatures[0] != sk.Sign(pi) || in.CA != ContentAddress(pi) {
			t.Errorf("nix path-info %+v, want our hash, size, signature and CA", in)
		}
	}
	root := t.TempDir()
	if _, err := nixCmd(t, "copy", "--from", "file://"+string(dir), "--to", root, "--option", "trusted-public-keys", pk.String(), paths[1]); err != nil {
		t.Fatalf("nix copy trusting our key: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(root, paths[1], "bin/hello"))
	if err != nil || !strings.Contains(string(got), paths[0]) {
		t.Fatalf("the copied path in the Nix store: %q, %v", got, err)
	}
}

// Paths nix pushed (xz-compressed, signed by a Nix key) are fetched and
// verified into our store; a key we do not trust, or a tampered NAR, is
// refused and nothing becomes valid.
func TestFetchFromNixCache(t *testing.T) {
	dir := t.TempDir()
	nixStore := testenv.NeedTool(t, "nix-store", "nix-bin")
	gen := exec.Command(nixStore, "--generate-binary-cache-key", "nix-1", filepath.Join(dir, "sec"), filepath.Join(dir, "pub"))
	gen.Env = append(os.Environ(), "NIX_REMOTE=")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	root := filepath.Join(dir, "root")
	out, err := nixCmd(t, "store", "add-path", "--store", root, writeTree(t, map[string]string{"share/data": strings.Repeat("data\n", 10000)}))
	if err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(string(out))
	cacheDir := filepath.Join(dir, "cache")
	if _, err := nixCmd(t, "copy", "--store", root, "--to", "file://"+cacheDir+"?secret-key="+filepath.Join(dir, "sec"), p); err != nil {
		t.Fatal(err)
	}
	pubData, _ := os.ReadFile(filepath.Join(dir, "pub"))
	nixKey, err := ParsePublicKey(string(pubData))
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := GenerateKey("other-1")
	ctx := context.Background()

	s, _ := closure.NewLocalStore(t.TempDir(), "/nix/store")
	_, err = (&Fetcher{Cache: Dir(cacheDir), Keys: []*PublicKey{otherKey}}).Fetch(ctx, s, []string{p})
	var ve *VerifyError
	if !errors.As(err, &ve) || !errors.Is(err, ErrUntrusted) || ve.Path != p {
		t.Fatalf("fetch trusting another key: %v, want a VerifyError naming %s", err, p)
	}
	if ok, _ := s.Valid(p); ok {
		t.Fatal("an untrusted path became valid")
	}

	// Tamper with the NAR: flip a byte of the compressed file. The
	// signature still verifies, the content does not.
	nars, _ := filepath.Glob(filepath.Join(cacheDir, "nar", "*"))
	good, _ := os.ReadFile(nars[0])
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0xff
	os.WriteFile(nars[0], bad, 0o644)
	_, err = (&Fetcher{Cache: Dir(cacheDir), Keys: []*PublicKey{nixKey}}).Fetch(ctx, s, []string{p})
	if !errors.As(err, &ve) || ve.Path != p {
		t.Fatalf("fetch of a tampered NAR: %v, want a VerifyError naming %s", err, p)
	}
	if ok, _ := s.Valid(p); ok {
		t.Fatal("a tampered path became valid")
	}
	os.WriteFile(nars[0], good, 0o644)

	var progress []string
	fetched, err := (&Fetcher{Cache: Dir(cacheDir), Keys: []*PublicKey{otherKey, nixKey}, Progress: func(p string, n int64) { progress = append(progress, p) }}).Fetch(ctx, s, []string{p})
	if err != nil || len(fetched) != 1 || len(progress) != 1 {
		t.Fatalf("fetch = %v, %v (progress %v)", fetched, err, progress)
	}
	got, err := os.ReadFile(filepath.Join(s.RealPath(p), "share/data"))
	if err != nil || string(got) != strings.Repeat("data\n", 10000) {
		t.Fatalf("fetched content: %v", err)
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("store verify after the fetch: %v %v", problems, err)
	}
}

// What we push we fetch back: zstd, a reference chain, and a path whose
// reference the cache lacks is left for another source.
func TestPushFetchRoundTrip(t *testing.T) {
	src, paths := nixStoreClosure(t)
	sk, pk, _ := GenerateKey("rt-1")
	dir := Dir(t.TempDir())
	ctx := context.Background()
	if _, err := (&Pusher{Cache: dir, Key: sk}).Push(ctx, src, paths); err != nil {
		t.Fatal(err)
	}
	dst, _ := closure.NewLocalStore(t.TempDir(), "/nix/store")
	fetched, err := (&Fetcher{Cache: dir, Keys: []*PublicKey{pk}}).Fetch(ctx, dst, paths)
	if err != nil || len(fetched) != 2 || fetched[0] != paths[0] {
		t.Fatalf("Fetch = %v, %v; want both, references first", fetched, err)
	}
	// Only the app in the cache: it cannot be made valid without its
	// library, so nothing is fetched.
	only := Dir(t.TempDir())
	if _, err := (&Pusher{Cache: only, Key: sk}).Push(ctx, src, paths[1:]); err != nil {
		t.Fatal(err)
	}
	dst2, _ := closure.NewLocalStore(t.TempDir(), "/nix/store")
	fetched, err = (&Fetcher{Cache: only, Keys: []*PublicKey{pk}}).Fetch(ctx, dst2, paths)
	if err != nil || len(fetched) != 0 {
		t.Fatalf("Fetch without the reference = %v, %v; want nothing", fetched, err)
	}
	// A cache that cannot be reached is unavailable, not a verification
	// failure.
	_, err = (&Fetcher{Cache: &HTTP{Base: "http://127.0.0.1:1", Client: http.DefaultClient}, Keys: []*PublicKey{pk}}).Fetch(ctx, dst2, paths)
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Fetch from a closed port: %v, want an UnavailableError", err)
	}
}

// nixSignedCache writes a file:// cache holding one input-addressed path
// (its name is not its content address, as for everything Nix builds),
// signed by a key nix made, with nix store sign. It returns the cache
// directory, the path, and nix's public key.
func nixSignedCache(t *testing.T) (string, string, *PublicKey) {
	t.Helper()
	dir := t.TempDir()
	nixStore := testenv.NeedTool(t, "nix-store", "nix-bin")
	gen := exec.Command(nixStore, "--generate-binary-cache-key", "nixpkgs-test-1", filepath.Join(dir, "sec"), filepath.Join(dir, "pub"))
	gen.Env = append(os.Environ(), "NIX_REMOTE=")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	tree := writeTree(t, map[string]string{"bin/hello": "#!/bin/sh\necho hello from nixpkgs\n"})
	var narBuf bytes.Buffer
	if err := nar.Dump(&narBuf, tree); err != nil {
		t.Fatal(err)
	}
	var rnd [20]byte
	rand.Read(rnd[:])
	p := "/nix/store/" + closure.Nix32(rnd[:]) + "-hello-2.12"
	ni := &NarInfo{PathInfo: closure.PathInfo{Path: p, NarHash: sha256.Sum256(narBuf.Bytes()), NarSize: int64(narBuf.Len()), References: []string{}},
		Compression: "none", FileHash: sha256.Sum256(narBuf.Bytes()), FileSize: int64(narBuf.Len())}
	ni.URL = "nar/" + closure.Nix32(ni.FileHash[:]) + ".nar"
	cacheDir := filepath.Join(dir, "cache")
	os.MkdirAll(filepath.Join(cacheDir, "nar"), 0o755)
	os.WriteFile(filepath.Join(cacheDir, "nix-cache-info"), (&CacheInfo{StoreDir: "/nix/store"}).Marshal(), 0o644)
	os.WriteFile(filepath.Join(cacheDir, ni.URL), narBuf.Bytes(), 0o644)
	os.WriteFile(filepath.Join(cacheDir, Key(p)), ni.Marshal(), 0o644)
	if _, err := nixCmd(t, "store", "sign", "--store", "file://"+cacheDir, "--key-file", filepath.Join(dir, "sec"), p); err != nil {
		t.Fatalf("nix store sign: %v", err)
	}
	pubData, _ := os.ReadFile(filepath.Join(dir, "pub"))
	pk, err := ParsePublicKey(string(pubData))
	if err != nil {
		t.Fatal(err)
	}
	return cacheDir, p, pk
}

// A Nix-built (input-addressed) path signed by nix is fetched with its
// closure when its key is trusted; then sent to a host it is accepted only
// when the want list trusts that key (its name is not its content
// address: the signature vouches for it).
func TestNixPackagePath(t *testing.T) {
	cacheDir, p, pk := nixSignedCache(t)
	ctx := context.Background()
	local, _ := closure.NewLocalStore(t.TempDir(), "/nix/store")
	got, err := (&Fetcher{Cache: Dir(cacheDir), Keys: []*PublicKey{pk}}).FetchClosure(ctx, local, p)
	if err != nil || len(got) != 1 || got[0] != p {
		t.Fatalf("FetchClosure = %v, %v", got, err)
	}
	pi, _ := local.Info(p)
	if len(pi.Sig) != 1 || !strings.HasPrefix(pi.Sig[0], "nixpkgs-test-1:") {
		t.Fatalf("the local store's record of %s has signatures %v, want nix's", p, pi.Sig)
	}
	verify := func(pi *closure.PathInfo, keys []string) error {
		var pks []*PublicKey
		for _, k := range keys {
			pk, err := ParsePublicKey(k)
			if err != nil {
				return err
			}
			pks = append(pks, pk)
		}
		_, err := Verify(pi, pks)
		return err
	}
	_, otherKey, _ := GenerateKey("other-1")
	for _, tt := range []struct {
		name string
		keys []string
		ok   bool
	}{
		{"no keys", nil, false},
		{"another key", []string{otherKey.String()}, false},
		{"nix's key", []string{otherKey.String(), pk.String()}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host, _ := closure.NewLocalStore(t.TempDir(), "/nix/store")
			op, ag := net.Pipe()
			errc := make(chan error, 1)
			go func() {
				_, err := host.Receive(ctx, ag, ag, closure.ReceiveOptions{VerifySig: verify})
				ag.Close()
				errc <- err
			}()
			_, err := closure.Send(ctx, local, []string{p}, op, closure.SendOptions{Keys: tt.keys})
			op.Close()
			rerr := <-errc
			valid, _ := host.Valid(p)
			if tt.ok && (err != nil || rerr != nil || !valid) {
				t.Fatalf("send trusting %v: %v / %v, valid %v; want it accepted", tt.keys, err, rerr, valid)
			}
			if !tt.ok && (err == nil || valid) {
				t.Fatalf("send trusting %v: %v, valid %v; want it refused", tt.keys, err, valid)
			}
		})
	}
}

// failingNARs is a cache whose NAR uploads fail after some bytes.
type failingNARs struct{ Dir }

func (f failingNARs) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	if strings.HasPrefix(key, "nar/") {
		io.CopyN(io.Discard, r, size/2)
		return errors.New("connection reset")
	}
	return f.Dir.Put(ctx, key, r, size, ct)
}

// A failed NAR upload leaves no narinfo: the cache never names a NAR it
// does not hold whole, and the next push uploads the path again.
func TestPushFailureLeavesNoNarInfo(t *testing.T) {
	s, paths := nixStoreClosure(t)
	sk, _, _ := GenerateKey("fail-1")
	dir := Dir(t.TempDir())
	_, err := (&Pusher{Cache: failingNARs{dir}, Key: sk}).Push(context.Background(), s, paths)
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("Push = %v, want the upload's error", err)
	}
	if have, _ := dir.List(context.Background()); len(have) != 0 {
		t.Fatalf("narinfos after a failed push: %v", have)
	}
	stats, err := (&Pusher{Cache: dir, Key: sk}).Push(context.Background(), s, paths)
	if err != nil || stats.Uploaded != 2 {
		t.Fatalf("the next push = %+v, %v; want both paths uploaded", stats, err)
	}
}
