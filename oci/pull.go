package oci

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/unpack"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Layout names inside an image's store path (ManifestFile, ConfigFile,
// LayersFile), a layer's store path (LayerFile) and a realized root
// (RootDir).
const (
	ManifestFile = "manifest.json"
	ConfigFile   = "config.json"
	LayersFile   = "layers"
	LayerFile    = "layer"
	RootDir      = "rootfs"
)

// treeVersion counts changes to how an image becomes a tree (the unpack
// rules, the mount points added): it is part of the realized-image index
// key, so a new rule never reuses a path made by the old one.
const treeVersion = "2"

// Puller fetches images from registries into a store. Its zero value is
// not usable: set CacheDir. A Puller is safe for concurrent use.
type Puller struct {
	// CacheDir holds layer blobs (blobs/sha256/HEX), the index of
	// realized images (images/HEX), each file written atomically, and the
	// images' roots flattened for the builder's checks (roots/HEX-vN).
	CacheDir string
	// Keychain finds credentials (default authn.DefaultKeychain:
	// ~/.docker/config.json, its credential helpers, then Podman's
	// auth.json).
	Keychain authn.Keychain
	// Transport is the HTTP transport (default remote.DefaultTransport).
	// Plain HTTP requests are refused on top of it unless an image is
	// pulled with insecure set.
	Transport http.RoundTripper
	// Jobs bounds parallel blob downloads (default 4).
	Jobs int
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)

	// MaxBytes bounds an image: its layer blobs together, and what they
	// unpack to together (default 8 GiB); MaxEntries bounds the entries
	// of its layers (default 1,000,000). A blob is cut off as soon as
	// more arrives than its descriptor says. Settings says where they
	// are set, for errors (`in package "web"`: max_size, max_entries).
	MaxBytes   int64
	MaxEntries int64
	Settings   string
	// Timeout is a blob's whole deadline (default 1 minute) beyond its
	// size at MinRate bytes per second (default 64 KiB/s).
	Timeout time.Duration
	MinRate int64

	mu       sync.Mutex
	inFlight map[string]*sync.Mutex
}

func (p *Puller) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

// Platform returns the OCI platform of a Linux host whose GOARCH is arch.
func Platform(arch string) v1.Platform { return v1.Platform{OS: "linux", Architecture: arch} }

// httpsOnly refuses plain HTTP unless allowed: go-containerregistry falls
// back to HTTP on its own for loopback and private addresses.
type httpsOnly struct {
	base      http.RoundTripper
	allowHTTP bool
}

func (h *httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !h.allowHTTP {
		return nil, fmt.Errorf("plain HTTP to %s refused: the image does not say insecure = true", req.URL.Host)
	}
	return h.base.RoundTrip(req)
}

func (p *Puller) options(ctx context.Context, insecure bool) []remote.Option {
	base := p.Transport
	if base == nil {
		base = remote.DefaultTransport
	}
	kc := p.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithTransport(&httpsOnly{base: base, allowHTTP: insecure}),
		remote.WithUserAgent("deploy"),
	}
}

// ParseReference parses an image reference ("registry/repo:tag",
// "repo@sha256:...", Docker Hub's short forms).
func ParseReference(ref string, insecure bool) (name.Reference, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	return r, nil
}

// PinnedDigest returns the digest an image reference carries
// ("repo@sha256:..."), if any.
func PinnedDigest(ref string) (string, bool) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", false
	}
	d, ok := r.(name.Digest)
	if !ok {
		return "", false
	}
	return d.DigestStr(), true
}

// isIndex reports whether a manifest media type is a multi-platform index.
func isIndex(mt types.MediaType) bool {
	return mt == types.OCIImageIndex || mt == types.DockerManifestList
}

// Resolve returns the digest of the image manifest that ref names now for
// the platform: a tag pointing to a multi-platform index is resolved to
// the index's manifest for the platform. This is what `deploy lock` pins.
func (p *Puller) Resolve(ctx context.Context, ref string, insecure bool, platform v1.Platform) (string, error) {
	r, err := ParseReference(ref, insecure)
	if err != nil {
		return "", err
	}
	desc, err := remote.Get(r, p.options(ctx, insecure)...)
	if err != nil {
		return "", fmt.Errorf("resolving %q: %w", ref, err)
	}
	d, _, err := p.forPlatform(ctx, r, desc.MediaType, desc.Digest, desc.Manifest, insecure, platform)
	if err != nil {
		return "", fmt.Errorf("resolving %q: %w", ref, err)
	}
	return d.String(), nil
}

