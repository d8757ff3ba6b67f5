package activation

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/manifest"
)

func TestImageLayers(t *testing.T) {
	store := t.TempDir()
	real := func(p string) string { return filepath.Join(store, filepath.Base(p)) }
	d1, d2 := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	img := manifest.Image{Digest: "sha256:" + strings.Repeat("c", 64), Path: "/var/lib/deploy/store/cccccccccccccccccccccccccccccccc-oci-cccc"}
	os.MkdirAll(real(img.Path), 0o755)
	write := func(s string) { os.WriteFile(filepath.Join(real(img.Path), "layers"), []byte(s), 0o644) }

	write(d1 + " /var/lib/deploy/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-oci-layer-aaaa\n" + d2 + " /var/lib/deploy/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-oci-layer-bbbb\n")
	got, err := imageLayers(img, "/var/lib/deploy/store", real)
	if err != nil || len(got) != 2 || got[0].Digest != d1 || got[1].Blob != filepath.Join(store, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-oci-layer-bbbb", "layer") {
		t.Errorf("imageLayers = %+v, %v", got, err)
	}
	for _, bad := range []string{
		d1 + " /etc/passwd\n",                      // not a store path
		"sha256:xyz /var/lib/deploy/store/a-b\n",   // not a digest
		d1 + "/var/lib/deploy/store/a-oci-layer\n", // no separator
	} {
		write(bad)
		if _, err := imageLayers(img, "/var/lib/deploy/store", real); err == nil {
			t.Errorf("imageLayers(%q) succeeded", bad)
		}
	}
}

func TestGCImages(t *testing.T) {
	l := Layout{StateDir: t.TempDir()}
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	for _, d := range []string{a, b, c, ".tmp-cccccccccccc-1", "not-a-digest"} {
		os.MkdirAll(filepath.Join(l.ImagesDir(), d, "rootfs", "etc"), 0o755)
	}
	os.Chmod(filepath.Join(l.ImagesDir(), b, "rootfs", "etc"), 0o555)
	keep := []*manifest.Manifest{{Images: []manifest.Image{{Digest: "sha256:" + a}}}, {}}
	removed, err := l.gcImages(keep)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{"sha256:" + b, "sha256:" + c}; !slices.Equal(removed, want) {
		t.Errorf("gcImages removed %q, want %q", removed, want)
	}
	ents, _ := os.ReadDir(l.ImagesDir())
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if want := []string{a, "not-a-digest"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q (the kept root, and what is not ours)", left, want)
	}
}
