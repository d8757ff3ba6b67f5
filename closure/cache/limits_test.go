package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/limits"
)

// hostileCache is a cache pushed to a directory and served over HTTP by a
// server that misbehaves on NARs as told: the attacker's side of the
// limits tests.
type hostileCache struct {
	dir   string
	paths []string
	pk    *PublicKey
	srv   *httptest.Server
	// nar serves a NAR file; nil serves it as it is.
	nar func(w http.ResponseWriter, r *http.Request, file []byte)
	// narinfo serves a narinfo; nil serves it as it is.
	narinfo func(w http.ResponseWriter, r *http.Request, file []byte)
	// narRequests counts the requests for NAR files.
	narRequests atomic.Int32
}

func newHostileCache(t *testing.T) *hostileCache {
	t.Helper()
	src, paths := nixStoreClosure(t)
	sk, pk, _ := GenerateKey("limits-1")
	hc := &hostileCache{dir: t.TempDir(), paths: paths, pk: pk}
	if _, err := (&Pusher{Cache: Dir(hc.dir), Key: sk}).Push(context.Background(), src, paths); err != nil {
		t.Fatal(err)
	}
	hc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(filepath.Join(hc.dir, filepath.FromSlash(strings.TrimPrefix(r.URL.Path, "/"))))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if strings.HasSuffix(r.URL.Path, ".narinfo") && hc.narinfo != nil {
			hc.narinfo(w, r, data)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			hc.narRequests.Add(1)
			if hc.nar != nil {
				hc.nar(w, r, data)
				return
			}
		}
		w.Write(data)
	}))
	t.Cleanup(hc.srv.Close)
	return hc
}

func (hc *hostileCache) backend() Backend {
	// No client timeout: the fetcher's limits are what is tested.
	return &HTTP{Base: hc.srv.URL, Client: &http.Client{}}
}