// forPlatform turns a manifest (an image's or an index's) into the image
// manifest for the platform, checking a single image's own platform.
func (p *Puller) forPlatform(ctx context.Context, r name.Reference, mt types.MediaType, dg v1.Hash, raw []byte, insecure bool, platform v1.Platform) (v1.Hash, []byte, error) {
	if isIndex(mt) {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return v1.Hash{}, nil, fmt.Errorf("parsing index %s: %w", dg, err)
		}
		var have []string
		for _, m := range idx.Manifests {
			if m.Platform == nil {
				continue
			}
			have = append(have, m.Platform.String())
			if m.Platform.Satisfies(platform) && !isIndex(m.MediaType) {
				desc, err := remote.Get(r.Context().Digest(m.Digest.String()), p.options(ctx, insecure)...)
				if err != nil {
					return v1.Hash{}, nil, err
				}
				return desc.Digest, desc.Manifest, nil
			}
		}
		return v1.Hash{}, nil, fmt.Errorf("the image has no manifest for %s (it has %s)", platform, strings.Join(have, ", "))
	}
	switch mt {
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		return v1.Hash{}, nil, fmt.Errorf("manifest %s has media type %q, which is not an image", dg, mt)
	}
	return dg, raw, nil
}

// Image is an image realized in the store: an image path that references
// one store path per layer.
type Image struct {
	// Path is the image's store path (manifest.json, config.json,
	// layers).
	Path string
	// Digest is the image manifest's digest.
	Digest string
	// Config is the image's configuration.
	Config v1.Config
	// Layers are the image's layers, bottom first.
	Layers []Layer
	// RootDir is the image's root flattened on this machine, outside the
	// store (types, executable bits and contents only): what the builder
	// looks into to resolve the image's user and command.
	RootDir string
	// Skipped lists layer entries left out of RootDir (device nodes,
	// FIFOs).
	Skipped []string
}

// Layer is one layer of an [Image].
type Layer struct {
	// Digest is the layer blob's digest.
	Digest string
	// Path is its store path, holding the blob as LayerFile.
	Path string
}

// StoreName is the name of the store path of the image whose manifest
// digest is digest: the same digest gives the same name, wherever the
// image came from.
func StoreName(digest string) string { return "oci-" + shortHex(digest) }

// LayerStoreName is the name of the store path of the layer whose blob
// digest is digest.
func LayerStoreName(digest string) string { return "oci-layer-" + shortHex(digest) }

func shortHex(digest string) string {
	hexPart := strings.TrimPrefix(digest, "sha256:")
	if len(hexPart) > 16 {
		hexPart = hexPart[:16]
	}
	return hexPart
}

// ParseLayers parses an image path's LayersFile: a line "DIGEST PATH" per
// layer, bottom first.
func ParseLayers(data []byte) ([]Layer, error) {
	var out []Layer
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" && len(data) == 0 {
			break
		}
		d, p, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(d, "sha256:") || len(d) != len("sha256:")+64 || !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("%s line %d: %q is not \"sha256:HEX PATH\"", LayersFile, i+1, line)
		}
		out = append(out, Layer{Digest: d, Path: p})
	}
	return out, nil
}

// FormatLayers is the LayersFile of layers.
func FormatLayers(layers []Layer) []byte {
	var b strings.Builder
	for _, l := range layers {
		b.WriteString(l.Digest + " " + l.Path + "\n")
	}
	return []byte(b.String())
}

// ReadImage reads the image configuration of an image store path whose
// content is at dir on this machine.
func ReadImage(dir string) (*v1.ConfigFile, error) {
	f, err := os.Open(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", dir, err)
	}
	defer f.Close()
	cf, err := v1.ParseConfigFile(f)
	if err != nil {
		return nil, fmt.Errorf("image %q: %s: %w", dir, ConfigFile, err)
	}
	return cf, nil
}

