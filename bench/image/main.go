// Command image measures pulling and realizing an OCI image into the store
// (cold and warm), a second image that shares the first one's base layer,
// and what deploying that second image copies to a host that has the
// first. The image is real: Debian bookworm minbase with nginx-light (about
// 144 MB of files), debootstrapped once per machine by vmtest.Rootfs, as
// one base layer plus a small site layer, served by go-containerregistry's
// registry in-process; -rate throttles blob downloads to emulate a link.
//
//	go run ./bench/image [-rate 12.5MB] [-runs 3] [-dir /var/tmp]
//
// Needs root and debootstrap (for the root filesystem, the first time).
// Prints Markdown tables.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/imageroot"
	"github.com/declarative/deploy/oci"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/declarative/deploy/vmtest"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	rateFlag := flag.String("rate", "", "throttle blob downloads to this many bytes per second (suffix KB, MB; empty: unthrottled)")
	runs := flag.Int("runs", 3, "runs of each measurement (the best is reported)")
	dir := flag.String("dir", "/var/tmp", "where the stores and caches go")
	flag.Parse()
	rate, err := parseRate(*rateFlag)
	if err != nil {
		log.Fatal(err)
	}
	if err := run(rate, *runs, *dir); err != nil {
		log.Fatal(err)
	}
}

func parseRate(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := 1.0
	for suffix, m := range map[string]float64{"KB": 1e3, "MB": 1e6, "GB": 1e9} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	return int64(f * mult), err
}

// counter counts the bytes of blob responses and throttles them.
type counter struct {
	h     http.Handler
	rate  int64
	bytes atomic.Int64
}

type countingWriter struct {
	http.ResponseWriter
	c *counter
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.c.rate > 0 {
		time.Sleep(time.Duration(float64(len(b)) / float64(w.c.rate) * float64(time.Second)))
	}
	w.c.bytes.Add(int64(len(b)))
	return w.ResponseWriter.Write(b)
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		w = &countingWriter{ResponseWriter: w, c: c}
	}
	c.h.ServeHTTP(w, r)
}

func layerOf(data []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

func siteLayer(version string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		name, body string
		typ        byte
	}{
		{"etc/nginx/sites-enabled/.wh.default", "", tar.TypeReg},
		{"var/www/html/", "", tar.TypeDir},
		{"var/www/html/.wh..wh..opq", "", tar.TypeReg},
		{"var/www/html/index.html", "version " + version + "\n", tar.TypeReg},
	} {
		tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), ModTime: time.Unix(1, 0)})
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return layerOf(buf.Bytes())
}

func image(base v1.Layer, version string) (v1.Image, error) {
	top, err := siteLayer(version)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, base, top)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: []string{"nginx"}, Cmd: []string{"-g", "daemon off;"}}
	return mutate.ConfigFile(img, cf)
}

type result struct {
	seconds float64
	bytes   int64
}

func best(runs int, f func() (result, error)) (result, error) {
	var b result
	for i := 0; i < runs; i++ {
		r, err := f()
		if err != nil {
			return r, err
		}
		if i == 0 || r.seconds < b.seconds {
			b = r
		}
	}
	return b, nil
}

