package oci_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/oci"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testClosure adds three paths to a fresh store (a library, a program that
// refers to it, a file) and returns the store and the closure of the
// program, in order.
func testClosure(t *testing.T) (*closure.Store, []*closure.PathInfo) {
	t.Helper()
	s, err := closure.NewLocalStore(t.TempDir(), closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lib := t.TempDir()
	os.MkdirAll(filepath.Join(lib, "lib"), 0o755)
	os.WriteFile(filepath.Join(lib, "lib", "libgreet.so"), []byte("greetings"), 0o644)
	libPI, err := s.AddTree(ctx, lib, "libgreet", nil)
	if err != nil {
		t.Fatal(err)
	}
	prog := t.TempDir()
	os.MkdirAll(filepath.Join(prog, "bin"), 0o755)
	os.WriteFile(filepath.Join(prog, "bin", "hello"), []byte("#!/bin/sh\n# uses "+libPI.Path+"\n"), 0o755)
	os.Symlink(libPI.Path+"/lib", filepath.Join(prog, "lib"))
	progPI, err := s.AddTree(ctx, prog, "hello", []string{libPI.Path})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := s.Closure(progPI.Path)
	if err != nil {
		t.Fatal(err)
	}
	return s, cl
}

func TestClosureImageReproducible(t *testing.T) {
	ctx := context.Background()
	cfg := oci.ImageConfig{Arch: "amd64", Entrypoint: []string{"/bin/sh"}, Labels: map[string]string{"b": "2", "a": "1"}}
	var digests []string
	var archives [][]byte
	var store *closure.Store
	var cl []*closure.PathInfo
	for range 2 {
		store, cl = testClosure(t) // a new store each time: another machine
		img, err := oci.ClosureImage(ctx, store, cl, cfg)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d.String())
		var buf bytes.Buffer
		if err := oci.WriteArchive(&buf, img, "hello:latest"); err != nil {
			t.Fatal(err)
		}
		archives = append(archives, buf.Bytes())
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of one closure gave digests %s and %s", digests[0], digests[1])
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Errorf("two archives of one closure differ")
	}

	// The archive is an OCI layout: read it back, push it, and the registry
	// has the same digest with one layer per store path.
	dir := t.TempDir()
	untar(t, archives[0], dir)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "hello:latest" {
		t.Fatalf("index.json = %+v, %v", im, err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	reg := ocitest.Start(t)
	ref := reg.Host + "/deploy/hello:latest"
	if got := reg.Push(t, ref, img); got != digests[0] {
		t.Errorf("pushed digest %s, want %s", got, digests[0])
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	remoteImg, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := remoteImg.Layers()
	if err != nil || len(layers) != len(cl) {
		t.Errorf("the registry's image has %d layers, %v; want one per store path (%d)", len(layers), err, len(cl))
	}

	// Docker's manifest.json over the same blobs loads too.
	p := filepath.Join(t.TempDir(), "image.tar")
	os.WriteFile(p, archives[0], 0o644)
	dimg, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if dl, err := dimg.Layers(); err != nil || len(dl) != len(cl) {
		t.Errorf("docker-style load: %d layers, %v; want %d", len(dl), err, len(cl))
	}

	// Pulled back into a store, the image's root holds the closure at the
	// store's paths, with the same contents.
	dest := newStore(t)
	back, err := (&oci.Puller{CacheDir: t.TempDir()}).Realize(ctx, dest, ref, digests[0], true, oci.Platform("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	for _, pi := range cl {
		in := filepath.Join(back.RootDir, strings.TrimPrefix(pi.Path, "/"))
		if _, err := os.Lstat(in); err != nil {
			t.Errorf("%s is not in the image's root: %v", pi.Path, err)
		}
	}
	if back.Config.Entrypoint[0] != "/bin/sh" || back.Config.Labels["a"] != "1" {
		t.Errorf("config = %+v", back.Config)
	}
}

func untar(t *testing.T, data []byte, dir string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		b, _ := io.ReadAll(tr)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