func (p *Puller) lockFor(key string) *sync.Mutex {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inFlight == nil {
		p.inFlight = map[string]*sync.Mutex{}
	}
	m, ok := p.inFlight[key]
	if !ok {
		m = &sync.Mutex{}
		p.inFlight[key] = m
	}
	return m
}

// Realize makes the store path of the image ref names at digest (the
// digest of an image manifest for the platform, or of an index that has
// one), unless the same digest was realized into s before.
func (p *Puller) Realize(ctx context.Context, s *closure.Store, ref, digest string, insecure bool, platform v1.Platform) (*Image, error) {
	return p.RealizeWithin(ctx, s, ref, digest, insecure, platform, Limits{MaxBytes: p.MaxBytes, MaxEntries: p.MaxEntries, Settings: p.Settings})
}

// Limits bound one image: see [Puller.MaxBytes].
type Limits struct {
	MaxBytes, MaxEntries int64
	Settings             string
}

func (l Limits) maxBytes() int64 {
	if l.MaxBytes > 0 {
		return l.MaxBytes
	}
	return limits.DefaultUnpacked
}

func (l Limits) setting(name string) string {
	if l.Settings == "" {
		return ""
	}
	return name + " " + l.Settings
}

// RealizeWithin is [Puller.Realize] with the limits of one image (a
// package's) instead of the Puller's.
func (p *Puller) RealizeWithin(ctx context.Context, s *closure.Store, ref, digest string, insecure bool, platform v1.Platform, lim Limits) (*Image, error) {
	mu := p.lockFor(digest)
	mu.Lock()
	defer mu.Unlock()
	indexFile := p.indexFile(digest, platform)
	if data, err := os.ReadFile(indexFile); err == nil {
		path := strings.TrimSpace(string(data))
		if img, err := p.cached(s, path, platform); err == nil {
			return img, nil
		}
	}
	img, err := p.realize(ctx, s, ref, digest, insecure, platform, lim)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(indexFile), 0o755); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(indexFile, []byte(img.Path+"\n"), 0o644); err != nil {
		return nil, err
	}
	if img.Digest != digest {
		// Pinned by an index: the root is named by the image manifest's
		// digest, and so is an index entry (which PruneRoots reads).
		if err := atomicfile.Write(p.indexFile(img.Digest, platform), []byte(img.Path+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// cached returns the image whose store path, valid in s, the index named,
// if its root is flattened in the cache.
func (p *Puller) cached(s *closure.Store, path string, platform v1.Platform) (*Image, error) {
	if ok, err := s.Valid(path); err != nil || !ok {
		return nil, fmt.Errorf("%s is not valid", path)
	}
	dir := s.RealPath(path)
	cf, err := ReadImage(dir)
	if err != nil {
		return nil, err
	}
	m, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, LayersFile))
	if err != nil {
		return nil, err
	}
	layers, err := ParseLayers(data)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(m)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	root := p.rootDir(digest, platform)
	if fi, err := os.Stat(filepath.Join(root, RootDir)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("no flattened root at %s", root)
	}
	return &Image{Path: path, Digest: digest, Config: cf.Config, Layers: layers, RootDir: filepath.Join(root, RootDir)}, nil
}

// indexFile records the image path realized for digest (an image's or an
// index's).
func (p *Puller) indexFile(digest string, platform v1.Platform) string {
	return filepath.Join(p.CacheDir, "images", strings.TrimPrefix(digest, "sha256:")+"-"+platform.Architecture+"-v"+treeVersion)
}

// rootDir is where the root of the image whose manifest digest is digest
// is flattened for the builder (its RootDir subdirectory).
func (p *Puller) rootDir(digest string, platform v1.Platform) string {
	return filepath.Join(p.CacheDir, "roots", strings.TrimPrefix(digest, "sha256:")+"-"+platform.Architecture+"-v"+treeVersion)
}

func (p *Puller) realize(ctx context.Context, s *closure.Store, ref, digest string, insecure bool, platform v1.Platform, lim Limits) (*Image, error) {
	r, err := ParseReference(ref, insecure)
	if err != nil {
		return nil, err
	}
	dg, err := v1.NewHash(digest)
	if err != nil {
		return nil, fmt.Errorf("digest %q: %w", digest, err)
	}
	opts := p.options(ctx, insecure)
	desc, err := remote.Get(r.Context().Digest(digest), opts...)
	if err != nil {
		return nil, fmt.Errorf("fetching manifest %s: %w", digest, err)
	}
	if desc.Digest != dg {
		return nil, fmt.Errorf("the registry answered manifest %s for %s", desc.Digest, digest)
	}
	mdg, raw, err := p.forPlatform(ctx, r, desc.MediaType, desc.Digest, desc.Manifest, insecure, platform)
	if err != nil {
		return nil, err
	}
	// go-containerregistry cuts a manifest off at 100 MiB; an image
	// manifest is a few KiB (registries need accept no more than 4 MiB).
	if len(raw) > maxManifest {
		return nil, &limits.TooLargeError{Object: "manifest " + mdg.String(), Limit: maxManifest, Got: int64(len(raw))}
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing manifest %s: %w", mdg, err)
	}
	repo := r.Context()
	var total int64
	for _, l := range m.Layers {
		if l.Size < 0 {
			return nil, fmt.Errorf("layer %s has size %d", l.Digest, l.Size)
		}
		total += l.Size
	}
	if max := lim.maxBytes(); total > max || total < 0 {
		return nil, &limits.TooLargeError{Object: fmt.Sprintf("image %s (%d layers)", mdg, len(m.Layers)), Limit: max, Got: total, Setting: lim.setting("max_size")}
	}
	cfgRaw, err := p.blobBytes(ctx, repo, m.Config, insecure, maxConfig)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(cfgRaw))
	if err != nil {
		return nil, fmt.Errorf("parsing config %s: %w", m.Config.Digest, err)
	}
	if cf.OS != platform.OS || cf.Architecture != platform.Architecture {
		return nil, fmt.Errorf("image %s is for %s/%s, the host is %s", mdg, cf.OS, cf.Architecture, platform)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("manifest %s lists %d layers, its config %d", mdg, len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	for _, l := range m.Layers {
		if !l.MediaType.IsLayer() || l.MediaType == types.DockerForeignLayer || !l.MediaType.IsDistributable() {
			return nil, fmt.Errorf("layer %s has media type %q, which this version cannot apply", l.Digest, l.MediaType)
		}
	}
	if err := p.fetchBlobs(ctx, repo, m.Layers, insecure, lim); err != nil {
		return nil, err
	}

	tmp := filepath.Join(p.CacheDir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	tree, err := unpack.NewTree(tmp)
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	tree.MaxBytes, tree.MaxEntries, tree.Settings = lim.MaxBytes, lim.MaxEntries, lim.Settings
	for i, l := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := p.applyLayer(tree, i, l, cf.RootFS.DiffIDs[i]); err != nil {
			return nil, err
		}
	}
	if err := mountPoints(tree); err != nil {
		return nil, err
	}
	for _, sk := range tree.Skipped {
		p.logf("image %s: %s", ref, sk)
	}
	root := p.rootDir(mdg.String(), platform)
	if err := writeRoot(tree, root); err != nil {
		return nil, err
	}

	// The store: a path per layer (the blob as served), then the image's.
	layers := make([]Layer, len(m.Layers))
	var refs []string
	for i, l := range m.Layers {
		pi, err := p.addLayer(ctx, s, l.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
		}
		layers[i] = Layer{Digest: l.Digest.String(), Path: pi.Path}
		refs = append(refs, pi.Path)
	}
	meta, err := unpack.NewTree(tmp)
	if err != nil {
		return nil, err
	}
	defer meta.Close()
	for name, data := range map[string][]byte{ManifestFile: raw, ConfigFile: cfgRaw, LayersFile: FormatLayers(layers)} {
		if err := meta.WriteFile(name, data, false); err != nil {
			return nil, err
		}
	}
	pi, err := meta.AddToStore(ctx, s, StoreName(mdg.String()), refs)
	if err != nil {
		return nil, err
	}
	return &Image{Path: pi.Path, Digest: mdg.String(), Config: cf.Config, Layers: layers, RootDir: filepath.Join(root, RootDir), Skipped: tree.Skipped}, nil
}

// addLayer adds the cached blob d as a layer store path: a directory
// holding the blob as LayerFile.
func (p *Puller) addLayer(ctx context.Context, s *closure.Store, d v1.Hash) (*closure.PathInfo, error) {
	dir, err := os.MkdirTemp(filepath.Join(p.CacheDir, "tmp"), "layer-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.Link(p.blobPath(d), filepath.Join(dir, LayerFile)); err != nil {
		return nil, err
	}
	return s.AddTree(ctx, dir, LayerStoreName(d.String()), nil)
}

// writeRoot writes the tree at dir (made anew, atomically) with the store's
// own restorer.
func writeRoot(tree *unpack.Tree, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(dir), ".tmp-"+filepath.Base(dir))
	if _, err := os.Lstat(tmp); err == nil {
		if err := nar.RemoveTree(tmp); err != nil {
			return err
		}
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tree.WriteNAR(pw)) }()
	_, err := nar.Restore(pr, tmp, nar.RestoreOptions{})
	pr.CloseWithError(errors.New("restore finished"))
	if err != nil {
		return fmt.Errorf("flattening the image's root: %w", err)
	}
	if _, err := os.Lstat(dir); err == nil {
		if err := nar.RemoveTree(dir); err != nil {
			return err
		}
	}
	return os.Rename(tmp, dir)
}