func run(rate int64, runs int, dir string) error {
	ctx := context.Background()
	rootfs, err := vmtest.Rootfs(ctx, []string{"nginx-light"}, log.Printf)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(dir, "deploy-image-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	var tarBuf bytes.Buffer
	if err := ocitest.WriteDirTar(&tarBuf, rootfs); err != nil {
		return err
	}
	base, err := layerOf(tarBuf.Bytes())
	if err != nil {
		return err
	}
	img1, err := image(base, "1")
	if err != nil {
		return err
	}
	img2, err := image(base, "2")
	if err != nil {
		return err
	}

	c := &counter{h: registry.New(registry.Logger(log.New(io.Discard, "", 0))), rate: rate}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := httptest.NewUnstartedServer(c)
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	host := l.Addr().String()
	for tag, img := range map[string]v1.Image{"1": img1, "2": img2} {
		ref, _ := name.ParseReference(host+"/web/nginx:"+tag, name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			return err
		}
	}
	d1, _ := img1.Digest()
	d2, _ := img2.Digest()
	baseSize, _ := base.Size()
	top2, _ := img2.Layers()
	top2Size, _ := top2[1].Size()
	top2Raw, _ := partialUncompressedSize(top2[1])

	newStore := func() (*closure.Store, error) {
		d, err := os.MkdirTemp(work, "store-")
		if err != nil {
			return nil, err
		}
		return closure.NewLocalStore(d, closure.DefaultStoreDir)
	}
	newPuller := func() (*oci.Puller, error) {
		d, err := os.MkdirTemp(work, "cache-")
		return &oci.Puller{CacheDir: d}, err
	}
	platform := oci.Platform("amd64")
	pull := func(p *oci.Puller, s *closure.Store, tag string, digest v1.Hash) (result, *oci.Image, error) {
		before := c.bytes.Load()
		start := time.Now()
		img, err := p.Realize(ctx, s, host+"/web/nginx:"+tag, digest.String(), true, platform)
		return result{time.Since(start).Seconds(), c.bytes.Load() - before}, img, err
	}

	var lastStore *closure.Store
	var lastPuller *oci.Puller
	var imgPath string
	cold, err := best(runs, func() (result, error) {
		s, err := newStore()
		if err != nil {
			return result{}, err
		}
		p, err := newPuller()
		if err != nil {
			return result{}, err
		}
		r, img, err := pull(p, s, "1", d1)
		lastStore, lastPuller = s, p
		if img != nil {
			imgPath = img.Path
		}
		return r, err
	})
	if err != nil {
		return err
	}
	warm, err := best(runs, func() (result, error) {
		r, _, err := pull(lastPuller, lastStore, "1", d1)
		return r, err
	})
	if err != nil {
		return err
	}
	blobsWarm, err := best(runs, func() (result, error) {
		s, err := newStore()
		if err != nil {
			return result{}, err
		}
		// The same blob cache, a new realized-image index: realize again
		// from cached blobs (a new store, as on another fleet checkout).
		p := &oci.Puller{CacheDir: lastPuller.CacheDir}
		os.RemoveAll(filepath.Join(p.CacheDir, "images"))
		r, _, err := pull(p, s, "1", d1)
		return r, err
	})
	if err != nil {
		return err
	}
	var img2Path string
	second, err := best(runs, func() (result, error) {
		// A machine that has pulled and realized image 1, and no more.
		s, err := newStore()
		if err != nil {
			return result{}, err
		}
		p, err := newPuller()
		if err != nil {
			return result{}, err
		}
		if _, _, err := pull(p, s, "1", d1); err != nil {
			return result{}, err
		}
		r, img, err := pull(p, s, "2", d2)
		if img != nil {
			img2Path = img.Path
			lastStore = s
		}
		return r, err
	})
	if err != nil {
		return err
	}
	pi1, err := lastStore.Info(imgPath) // the same path in every store
	if err != nil {
		return err
	}
	pi2, err := lastStore.Info(img2Path)
	if err != nil {
		return err
	}

	// What a deploy sends: the target has image 1, then gets image 2.
	target, err := newStore()
	if err != nil {
		return err
	}
	closureOf := func(p string) ([]string, int64, error) {
		cl, err := lastStore.Closure(p)
		if err != nil {
			return nil, 0, err
		}
		var paths []string
		var size int64
		for _, pi := range cl {
			paths = append(paths, pi.Path)
			size += pi.NarSize
		}
		return paths, size, nil
	}
	copyStats := func(p string) (*closure.TransferStats, int64, float64, error) {
		paths, _, err := closureOf(p)
		if err != nil {
			return nil, 0, 0, err
		}
		op, ag := net.Pipe()
		var wg sync.WaitGroup
		wg.Add(1)
		var rerr error
		go func() {
			defer wg.Done()
			_, rerr = target.Receive(ctx, ag, ag, closure.ReceiveOptions{})
			ag.Close()
		}()
		cw := &countConn{Conn: op}
		start := time.Now()
		st, err := closure.Send(ctx, lastStore, paths, cw, closure.SendOptions{})
		op.Close()
		wg.Wait()
		if err == nil {
			err = rerr
		}
		return st, cw.n, time.Since(start).Seconds(), err
	}
	_, size1, err := closureOf(imgPath)
	if err != nil {
		return err
	}
	_, size2, err := closureOf(img2Path)
	if err != nil {
		return err
	}
	st1, wire1, t1, err := copyStats(imgPath)
	if err != nil {
		return err
	}
	st2, wire2, t2, err := copyStats(img2Path)
	if err != nil {
		return err
	}

	// What the agent does once per digest per host: realize the root
	// from the layer paths (a new images directory each run).
	real1, err := lastPuller.Realize(ctx, lastStore, host+"/web/nginx:1", d1.String(), true, platform)
	if err != nil {
		return err
	}
	var layers []imageroot.Layer
	for _, l := range real1.Layers {
		layers = append(layers, imageroot.Layer{Digest: l.Digest, Blob: filepath.Join(lastStore.RealPath(l.Path), oci.LayerFile)})
	}
	realized, err := best(runs, func() (result, error) {
		imagesDir, err := os.MkdirTemp(dir, "images-")
		if err != nil {
			return result{}, err
		}
		defer imageroot.RemoveAll(imagesDir)
		start := time.Now()
		_, _, err = imageroot.Realize(ctx, imagesDir, real1.Digest, layers)
		return result{seconds: time.Since(start).Seconds()}, err
	})
	if err != nil {
		return err
	}

	link := "unthrottled (loopback)"
	if rate > 0 {
		link = fmt.Sprintf("%.1f MB/s (%.0f Mbit/s)", float64(rate)/1e6, float64(rate)*8/1e6)
	}
	mb := func(b int64) string {
		if b < 1e6 {
			return fmt.Sprintf("%d bytes", b)
		}
		return fmt.Sprintf("%.1f MB", float64(b)/1e6)
	}
	fmt.Printf("image: %s (debootstrap minbase + nginx-light), %s of files in %d bytes of uncompressed tar; base layer %s compressed; site layer %d bytes compressed, %d uncompressed\n",
		rootfs, mb(int64(tarBuf.Len())), tarBuf.Len(), mb(baseSize), top2Size, top2Raw)
	fmt.Printf("registry: in-process, blob downloads %s; store and caches in %s; best of %d\n\n", link, dir, runs)
	fmt.Println("| step | seconds | bytes downloaded | store paths: image path + its layers (NAR) |")
	fmt.Println("|---|---:|---:|---:|")
	fmt.Printf("| cold: download the blobs, apply the layers, add to the store | %.2f | %s | %s |\n", cold.seconds, mb(cold.bytes), mb(size1))
	fmt.Printf("| warm: same digest again (realized-image index hit) | %.4f | %s | same path |\n", warm.seconds, mb(warm.bytes))
	fmt.Printf("| blobs cached, new store (apply layers, add to store) | %.2f | %s | %s |\n", blobsWarm.seconds, mb(blobsWarm.bytes), mb(size1))
	fmt.Printf("| second image, same base layer, new site layer | %.2f | %s | %s |\n\n", second.seconds, mb(second.bytes), mb(size2))
	fmt.Println("| deploy copies (in-process transfer, target store on disk) | paths | NAR bytes | bytes on the wire | seconds |")
	fmt.Println("|---|---:|---:|---:|---:|")
	fmt.Printf("| image 1 to an empty target | %d | %s | %s | %.2f |\n", st1.Missing, mb(st1.MissingBytes), mb(wire1), t1)
	fmt.Printf("| image 2 to a target that has image 1 | %d | %s | %s | %.2f |\n", st2.Missing, mb(st2.MissingBytes), mb(wire2), t2)
	_, _ = pi1, pi2
	fmt.Printf("\n| on the host, once per image digest | seconds |\n|---|---:|\n| realize the root from the layer paths (imageroot.Realize: gunzip, apply %d layers, syncfs, rename) | %.2f |\n", len(layers), realized.seconds)
	return nil
}

// partialUncompressedSize is the layer's uncompressed size.
func partialUncompressedSize(l v1.Layer) (int64, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(io.Discard, rc)
}

// countConn counts the bytes written by the operator's side.
type countConn struct {
	net.Conn
	n int64
}

func (c *countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n += int64(n)
	return n, err
}
