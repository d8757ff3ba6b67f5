package oci_test

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/oci"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func newStore(t *testing.T) *closure.Store {
	t.Helper()
	s, err := closure.NewLocalStore(t.TempDir(), closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// webImage is a two-layer image: a base, then a layer that removes a file,
// makes a directory opaque and adds a file.
func webImage(t *testing.T, arch, version string) v1.Image {
	base := ocitest.Layer(t,
		ocitest.Dir("bin/"), ocitest.Exe("bin/server", "#!/bin/sh\necho server\n"), ocitest.Hardlink("bin/srv", "bin/server"),
		ocitest.Dir("etc/"), ocitest.File("etc/server.conf", "default"), ocitest.Symlink("etc/resolv.conf", "../run/resolv.conf"),
		ocitest.Dir("www/"), ocitest.File("www/index.html", "old"), ocitest.File("www/old.html", "old"),
		ocitest.Device("dev/null", tar.TypeChar))
	top := ocitest.Layer(t,
		ocitest.Whiteout("etc/server.conf"),
		ocitest.Dir("www/"), ocitest.Opaque("www"), ocitest.File("www/index.html", version))
	return ocitest.Image(t, arch, v1.Config{Entrypoint: []string{"/bin/server"}, Cmd: []string{"--port", "80"}, Env: []string{"PATH=/bin"}, WorkingDir: "/www", User: "101:101"}, base, top)
}

func TestResolveAndRealize(t *testing.T) {
	ctx := context.Background()
	reg := ocitest.Start(t)
	amd := webImage(t, "amd64", "v1")
	arm := webImage(t, "arm64", "v1")
	ref := reg.Host + "/web/server:1"
	reg.Push(t, ref, ocitest.Index(t, amd, arm))
	amdDigest, _ := amd.Digest()
	armDigest, _ := arm.Digest()

	p := &oci.Puller{CacheDir: t.TempDir()}
	for arch, want := range map[string]v1.Hash{"amd64": amdDigest, "arm64": armDigest} {
		got, err := p.Resolve(ctx, ref, true, oci.Platform(arch))
		if err != nil || got != want.String() {
			t.Errorf("Resolve(%s) = %q, %v; want %q", arch, got, err, want)
		}
	}
	if _, err := p.Resolve(ctx, ref, true, oci.Platform("riscv64")); err == nil || !strings.Contains(err.Error(), "no manifest for linux/riscv64") {
		t.Errorf("Resolve(riscv64) = %v, want no manifest for linux/riscv64", err)
	}

	s := newStore(t)
	img, err := p.Realize(ctx, s, ref, amdDigest.String(), true, oci.Platform("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	// The builder's view: the root flattened in the cache.
	root := filepath.Dir(img.RootDir)
	var got []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(root, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			rel += " -> " + l
		case fi.IsDir():
			rel += "/"
		case strings.HasPrefix(rel, "rootfs/"):
			b, _ := os.ReadFile(p)
			rel += " = " + strings.TrimSpace(string(b))
		}
		got = append(got, rel)
		return nil
	})
	want := []string{"./", "rootfs/",
		"rootfs/bin/", "rootfs/bin/server = #!/bin/sh\necho server", "rootfs/bin/srv = #!/bin/sh\necho server",
		"rootfs/dev/", "rootfs/etc/", "rootfs/etc/hosts = ", "rootfs/etc/resolv.conf = ", "rootfs/home/",
		"rootfs/proc/", "rootfs/root/", "rootfs/run/", "rootfs/sys/", "rootfs/tmp/", "rootfs/usr/", "rootfs/var/", "rootfs/var/tmp/",
		"rootfs/www/", "rootfs/www/index.html = v1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("image tree (-want +got):\n%s", diff)
	}
	// The store: the image path holds the documents and references one
	// path per layer, which holds the blob as the registry served it.
	m, _ := amd.Manifest()
	if len(img.Layers) != len(m.Layers) {
		t.Fatalf("Layers = %+v, want %d", img.Layers, len(m.Layers))
	}
	info, err := s.Info(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	var wantRefs []string
	for i, l := range img.Layers {
		if l.Digest != m.Layers[i].Digest.String() || !strings.HasSuffix(l.Path, "-"+oci.LayerStoreName(l.Digest)) {
			t.Errorf("layer %d = %+v, want digest %s", i, l, m.Layers[i].Digest)
		}
		blob, err := os.ReadFile(filepath.Join(s.RealPath(l.Path), oci.LayerFile))
		if sum := sha256.Sum256(blob); err != nil || "sha256:"+hex.EncodeToString(sum[:]) != l.Digest {
			t.Errorf("layer %d's store path does not hold its blob (%v)", i, err)
		}
		wantRefs = append(wantRefs, filepath.Base(l.Path))
	}
	slices.Sort(wantRefs)
	var gotRefs []string
	for _, r := range info.References {
		gotRefs = append(gotRefs, filepath.Base(r))
	}
	if diff := cmp.Diff(wantRefs, gotRefs); diff != "" {
		t.Errorf("image path references (-want +got):\n%s", diff)
	}
	ents, _ := os.ReadDir(s.RealPath(img.Path))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"config.json", "layers", "manifest.json"}, names); diff != "" {
		t.Errorf("image path (-want +got):\n%s", diff)
	}
	if img.Digest != amdDigest.String() || img.Config.User != "101:101" || img.Config.Entrypoint[0] != "/bin/server" {
		t.Errorf("Realize = %+v", img)
	}
	if len(img.Skipped) != 1 || !strings.Contains(img.Skipped[0], "dev/null") {
		t.Errorf("Skipped = %q, want dev/null", img.Skipped)
	}
	if !strings.HasSuffix(img.Path, "-"+oci.StoreName(amdDigest.String())) {
		t.Errorf("path %q is not named after the digest", img.Path)
	}

	// The same digest again: the same path, without asking the registry.
	before := reg.Requests.Load()
	again, err := p.Realize(ctx, s, ref, amdDigest.String(), true, oci.Platform("amd64"))
	if err != nil || again.Path != img.Path || again.Digest != img.Digest || again.RootDir != img.RootDir || !slices.Equal(again.Layers, img.Layers) {
		t.Errorf("second Realize = %+v, %v; want %q", again, err, img.Path)
	}
	if n := reg.Requests.Load() - before; n != 0 {
		t.Errorf("second Realize made %d registry requests, want 0", n)
	}
	// Another machine (empty caches, another store) gets the same path.
	other, err := (&oci.Puller{CacheDir: t.TempDir()}).Realize(ctx, newStore(t), ref, amdDigest.String(), true, oci.Platform("amd64"))
	if err != nil || other.Path != img.Path {
		t.Errorf("Realize on a clean cache = %+v, %v; want %q", other, err, img.Path)
	}
	// The index digest for the other platform works too.
	idxDigest := reg.Digest(t, ref)
	armImg, err := p.Realize(ctx, s, reg.Host+"/web/server@"+idxDigest, idxDigest, true, oci.Platform("arm64"))
	if err != nil || armImg.Digest != armDigest.String() {
		t.Errorf("Realize(index, arm64) = %+v, %v; want digest %s", armImg, err, armDigest)
	}
	// Pruning keeps the roots of valid image paths and removes the others
	// (a store whose GC collected them: here, an empty one).
	if n, err := p.PruneRoots(s); err != nil || n != 0 {
		t.Errorf("PruneRoots(the store with the images) = %d, %v; want 0", n, err)
	}
	if n, err := p.PruneRoots(newStore(t)); err != nil || n != 2 {
		t.Errorf("PruneRoots(an empty store) = %d, %v; want both roots", n, err)
	}
	if _, err := os.Stat(img.RootDir); !os.IsNotExist(err) {
		t.Errorf("the pruned root %s: %v", img.RootDir, err)
	}
	if again, err := p.Realize(ctx, s, ref, amdDigest.String(), true, oci.Platform("amd64")); err != nil || again.Path != img.Path {
		t.Errorf("Realize after pruning = %+v, %v", again, err)
	} else if _, err := os.Stat(again.RootDir); err != nil {
		t.Errorf("Realize after pruning did not flatten the root again: %v", err)
	}
	// A single-platform image for another architecture is refused.
	if _, err := p.Realize(ctx, s, ref, armDigest.String(), true, oci.Platform("amd64")); err == nil || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("Realize(arm64 image on amd64) = %v, want a platform error", err)
	}
}

