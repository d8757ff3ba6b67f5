package activation

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/declarative/deploy/imageroot"
	"github.com/declarative/deploy/manifest"
)

// ImagesDir is where the roots of OCI images are realized, one directory
// per manifest digest (STATE/images/HEX/rootfs), mode 0700.
func (l Layout) ImagesDir() string { return filepath.Join(l.withDefaults().StateDir, "images") }

// imageLayersFile and imageLayerFile are the names the oci package gives
// an image path's list of layers and a layer path's blob.
const (
	imageLayersFile = "layers"
	imageLayerFile  = "layer"
)

// images realizes the root of every image next runs that the host lacks,
// before anything else changes: a failure leaves the machine as it was.
func (a *applier) images(ctx context.Context) error {
	for _, img := range a.next.Images {
		layers, err := imageLayers(img, a.next.StoreDir, a.opts.real)
		if err != nil {
			return fmt.Errorf("image %s: %w", img.Digest, err)
		}
		made, skipped, err := imageroot.Realize(ctx, a.l.ImagesDir(), img.Digest, layers)
		if err != nil {
			return fmt.Errorf("image %s: %w", img.Digest, err)
		}
		if made {
			a.opts.logf("realized image %s (%d layers) at %s", img.Digest, len(layers), imageroot.Path(a.l.ImagesDir(), img.Digest))
			for _, s := range skipped {
				a.opts.logf("image %s: skipped %s", img.Digest, s)
			}
		}
		if img.User != nil {
			if err := a.ensureImageUser(ctx, img.User); err != nil {
				return fmt.Errorf("image %s: %w", img.Digest, err)
			}
		}
	}
	return nil
}

// imageLayers reads an image path's list of layers: a line "DIGEST PATH"
// per layer, bottom first, each PATH a store path holding the blob.
func imageLayers(img manifest.Image, storeDir string, real func(string) string) ([]imageroot.Layer, error) {
	data, err := os.ReadFile(filepath.Join(real(img.Path), imageLayersFile))
	if err != nil {
		return nil, err
	}
	var out []imageroot.Layer
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		d, p, ok := strings.Cut(line, " ")
		if _, err := imageroot.HexDigest(d); !ok || err != nil || path.Dir(p) != storeDir {
			return nil, fmt.Errorf("%s/%s line %d: %q is not \"sha256:HEX STOREPATH\"", img.Path, imageLayersFile, i+1, line)
		}
		out = append(out, imageroot.Layer{Digest: d, Blob: filepath.Join(real(p), imageLayerFile)})
	}
	return out, nil
}

// gcImages removes the realized roots whose image no manifest in keep
// uses, and what interrupted realizations left. It returns the digests of
// the roots removed.
func (l Layout) gcImages(keep []*manifest.Manifest) ([]string, error) {
	dir := l.ImagesDir()
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, m := range keep {
		for _, img := range m.Images {
			used[strings.TrimPrefix(img.Digest, "sha256:")] = true
		}
	}
	var removed []string
	for _, e := range ents {
		name := e.Name()
		if used[name] {
			continue
		}
		if !strings.HasPrefix(name, ".tmp-") {
			if _, err := imageroot.HexDigest("sha256:" + name); err != nil {
				continue // not ours
			}
			removed = append(removed, "sha256:"+name)
		}
		if err := imageroot.RemoveAll(filepath.Join(dir, name)); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// ensureImageUser makes sure the host resolves the IDs of an image's user,
// which its units name as numbers: systemd refuses a User= it cannot look
// up. A missing group and user are added as locked system accounts named
// as in the image (or image-ID when the host uses that name for another
// ID), with no home and no shell. They are not removed later: files the
// service made on the host (its state directory) keep their IDs.
func (a *applier) ensureImageUser(ctx context.Context, u *manifest.ImageUser) error {
	gid, uid := strconv.Itoa(u.GID), strconv.Itoa(u.UID)
	free := func(name string, taken func(string) error) string {
		if name != "" && taken(name) != nil {
			return name
		}
		return "image-" + uid
	}
	if _, err := user.LookupGroupId(gid); err != nil {
		name := free(u.Name, func(n string) error { _, err := user.LookupGroup(n); return err })
		if name == "image-"+uid {
			name = "image-" + gid
		}
		if err := run(ctx, a.opts, "groupadd", "-r", "-g", gid, name); err != nil {
			return fmt.Errorf("adding group %s for the image's user: %w", gid, err)
		}
		a.opts.logf("added group %s (%s) for an image's user", name, gid)
	}
	if _, err := user.LookupId(uid); err != nil {
		name := free(u.Name, func(n string) error { _, err := user.Lookup(n); return err })
		if err := run(ctx, a.opts, "useradd", "-r", "-u", uid, "-g", gid, "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "-c", "OCI image user", name); err != nil {
			return fmt.Errorf("adding user %s for the image's user: %w", uid, err)
		}
		a.opts.logf("added user %s (%s) for an image's user", name, uid)
	}
	return nil
}
