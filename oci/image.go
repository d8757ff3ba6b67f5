package oci

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/nar"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ImageConfig is what an image made by [ClosureImage] runs.
type ImageConfig struct {
	// Arch is the image's GOARCH.
	Arch string
	// Entrypoint, Cmd, Env, WorkingDir and User are the image
	// configuration's.
	Entrypoint, Cmd, Env []string
	WorkingDir, User     string
	// Labels are added to the configuration (sorted by the encoder).
	Labels map[string]string
}

// epoch is the creation time of every image deploy makes, as Nix's
// dockerTools uses: the same closure must give the same bytes at any time.
var epoch = time.Unix(1, 0).UTC()

// storeLayer is the layer of one store path: an uncompressed tar of the
// path under its store directory, generated from the path's NAR, so it
// holds exactly what the store holds.
type storeLayer struct {
	s      *closure.Store
	path   string
	digest v1.Hash
	size   int64
}

func (l *storeLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *storeLayer) DiffID() (v1.Hash, error)            { return l.digest, nil }
func (l *storeLayer) Size() (int64, error)                { return l.size, nil }
func (l *storeLayer) MediaType() (types.MediaType, error) { return types.OCIUncompressedLayer, nil }
func (l *storeLayer) Compressed() (io.ReadCloser, error)  { return l.Uncompressed() }
func (l *storeLayer) Uncompressed() (io.ReadCloser, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeLayer(pw, l.s, l.path)) }()
	return pr, nil
}

// writeLayer writes the tar of store path p: its store directory's parent
// directories, then the path, every entry owned by root, dated 1970, with
// the store's modes (directories 0555, files 0444 or 0555).
func writeLayer(w io.Writer, s *closure.Store, p string) error {
	tw := tar.NewWriter(w)
	dir := strings.TrimPrefix(s.StoreDir, "/")
	parts := strings.Split(dir, "/")
	for i := range parts {
		h := &tar.Header{Typeflag: tar.TypeDir, Name: strings.Join(parts[:i+1], "/") + "/", Mode: 0o755, ModTime: epoch}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(s.Dump(pw, p)) }()
	sink := &tarSink{tw: tw, root: dir + "/" + path.Base(p)}
	_, err := nar.Parse(pr, sink, nar.Options{})
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return fmt.Errorf("layer of %q: %w", p, err)
	}
	return tw.Close()
}

// tarSink turns the nodes of a NAR into tar entries.
type tarSink struct {
	tw    *tar.Writer
	root  string
	stack []string
}

func (t *tarSink) name(n string) string {
	if n == "" && len(t.stack) == 0 {
		return t.root
	}
	return path.Join(append(append([]string{t.root}, t.stack[1:]...), n)...)
}

func (t *tarSink) Directory(n string) error {
	name := t.name(n)
	t.stack = append(t.stack, n)
	return t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o555, ModTime: epoch})
}

func (t *tarSink) EndDirectory() error {
	t.stack = t.stack[:len(t.stack)-1]
	return nil
}

func (t *tarSink) Symlink(n, target string) error {
	return t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: t.name(n), Linkname: target, Mode: 0o777, ModTime: epoch})
}

func (t *tarSink) File(n string, exec bool, size int64, r io.Reader) error {
	mode := int64(0o444)
	if exec {
		mode = 0o555
	}
	if err := t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: t.name(n), Mode: mode, Size: size, ModTime: epoch}); err != nil {
		return err
	}
	_, err := io.Copy(t.tw, r)
	return err
}

// closureImage is an image of store paths, its manifest and configuration
// encoded once.
type closureImage struct {
	manifest, config []byte
	layers           map[v1.Hash]*storeLayer
}

func (i *closureImage) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i *closureImage) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i *closureImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *closureImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := i.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("image has no layer %s", h)
}

// Image configuration and manifest as written; the field order is fixed by
// these types, so the bytes are.
type imageConfigJSON struct {
	Created      string        `json:"created"`
	Architecture string        `json:"architecture"`
	OS           string        `json:"os"`
	Config       runConfigJSON `json:"config"`
	RootFS       rootFSJSON    `json:"rootfs"`
	History      []historyJSON `json:"history"`
}

