package oci_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/oci"
	"github.com/declarative/deploy/oci/ocitest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// hostileRegistry is an ocitest registry behind a proxy that serves the
// blob whose digest is target as blob tells it: the attacker's side.
type hostileRegistry struct {
	host       string
	ref        string
	digest     string
	layer      v1.Hash
	layerBytes []byte
	blob       func(w http.ResponseWriter, r *http.Request, data []byte)
	blobGets   atomic.Int32
}

func newHostileRegistry(t *testing.T, layer v1.Layer) *hostileRegistry {
	t.Helper()
	reg := ocitest.Start(t)
	img := ocitest.Image(t, "amd64", v1.Config{Cmd: []string{"/bin/sh"}}, layer)
	h := &hostileRegistry{}
	h.layer, _ = layer.Digest()
	rc, _ := layer.Compressed()
	var buf bytes.Buffer
	buf.ReadFrom(rc)
	rc.Close()
	h.layerBytes = buf.Bytes()
	up, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(up)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/"+h.layer.String()) && r.Method == http.MethodGet {
			h.blobGets.Add(1)
			if h.blob != nil {
				h.blob(w, r, h.layerBytes)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	h.host = strings.TrimPrefix(srv.URL, "http://")
	h.ref = h.host + "/app:1"
	reg.Push(t, reg.Host+"/app:1", img)
	d, _ := img.Digest()
	h.digest = d.String()
	return h
}

func (h *hostileRegistry) realize(t *testing.T, p *oci.Puller) error {
	t.Helper()
	s := newStore(t)
	_, err := p.Realize(context.Background(), s, h.ref, h.digest, true, oci.Platform("amd64"))
	if err == nil {
		return nil
	}
	entries, _ := os.ReadDir(s.RealDir)
	for _, e := range entries {
		t.Errorf("the store holds %s after a refused image", e.Name())
	}
	return err
}

// assertNoBlob checks that the layer blob did not reach the cache.
func (h *hostileRegistry) assertNoBlob(t *testing.T, p *oci.Puller) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(p.CacheDir, "blobs", "sha256", h.layer.Hex)); err == nil {
		t.Errorf("the refused blob is in the cache")
	}
}

// A layer blob that goes on past the size its (digest-pinned) descriptor
// says, sent without a Content-Length, is cut off as the excess arrives:
// the registry's writes fail long before the 256 MiB it adds.
func TestRealizeCutsOffLongBlob(t *testing.T) {
	h := newHostileRegistry(t, ocitest.Layer(t, ocitest.File("app", "hello")))
	hungUp := make(chan bool, 4)
	h.blob = func(w http.ResponseWriter, r *http.Request, data []byte) {
		w.Write(data)
		junk := bytes.Repeat([]byte{0x5a}, 64<<10)
		cut := false
		for sent := 0; sent < 256<<20 && !cut; sent += len(junk) {
			_, err := w.Write(junk)
			cut = err != nil
		}
		hungUp <- cut
	}
	p := &oci.Puller{CacheDir: t.TempDir()}
	err := h.realize(t, p)
	h.assertNoBlob(t, p)
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), "its descriptor says") {
		t.Fatalf("Realize = %v, want a TooLargeError against the descriptor's size", err)
	}
	if !<-hungUp {
		t.Errorf("the puller read all 256 MiB added to the blob: it was not cut off")
	}
}

// An image whose layers together are above MaxBytes is refused before
// any layer is downloaded, naming the setting.
func TestRealizeRefusesImageAboveMaxBytes(t *testing.T) {
	noise := make([]byte, 8<<10)
	rand.Read(noise)
	h := newHostileRegistry(t, ocitest.Layer(t, ocitest.File("app", string(noise))))
	p := &oci.Puller{CacheDir: t.TempDir(), MaxBytes: 4 << 10, Settings: `in package "app"`}
	err := h.realize(t, p)
	h.assertNoBlob(t, p)
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), `max_size in package "app"`) {
		t.Fatalf("Realize = %v, want a TooLargeError naming max_size", err)
	}
	if n := h.blobGets.Load(); n != 0 {
		t.Errorf("%d layer downloads, want none", n)
	}
}

// A layer that decompresses to more than MaxBytes (a bomb: 32 MiB of
// zeros, a few KiB compressed) is refused while it is unpacked.
func TestRealizeRefusesLayerBomb(t *testing.T) {
	h := newHostileRegistry(t, ocitest.Layer(t, ocitest.File("zeros", string(make([]byte, 32<<20)))))
	if len(h.layerBytes) > 1<<20 {
		t.Fatalf("the bomb is %d bytes compressed", len(h.layerBytes))
	}
	err := h.realize(t, &oci.Puller{CacheDir: t.TempDir(), MaxBytes: 1 << 20})
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), `"zeros"`) {
		t.Fatalf("Realize = %v, want a TooLargeError at entry zeros", err)
	}
}

// A registry that trickles a blob (a byte every 50 ms) is cut off at the
// blob's deadline.
func TestRealizeBlobDeadline(t *testing.T) {
	h := newHostileRegistry(t, ocitest.Layer(t, ocitest.File("app", "hello")))
	h.blob = func(w http.ResponseWriter, r *http.Request, data []byte) {
		for i := range data {
			if _, err := w.Write(data[i : i+1]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	p := &oci.Puller{CacheDir: t.TempDir(), Timeout: 500 * time.Millisecond}
	err := h.realize(t, p)
	h.assertNoBlob(t, p)
	var de *limits.DeadlineError
	if !errors.As(err, &de) {
		t.Fatalf("Realize = %v, want a DeadlineError", err)
	}
}
