// Package ocitest gives tests a real OCI registry and images they build
// themselves: go-containerregistry's pkg/registry (a complete
// implementation of the distribution API) served on 127.0.0.1, layers made
// from tar entries or from a directory, images and multi-platform indexes
// pushed with the same client code deploy uses.
package ocitest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is an in-process registry.
type Registry struct {
	// Host is "127.0.0.1:PORT".
	Host string
	// Requests counts the HTTP requests it has answered.
	Requests atomic.Int64
	user     string
	password string
	handler  http.Handler
}

// Option configures [Start].
type Option func(*Registry)

// WithBasicAuth makes the registry demand HTTP basic authentication.
func WithBasicAuth(user, password string) Option {
	return func(r *Registry) { r.user, r.password = user, password }
}

// Start serves a registry on 127.0.0.1 until the test ends.
func Start(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	r := &Registry{}
	for _, o := range opts {
		o(r)
	}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.Requests.Add(1)
		if r.user != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != r.user || p != r.password {
				w.Header().Set("WWW-Authenticate", `Basic realm="ocitest"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		h.ServeHTTP(w, req)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Host = r.Serve(t, l)
	return r
}

// Serve serves the same registry (the same repositories) on another
// listener too, for clients in another network namespace, until the test
// ends, and returns the listener's host:port.
func (r *Registry) Serve(t testing.TB, l net.Listener) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(r.handler)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return l.Addr().String()
}

// DockerConfig writes a Docker config.json with the registry's
// credentials into dir (for DOCKER_CONFIG).
func (r *Registry) DockerConfig(t testing.TB, dir string) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(r.user + ":" + r.password))
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, r.Host, auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Entry is one entry of a test layer.
type Entry struct {
	Name string
	// Type is a tar type flag (tar.TypeReg when zero).
	Type byte
	// Body is a regular file's contents, or a link's target.
	Body string
	Mode int64
}

// File is a regular file entry.
func File(name, body string) Entry { return Entry{Name: name, Body: body, Mode: 0o644} }

// Exe is an executable file entry.
func Exe(name, body string) Entry { return Entry{Name: name, Body: body, Mode: 0o755} }

// Dir is a directory entry (name ends in "/").
func Dir(name string) Entry { return Entry{Name: name, Type: tar.TypeDir, Mode: 0o755} }

// Symlink is a symbolic link entry.
func Symlink(name, to string) Entry { return Entry{Name: name, Type: tar.TypeSymlink, Body: to} }

// Hardlink is a hard link entry to the earlier entry to.
func Hardlink(name, to string) Entry { return Entry{Name: name, Type: tar.TypeLink, Body: to} }

// Whiteout is the whiteout entry that removes name of lower layers.
func Whiteout(name string) Entry {
	return File(filepath.Join(filepath.Dir(name), ".wh."+filepath.Base(name)), "")
}

// Opaque is the entry that hides what lower layers have in dir.
func Opaque(dir string) Entry { return File(strings.TrimSuffix(dir, "/")+"/.wh..wh..opq", "") }

// Device is a device node or FIFO entry (typ tar.TypeChar, TypeBlock or
// TypeFifo).
func Device(name string, typ byte) Entry { return Entry{Name: name, Type: typ, Mode: 0o600} }

// Tar returns an uncompressed tar of the entries.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.Name, Typeflag: typ, Mode: e.Mode, ModTime: time.Unix(1, 0), Format: tar.FormatPAX}
		switch typ {
		case tar.TypeReg:
			h.Size = int64(len(e.Body))
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = e.Body
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(e.Body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer returns a gzip-compressed layer of the entries.
func Layer(t testing.TB, entries ...Entry) v1.Layer {
	t.Helper()
	data := Tar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// DirLayer returns a gzip-compressed layer of the directory tree at dir
// (regular files, directories and symbolic links, owned by root), leaving
// out the paths (relative, slash-separated) in skip and what is below them,
// written to a file in the test's temporary directory.
func DirLayer(t testing.TB, dir string, skip ...string) v1.Layer {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "layer-*.tar")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteDirTar(f, dir, skip...); err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// WriteDirTar writes the tree at dir as a tar stream, sorted, owners
// zeroed; device nodes, FIFOs and sockets are left out, and so are the
// paths in skip (relative, slash-separated) with what is below them.
func WriteDirTar(w io.Writer, dir string, skip ...string) error {
	return writeDirTar(w, dir, false, skip)
}

// OwnedDirLayer is [DirLayer] keeping what `docker build` keeps of a root
// filesystem: numeric owners, modes with set-ID bits, hard links (a later
// name of an inode is a link to the first) and extended attributes.
func OwnedDirLayer(t testing.TB, dir string, skip ...string) v1.Layer {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "layer-*.tar")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := writeDirTar(f, dir, true, skip); err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func writeDirTar(w io.Writer, dir string, owned bool, skip []string) error {
	tw := tar.NewWriter(w)
	inodes := map[uint64]string{}
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		for _, s := range skip {
			if filepath.ToSlash(rel) == s {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			continue
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !fi.Mode().IsRegular() && !fi.IsDir() {
			continue
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uname, h.Gname = "", ""
		if !owned {
			h.Uid, h.Gid = 0, 0
		}
		h.ModTime, h.AccessTime, h.ChangeTime = time.Unix(1, 0), time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if owned {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
				} else {
					inodes[st.Ino] = h.Name
				}
			}
			if fi.Mode()&fs.ModeSymlink == 0 {
				for _, x := range xattrs(p) {
					if h.PAXRecords == nil {
						h.PAXRecords = map[string]string{}
					}
					h.PAXRecords["SCHILY.xattr."+x[0]] = x[1]
				}
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() && h.Typeflag != tar.TypeLink {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// xattrs returns the extended attributes of the file at p, name and value.
func xattrs(p string) [][2]string {
	buf := make([]byte, 64<<10)
	n, err := syscall.Listxattr(p, buf)
	if err != nil || n <= 0 {
		return nil
	}
	var out [][2]string
	for _, name := range strings.Split(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00") {
		val := make([]byte, 64<<10)
		m, err := syscall.Getxattr(p, name, val)
		if err == nil {
			out = append(out, [2]string{name, string(val[:m])})
		}
	}
	return out
}

// Image returns an image for linux/arch with the given configuration and
// layers.
func Image(t testing.TB, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return mutate.MediaType(mutate.ConfigMediaType(img, types.OCIConfigJSON), types.OCIManifestSchema1)
}

// Index returns a multi-platform index of the images, each annotated with
// its configuration's platform.
func Index(t testing.TB, imgs ...v1.Image) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture}}})
	}
	return mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
}

// Push pushes an image or index to ref ("HOST/repo:tag") over plain HTTP
// and returns its digest.
func (r *Registry) Push(t testing.TB, ref string, x remote.Taggable) string {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{remote.WithContext(context.Background())}
	if r.user != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: r.user, Password: r.password}))
	}
	var d v1.Hash
	switch v := x.(type) {
	case v1.Image:
		err = remote.Write(tag, v, opts...)
		if err == nil {
			d, err = v.Digest()
		}
	case v1.ImageIndex:
		err = remote.WriteIndex(tag, v, opts...)
		if err == nil {
			d, err = v.Digest()
		}
	default:
		t.Fatalf("Push: %T is neither an image nor an index", x)
	}
	if err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return d.String()
}

// Digest returns the digest of what ref ("HOST/repo:tag") names now.
func (r *Registry) Digest(t testing.TB, ref string) string {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{remote.WithContext(context.Background())}
	if r.user != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: r.user, Password: r.password}))
	}
	d, err := remote.Head(tag, opts...)
	if err != nil {
		t.Fatalf("resolving %s: %v", ref, err)
	}
	return d.Digest.String()
}
