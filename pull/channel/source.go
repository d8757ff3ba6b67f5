package channel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/declarative/deploy/closure/cache"
)

// ErrNotModified is a conditional read of an object that did not change.
var ErrNotModified = errors.New("not modified")

// maxDocument bounds what is read of one document.
const maxDocument = 1 << 20

// Source reads a channel's documents: over HTTP(S) or from a directory.
type Source interface {
	// Get reads key (relative to the channel's root). With etag set, an
	// object whose ETag is still etag is [ErrNotModified], without its
	// content. A missing object wraps fs.ErrNotExist; a source that
	// cannot be reached, or answers with a server error, is a
	// *cache.UnavailableError.
	Get(ctx context.Context, key, etag string) (data []byte, newETag string, err error)
	// String names the source in messages.
	String() string
}

// OpenSource opens a channel's root for reading: http(s)://... or
// file:///DIR (a plain path is a directory too). A nil client means one
// with a one-minute timeout (proxies from the environment are honoured).
func OpenSource(rawURL string, client *http.Client) (Source, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("channel URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "http", "https":
		if client == nil {
			client = &http.Client{Timeout: time.Minute}
		}
		return &HTTPSource{Base: strings.TrimSuffix(rawURL, "/"), Client: client}, nil
	case "file":
		return DirSource(u.Path), nil
	case "":
		return DirSource(rawURL), nil
	}
	return nil, fmt.Errorf("channel URL %q: want http://, https:// or file://", rawURL)
}

// HTTPSource reads a channel over HTTP(S) with conditional GETs: a poll of
// a document that did not change costs one request and a 304 answer.
type HTTPSource struct {
	Base   string // without a trailing slash
	Client *http.Client
}

// Get implements [Source].
func (h *HTTPSource) Get(ctx context.Context, key, etag string) ([]byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.Base+"/"+key, nil)
	if err != nil {
		return nil, "", err
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, "", &cache.UnavailableError{Cache: h.Base, Err: err}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return nil, etag, ErrNotModified
	case resp.StatusCode == http.StatusOK:
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
		if err != nil {
			return nil, "", &cache.UnavailableError{Cache: h.Base, Err: fmt.Errorf("reading %s: %w", key, err)}
		}
		if len(data) > maxDocument {
			return nil, "", fmt.Errorf("%s/%s: larger than %d bytes", h.Base, key, maxDocument)
		}
		return data, resp.Header.Get("ETag"), nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		// S3 answers 403 for a missing key when listing is not allowed.
		return nil, "", fmt.Errorf("%s/%s: %s: %w", h.Base, key, resp.Status, fs.ErrNotExist)
	}
	return nil, "", &cache.UnavailableError{Cache: h.Base, Err: fmt.Errorf("GET %s: %s", key, resp.Status)}
}

func (h *HTTPSource) String() string { return h.Base }

// DirSource reads a channel from a directory (a mounted mirror, or tests).
// Its ETags are the content's SHA-256.
type DirSource string

// Get implements [Source].
func (d DirSource) Get(_ context.Context, key, etag string) ([]byte, string, error) {
	if !fs.ValidPath(key) {
		return nil, "", fmt.Errorf("channel key %q: %w", key, fs.ErrInvalid)
	}
	data, err := os.ReadFile(filepath.Join(string(d), filepath.FromSlash(key)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	if err != nil {
		return nil, "", &cache.UnavailableError{Cache: d.String(), Err: err}
	}
	sum := sha256.Sum256(data)
	tag := `"` + hex.EncodeToString(sum[:]) + `"`
	if tag == etag {
		return nil, etag, ErrNotModified
	}
	return data, tag, nil
}

func (d DirSource) String() string { return "file://" + string(d) }