// editNarInfo rewrites p's narinfo (its unsigned fields: the signature
// covers only the fingerprint).
func (hc *hostileCache) editNarInfo(t *testing.T, p string, edit func(string) string) {
	t.Helper()
	file := filepath.Join(hc.dir, Key(p))
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(edit(string(data))), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (hc *hostileCache) fetch(t *testing.T, f *Fetcher) (*closure.Store, error) {
	t.Helper()
	dst, err := closure.NewLocalStore(t.TempDir(), "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	f.Cache, f.Keys = hc.backend(), []*PublicKey{hc.pk}
	_, err = f.FetchClosure(context.Background(), dst, hc.paths[1])
	return dst, err
}

func assertNothingValid(t *testing.T, s *closure.Store, paths []string) {
	t.Helper()
	for _, p := range paths {
		if ok, _ := s.Valid(p); ok {
			t.Errorf("%s is valid after a refused fetch", p)
		}
	}
	entries, _ := os.ReadDir(s.RealDir)
	for _, e := range entries {
		t.Errorf("the store holds %s after a refused fetch", e.Name())
	}
}

// endless writes file, then up to extra more bytes, and reports whether
// the client hung up before it took them all.
func endless(file []byte, extra int64, cut *atomic.Bool) func(w http.ResponseWriter, r *http.Request, _ []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		w.Write(file)
		junk := bytes.Repeat([]byte{0x5a}, 64<<10)
		for sent := int64(0); sent < extra; sent += int64(len(junk)) {
			if _, err := w.Write(junk); err != nil {
				cut.Store(true)
				return
			}
		}
	}
}

// A NAR file that goes on past the FileSize its narinfo claims is cut off
// as the excess arrives (not read to its end, then compared) and refused;
// nothing of it becomes valid.
func TestFetchCutsOffNARLongerThanClaimed(t *testing.T) {
	hc := newHostileCache(t)
	var cut atomic.Bool
	done := make(chan struct{}, 8)
	hc.nar = func(w http.ResponseWriter, r *http.Request, file []byte) {
		defer func() { done <- struct{}{} }()
		endless(file, 256<<20, &cut)(w, r, file)
	}
	dst, err := hc.fetch(t, &Fetcher{})
	var ve *VerifyError
	var tl *limits.TooLargeError
	if !errors.As(err, &ve) || !errors.As(err, &tl) {
		t.Fatalf("FetchClosure = %v, want a VerifyError wrapping a TooLargeError", err)
	}
	if !strings.Contains(err.Error(), "FileSize") {
		t.Errorf("error %q does not name the narinfo's FileSize", err)
	}
	<-done
	if !cut.Load() {
		t.Errorf("the client read all 256 MiB the server added to the NAR: it was not cut off")
	}
	assertNothingValid(t, dst, hc.paths)
}

// skippableFrames returns n bytes of zstd skippable frames: a decoder
// reads them and yields nothing.
func skippableFrames(n int) []byte {
	var out []byte
	const frame = 1 << 20
	for len(out) < n {
		var h [8]byte
		binary.LittleEndian.PutUint32(h[:4], 0x184D2A50)
		binary.LittleEndian.PutUint32(h[4:], frame)
		out = append(out, h[:]...)
		out = append(out, make([]byte, frame)...)
	}
	return out
}

// Without a FileSize in the narinfo (it is not signed), a compressed file
// is still bounded by what its signed NarSize can compress to: a zstd file
// that feeds the decoder 64 MiB of frames that yield nothing is refused.
func TestFetchBoundsFileWithoutFileSize(t *testing.T) {
	hc := newHostileCache(t)
	for _, p := range hc.paths {
		hc.editNarInfo(t, p, func(s string) string {
			var out []string
			for _, l := range strings.Split(s, "\n") {
				if !strings.HasPrefix(l, "FileSize: ") && !strings.HasPrefix(l, "FileHash: ") {
					out = append(out, l)
				}
			}
			return strings.Join(out, "\n")
		})
	}
	pad := skippableFrames(64 << 20)
	hc.nar = func(w http.ResponseWriter, r *http.Request, file []byte) {
		w.Write(pad)
		w.Write(file)
	}
	dst, err := hc.fetch(t, &Fetcher{})
	var ve *VerifyError
	var tl *limits.TooLargeError
	if !errors.As(err, &ve) || !errors.As(err, &tl) {
		t.Fatalf("FetchClosure = %v, want a VerifyError wrapping a TooLargeError", err)
	}
	assertNothingValid(t, dst, hc.paths)
}

// A path whose signed NarSize is above max_nar_size is refused before its
// NAR is requested; the error names the limit and the setting.
func TestFetchRefusesNARAboveLimit(t *testing.T) {
	hc := newHostileCache(t)
	dst, err := hc.fetch(t, &Fetcher{MaxNarSize: 1024})
	var ve *VerifyError
	var tl *limits.TooLargeError
	if !errors.As(err, &ve) || !errors.As(err, &tl) {
		t.Fatalf("FetchClosure = %v, want a VerifyError wrapping a TooLargeError", err)
	}
	for _, want := range []string{"1 KiB", "max_nar_size"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := hc.narRequests.Load(); n != 0 {
		t.Errorf("%d NARs requested, want none", n)
	}
	assertNothingValid(t, dst, hc.paths)
}

// A narinfo larger than its limit is refused, cut off there.
func TestFetchRefusesLargeNarInfo(t *testing.T) {
	hc := newHostileCache(t)
	hc.editNarInfo(t, hc.paths[1], func(s string) string { return s + "X-Padding: " + strings.Repeat("a", 8<<10) + "\n" })
	dst, err := hc.fetch(t, &Fetcher{MaxNarInfoSize: 4 << 10})
	var ve *VerifyError
	var tl *limits.TooLargeError
	if !errors.As(err, &ve) || !errors.As(err, &tl) || !strings.Contains(err.Error(), "max_document_size") {
		t.Fatalf("FetchClosure = %v, want a VerifyError wrapping a TooLargeError naming max_document_size", err)
	}
	assertNothingValid(t, dst, hc.paths)
}

// A server that sends part of a NAR and then stalls is cut off at the
// fetch's deadline (fetch_timeout plus the NAR at fetch_min_rate): the
// cache counts as unavailable, with a DeadlineError that says so. Left
// alone, the server would finish after 30 seconds.
func TestFetchDeadline(t *testing.T) {
	hc := newHostileCache(t)
	hc.nar = func(w http.ResponseWriter, r *http.Request, file []byte) {
		w.Write(file[:len(file)/2])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Second):
		}
		w.Write(file[len(file)/2:])
	}
	dst, err := hc.fetch(t, &Fetcher{Timeout: 500 * time.Millisecond})
	var ue *UnavailableError
	var de *limits.DeadlineError
	if !errors.As(err, &ue) || !errors.As(err, &de) {
		t.Fatalf("FetchClosure = %v, want an UnavailableError wrapping a DeadlineError", err)
	}
	for _, want := range []string{"deadline", "fetch_timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	assertNothingValid(t, dst, hc.paths)
}

// A narinfo that stalls is cut off at fetch_timeout.
func TestFetchNarInfoDeadline(t *testing.T) {
	hc := newHostileCache(t)
	hc.narinfo = func(w http.ResponseWriter, r *http.Request, file []byte) {
		w.Write(file[:10])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Second):
		}
		w.Write(file[10:])
	}
	dst, err := hc.fetch(t, &Fetcher{Timeout: 500 * time.Millisecond})
	var ue *UnavailableError
	var de *limits.DeadlineError
	if !errors.As(err, &ue) || !errors.As(err, &de) || !strings.Contains(err.Error(), "narinfo") {
		t.Fatalf("FetchClosure = %v, want an UnavailableError wrapping a narinfo's DeadlineError", err)
	}
	assertNothingValid(t, dst, hc.paths)
}

// The whole-object deadline grows with the NAR: a floor plus the NAR at
// the minimum rate.
func TestDeadlineScales(t *testing.T) {
	for _, tt := range []struct {
		size int64
		want time.Duration
	}{
		{0, time.Minute},
		{64 << 10, time.Minute + time.Second},
		{1 << 30, time.Minute + 16384*time.Second},
	} {
		if got := limits.Deadline(limits.DefaultTimeout, limits.DefaultMinRate, tt.size); got != tt.want {
			t.Errorf("Deadline(1m, 64KiB/s, %d) = %v, want %v", tt.size, got, tt.want)
		}
	}
}

var _ io.Reader = (*limits.Reader)(nil)