type runConfigJSON struct {
	User       string            `json:"User,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type rootFSJSON struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type historyJSON struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

type descriptorJSON struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type manifestJSON struct {
	SchemaVersion int              `json:"schemaVersion"`
	MediaType     string           `json:"mediaType"`
	Config        descriptorJSON   `json:"config"`
	Layers        []descriptorJSON `json:"layers"`
}

// ClosureImage returns an image of the store paths of s, which must be a
// closure in order (each path after its references, as [closure.Store.Closure]
// gives them): one uncompressed layer per path, in that order. Every layer
// is generated twice, once here to hash it and once when it is written, so
// nothing but the image's small metadata is held in memory.
func ClosureImage(ctx context.Context, s *closure.Store, paths []*closure.PathInfo, cfg ImageConfig) (v1.Image, error) {
	img := &closureImage{layers: map[v1.Hash]*storeLayer{}}
	c := imageConfigJSON{
		Created: epoch.Format(time.RFC3339), Architecture: cfg.Arch, OS: "linux",
		Config: runConfigJSON{User: cfg.User, Env: cfg.Env, Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, WorkingDir: cfg.WorkingDir, Labels: cfg.Labels},
		RootFS: rootFSJSON{Type: "layers", DiffIDs: []string{}},
	}
	m := manifestJSON{SchemaVersion: 2, MediaType: string(types.OCIManifestSchema1), Layers: []descriptorJSON{}}
	for _, pi := range paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h := sha256.New()
		cw := &countWriter{w: h}
		if err := writeLayer(cw, s, pi.Path); err != nil {
			return nil, err
		}
		d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
		img.layers[d] = &storeLayer{s: s, path: pi.Path, digest: d, size: cw.n}
		c.RootFS.DiffIDs = append(c.RootFS.DiffIDs, d.String())
		c.History = append(c.History, historyJSON{Created: c.Created, CreatedBy: "deploy: " + pi.Path})
		m.Layers = append(m.Layers, descriptorJSON{MediaType: string(types.OCIUncompressedLayer), Digest: d.String(), Size: cw.n})
	}
	var err error
	if img.config, err = json.Marshal(c); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(img.config)
	m.Config = descriptorJSON{MediaType: string(types.OCIConfigJSON), Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(img.config))}
	if img.manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	return partial.CompressedToImage(img)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// WriteArchive writes img as a tar holding both an OCI image layout
// (oci-layout, index.json, blobs/sha256/...) and Docker's manifest.json
// over the same blobs, as `docker save` does since Docker 25: `docker
// load`, `podman load`, skopeo's oci-archive: and crane all read it. tag
// ("name:tag", may be empty) names the image in both indexes. The same
// image always gives the same bytes.
func WriteArchive(w io.Writer, img v1.Image, tag string) error {
	tw := tar.NewWriter(w)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o444, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	if err := file("blobs/sha256/"+cfgName.Hex, rawCfg); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var layerFiles []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		size, err := l.Size()
		if err != nil {
			return err
		}
		name := "blobs/sha256/" + d.Hex
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o444, Size: size, ModTime: epoch}); err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(tw, h), rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		if n != size || hex.EncodeToString(h.Sum(nil)) != d.Hex {
			return fmt.Errorf("layer %s changed while it was written (the store path was modified?)", d)
		}
		layerFiles = append(layerFiles, name)
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	if err := file("blobs/sha256/"+digest.Hex, rawManifest); err != nil {
		return err
	}
	desc := descriptorJSON{MediaType: string(types.OCIManifestSchema1), Digest: digest.String(), Size: int64(len(rawManifest))}
	var repoTags []string
	if tag != "" {
		desc.Annotations = map[string]string{"org.opencontainers.image.ref.name": tag}
		repoTags = []string{tag}
	}
	index, err := json.Marshal(struct {
		SchemaVersion int              `json:"schemaVersion"`
		MediaType     string           `json:"mediaType"`
		Manifests     []descriptorJSON `json:"manifests"`
	}{2, string(types.OCIImageIndex), []descriptorJSON{desc}})
	if err != nil {
		return err
	}
	docker, err := json.Marshal([]struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{"blobs/sha256/" + cfgName.Hex, repoTags, layerFiles}})
	if err != nil {
		return err
	}
	if err := file("index.json", index); err != nil {
		return err
	}
	if err := file("manifest.json", docker); err != nil {
		return err
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	return tw.Close()
}

// Push sends img to the registry as ref ("registry/repository:tag"), with
// the credentials of ~/.docker/config.json, and returns its digest.
func Push(ctx context.Context, ref string, img v1.Image, insecure bool, transport http.RoundTripper) (string, error) {
	r, err := ParseReference(ref, insecure)
	if err != nil {
		return "", err
	}
	p := &Puller{Keychain: authn.DefaultKeychain, Transport: transport}
	if err := remote.Write(r, img, p.options(ctx, insecure)...); err != nil {
		return "", fmt.Errorf("pushing %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}