// mountPoints adds what systemd mounts over when the root filesystem is a
// service's RootDirectory=, so that it never has to create them inside the
// (read-only, content-addressed) store path.
func mountPoints(tree *unpack.Tree) error {
	// /root, /home and /usr are where ProtectHome= and ProtectSystem=
	// (which DynamicUser= implies) mount.
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "var/tmp", "root", "home", "usr"} {
		if err := tree.Mkdir(RootDir + "/" + d); err != nil {
			return fmt.Errorf("adding mount point /%s: %w", d, err)
		}
	}
	for _, f := range []string{"etc/resolv.conf", "etc/hosts"} {
		if k := tree.Lookup(RootDir + "/" + f); k == "file" || k == "executable" {
			continue
		}
		if err := tree.WriteFile(RootDir+"/"+f, nil, false); err != nil {
			return fmt.Errorf("adding mount point /%s: %w", f, err)
		}
	}
	return nil
}

// The limits of an image's small documents.
const (
	maxManifest = 4 << 20
	maxConfig   = 16 << 20
)

func (p *Puller) blobPath(d v1.Hash) string {
	return filepath.Join(p.CacheDir, "blobs", d.Algorithm, d.Hex)
}

// blobBytes returns a small blob (a config), from the cache or the
// registry.
func (p *Puller) blobBytes(ctx context.Context, repo name.Repository, desc v1.Descriptor, insecure bool, max int64) ([]byte, error) {
	d := desc.Digest
	if desc.Size > max {
		return nil, &limits.TooLargeError{Object: "blob " + d.String(), Limit: max, Got: desc.Size}
	}
	if err := p.fetchBlob(ctx, repo, desc, insecure, Limits{MaxBytes: max}); err != nil {
		return nil, err
	}
	f, err := os.Open(p.blobPath(d))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	if sum := sha256.Sum256(data); d.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != d.Hex {
		return nil, fmt.Errorf("cached blob %s does not match its digest", d)
	}
	return data, nil
}