func TestPlainHTTPNeedsInsecure(t *testing.T) {
	reg := ocitest.Start(t)
	ref := reg.Host + "/x/y:1"
	reg.Push(t, ref, webImage(t, "amd64", "v1"))
	_, err := (&oci.Puller{CacheDir: t.TempDir()}).Resolve(context.Background(), ref, false, oci.Platform("amd64"))
	if err == nil || !strings.Contains(err.Error(), "insecure = true") {
		t.Errorf("Resolve over plain HTTP without insecure = %v, want a refusal naming insecure = true", err)
	}
}

func TestDockerConfigAuth(t *testing.T) {
	reg := ocitest.Start(t, ocitest.WithBasicAuth("ci", "s3cret"))
	ref := reg.Host + "/private/app:1"
	want := reg.Push(t, ref, webImage(t, "amd64", "v1"))
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("DOCKER_CONFIG", "")
	p := &oci.Puller{CacheDir: t.TempDir()}
	if _, err := p.Resolve(context.Background(), ref, true, oci.Platform("amd64")); err == nil {
		t.Fatalf("Resolve without credentials succeeded")
	}
	os.MkdirAll(filepath.Join(home, ".docker"), 0o700)
	reg.DockerConfig(t, filepath.Join(home, ".docker"))
	got, err := p.Resolve(context.Background(), ref, true, oci.Platform("amd64"))
	if err != nil || got != want {
		t.Errorf("Resolve with ~/.docker/config.json = %q, %v; want %q", got, err, want)
	}
}

