package cache

import (
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Backend is where a cache's files are, for reading. [HTTP] and [Dir] are
// the two read-only ones; an S3 bucket (package s3cache) can also be written.
type Backend interface {
	// Get opens the file at key (relative to the cache root). A missing
	// file is an error wrapping fs.ErrNotExist; a cache that cannot be
	// reached is an *[UnavailableError].
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// String names the cache in messages (its URL, without credentials).
	String() string
}

// UnavailableError is a cache that could not be reached or answered with
// a server error: the caller may fall back to another way, unlike a
// narinfo or NAR that was fetched and failed its checks.
type UnavailableError struct {
	Cache string
	Err   error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("cache %s unavailable: %v", e.Cache, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// Open opens a read-only cache by URL: http(s)://..., file:///dir or a
// plain directory path. A nil client means one without an overall timeout:
// a [Fetcher] gives each narinfo and NAR its own deadline, scaled to its
// size (a client's Timeout would bound every body read, a large NAR's
// too).
func Open(rawURL string, client *http.Client) (Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("cache URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "http", "https":
		if client == nil {
			client = &http.Client{}
		}
		return &HTTP{Base: strings.TrimSuffix(rawURL, "/"), Client: client}, nil
	case "file":
		return Dir(u.Path), nil
	case "":
		return Dir(rawURL), nil
	}
	return nil, fmt.Errorf("cache URL %q: want http://, https:// or file:// (s3:// is for pushing, from the operator)", rawURL)
}

// HTTP reads a cache over HTTP(S), as Nix's http:// store does.
type HTTP struct {
	Base   string // without a trailing slash
	Client *http.Client
}

// Get implements [Backend].
func (h *HTTP) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.Base+"/"+key, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, &UnavailableError{Cache: h.String(), Err: err}
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp.Body, nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		// S3 answers 403 for a missing key when listing is not allowed.
		resp.Body.Close()
		return nil, fmt.Errorf("%s/%s: %s: %w", h.Base, key, resp.Status, fs.ErrNotExist)
	default:
		resp.Body.Close()
		return nil, &UnavailableError{Cache: h.String(), Err: fmt.Errorf("GET %s: %s", key, resp.Status)}
	}
}

func (h *HTTP) String() string { return h.Base }

// Dir reads a cache in a directory (Nix's file:// store).
type Dir string

// Get implements [Backend].
func (d Dir) Get(_ context.Context, key string) (io.ReadCloser, error) {
	if !fs.ValidPath(key) {
		return nil, fmt.Errorf("cache key %q: %w", key, fs.ErrInvalid)
	}
	f, err := os.Open(filepath.Join(string(d), filepath.FromSlash(key)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, &UnavailableError{Cache: d.String(), Err: err}
	}
	return f, err
}

func (d Dir) String() string { return "file://" + string(d) }

// Decompress returns a reader of r's content decompressed by compression
// ("zstd", "xz", "bzip2", "none" or ""). Close it when done.
func Decompress(r io.Reader, compression string) (io.ReadCloser, error) {
	switch compression {
	case "none", "":
		return io.NopCloser(r), nil
	case "zstd":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	case "xz":
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(xr), nil
	case "bzip2":
		return io.NopCloser(bzip2.NewReader(r)), nil
	}
	return nil, fmt.Errorf("compression %q is not supported (zstd, xz, bzip2, none)", compression)
}

// Extension is the NAR file extension Nix uses for compression.
func Extension(compression string) string {
	switch compression {
	case "zstd":
		return ".zst"
	case "xz":
		return ".xz"
	case "bzip2":
		return ".bz2"
	}
	return ""
}

// Put implements [Writer]: temp file, fsync, rename.
func (d Dir) Put(_ context.Context, key string, r io.Reader, _ int64, _ string) error {
	if !fs.ValidPath(key) {
		return fmt.Errorf("cache key %q: %w", key, fs.ErrInvalid)
	}
	dst := filepath.Join(string(d), filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err != nil {
		return fmt.Errorf("cache %s: %s: %w", d, key, err)
	}
	return os.Rename(f.Name(), dst)
}

// List implements [Writer].
func (d Dir) List(context.Context) (map[string]bool, error) {
	entries, err := os.ReadDir(string(d))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, &UnavailableError{Cache: d.String(), Err: err}
	}
	out := map[string]bool{}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".narinfo") {
			out[e.Name()] = true
		}
	}
	return out, nil
}