// fetchBlobs downloads the layers missing from the cache, Jobs at a time.
func (p *Puller) fetchBlobs(ctx context.Context, repo name.Repository, layers []v1.Descriptor, insecure bool, lim Limits) error {
	jobs := p.Jobs
	if jobs <= 0 {
		jobs = 4
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, jobs)
	errs := make([]error, len(layers))
	var wg sync.WaitGroup
	for i, l := range layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := p.fetchBlob(ctx, repo, l, insecure, lim); err != nil {
				errs[i] = fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// fetchBlob downloads the blob desc describes into the cache unless it is
// there, verifying its digest before it gets its name. It is cut off as
// soon as more arrives than desc's size, and when its deadline passes.
func (p *Puller) fetchBlob(ctx context.Context, repo name.Repository, desc v1.Descriptor, insecure bool, lim Limits) error {
	d := desc.Digest
	if d.Algorithm != "sha256" {
		return fmt.Errorf("digest %s: only sha256 is supported", d)
	}
	final := p.blobPath(d)
	if _, err := os.Stat(final); err == nil {
		return nil
	}
	mu := p.lockFor("blob:" + d.String())
	mu.Lock()
	defer mu.Unlock()
	if _, err := os.Stat(final); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return err
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = limits.DefaultTimeout
	}
	minRate := p.MinRate
	if minRate <= 0 {
		minRate = limits.DefaultMinRate
	}
	dl := limits.Deadline(timeout, minRate, desc.Size)
	ctx, cancel, hit := limits.WithDeadline(ctx, dl)
	defer cancel()
	lr := &limits.Reader{Limit: desc.Size, Object: fmt.Sprintf("blob %s (its descriptor says %d bytes)", d, desc.Size)}
	if desc.Size <= 0 {
		lr.Limit, lr.Object, lr.Setting = lim.maxBytes(), "blob "+d.String(), lim.setting("max_size")
	}
	deadline := func() error {
		return &limits.DeadlineError{Object: "blob " + d.String(), Deadline: dl, Read: lr.N}
	}
	l, err := remote.Layer(repo.Digest(d.String()), p.options(ctx, insecure)...)
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if hit(err) {
		return deadline()
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(final), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	lr.R = rc
	n, err := io.Copy(io.MultiWriter(tmp, h), lr)
	if err != nil {
		tmp.Close()
		var tl *limits.TooLargeError
		if errors.As(err, &tl) {
			return err
		}
		if hit(err) {
			return deadline()
		}
		return fmt.Errorf("downloading: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		tmp.Close()
		return fmt.Errorf("downloaded blob has sha256 %s", got)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	p.logf("fetched %s (%d bytes)", d, n)
	return os.Rename(tmp.Name(), final)
}

// applyLayer applies cached layer blob l (any compression) to the tree,
// checking the blob against its digest and the uncompressed stream against
// the config's diff ID.
func (p *Puller) applyLayer(tree *unpack.Tree, i int, l v1.Descriptor, diffID v1.Hash) error {
	name := fmt.Sprintf("layer %d (%s)", i+1, l.Digest)
	f, err := os.Open(p.blobPath(l.Digest))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer f.Close()
	blobHash := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(f, blobHash), 1<<20)
	head, _ := br.Peek(512)
	format, ok := unpack.Detect(head)
	if len(head) == 0 {
		format, ok = unpack.FormatTar, true
	}
	if !ok || format == unpack.FormatZip {
		return fmt.Errorf("%s: not a tar stream (media type %q)", name, l.MediaType)
	}
	r, closeFn, err := unpack.Decompress(br, format)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer closeFn()
	diffHash := sha256.New()
	tr := io.TeeReader(r, diffHash)
	if err := tree.ApplyTar(tr, unpack.Options{Layer: true, Dir: RootDir, Name: name}); err != nil {
		return err
	}
	// The tar reader stops at the end-of-archive marker: hash the rest,
	// which is padding (a tar record is 10 KiB), never more than 1 MiB.
	if _, err := io.Copy(io.Discard, &limits.Reader{R: tr, Limit: 1 << 20, Object: name + " past its end-of-archive marker"}); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if got := hex.EncodeToString(blobHash.Sum(nil)); got != l.Digest.Hex {
		return fmt.Errorf("%s: the cached blob has sha256 %s: remove it from %s", name, got, p.blobPath(l.Digest))
	}
	if diffID.Algorithm == "sha256" && hex.EncodeToString(diffHash.Sum(nil)) != diffID.Hex {
		return fmt.Errorf("%s: the uncompressed layer does not match diff ID %s", name, diffID)
	}
	return nil
}

// PruneRoots removes the roots flattened in the cache for the builder
// whose image path is no longer valid in s (collected by the store's GC),
// and what interrupted flattenings left; it returns how many it removed.
// The next build of such an image flattens it again from the cached blobs.
func (p *Puller) PruneRoots(s *closure.Store) (int, error) {
	dir := filepath.Join(p.CacheDir, "roots")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, ".tmp-") {
			data, err := os.ReadFile(filepath.Join(p.CacheDir, "images", name))
			if err == nil {
				if ok, err := s.Valid(strings.TrimSpace(string(data))); err == nil && ok {
					continue
				}
			}
			os.Remove(filepath.Join(p.CacheDir, "images", name))
		}
		if err := nar.RemoveTree(filepath.Join(dir, name)); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