// Two images that share their base layer share its store path: a host or a
// cache that has one image needs only the other's own layer and image path.
func TestSharedLayersShareStorePaths(t *testing.T) {
	ctx := context.Background()
	reg := ocitest.Start(t)
	v1img, v2img := webImage(t, "amd64", "v1"), webImage(t, "amd64", "v2")
	d1 := reg.Push(t, reg.Host+"/web/server:1", v1img)
	d2 := reg.Push(t, reg.Host+"/web/server:2", v2img)
	s := newStore(t)
	p := &oci.Puller{CacheDir: t.TempDir()}
	a, err := p.Realize(ctx, s, reg.Host+"/web/server:1", d1, true, oci.Platform("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Realize(ctx, s, reg.Host+"/web/server:2", d2, true, oci.Platform("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Layers) != 2 || len(b.Layers) != 2 || a.Layers[0] != b.Layers[0] || a.Layers[1].Path == b.Layers[1].Path || a.Path == b.Path {
		t.Fatalf("layers %+v and %+v: want the base shared, the top and the image paths apart", a.Layers, b.Layers)
	}
	ca, _ := s.Closure(a.Path)
	cb, _ := s.Closure(b.Path)
	have := map[string]bool{}
	for _, pi := range ca {
		have[pi.Path] = true
	}
	var missing []string
	for _, pi := range cb {
		if !have[pi.Path] {
			missing = append(missing, pi.Path)
		}
	}
	slices.Sort(missing)
	want := []string{b.Path, b.Layers[1].Path}
	slices.Sort(want)
	if !slices.Equal(missing, want) {
		t.Errorf("a store with image 1 lacks %q of image 2, want only its image path and top layer %q", missing, want)
	}
}
