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
	"github.com/declarative/deploy/internal/limits"
)

// ErrNotModified is a conditional read of an object that did not change.
var ErrNotModified = errors.New("not modified")

// Source reads a channel's documents: over HTTP(S) or from a directory.
type Source interface {
	// Get reads key (relative to the channel's root). With etag set, an
	// object whose ETag is still etag is [ErrNotModified], without its
	// content. A missing object wraps fs.ErrNotExist; a source that
	// cannot be reached, answers with a server error, or does not finish
	// within its deadline is a *cache.UnavailableError; a document larger
	// than the source's limit is a *limits.TooLargeError.
	Get(ctx context.Context, key, etag string) (data []byte, newETag string, err error)
	// GetLimit is Get with limit (bytes) in place of the source's own:
	// for documents that grow with the fleet ([agentapi.WaveReport]).
	GetLimit(ctx context.Context, key, etag string, limit int64) (data []byte, newETag string, err error)
	// String names the source in messages.
	String() string
}

// OpenSource opens a channel's root for reading: http(s)://... or
// file:///DIR (a plain path is a directory too). A nil client means the
// default one (proxies from the environment are honoured); each document
// has its own deadline ([HTTPSource.Timeout]).
func OpenSource(rawURL string, client *http.Client) (Source, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("channel URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "http", "https":
		if client == nil {
			client = &http.Client{}
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
	// MaxSize bounds a document (default 1 MiB): a longer one is cut off
	// as the excess arrives. Timeout is a document's whole deadline,
	// headers and body (default 1 minute). Settings names where they are
	// set, for errors (default "in the pull block").
	MaxSize  int64
	Timeout  time.Duration
	Settings string
}

func settingIn(settings, name string) string {
	if settings == "" {
		settings = "in the pull block"
	}
	return name + " " + settings
}

// Get implements [Source].
func (h *HTTPSource) Get(ctx context.Context, key, etag string) ([]byte, string, error) {
	return h.GetLimit(ctx, key, etag, h.MaxSize)
}

// GetLimit implements [Source].
func (h *HTTPSource) GetLimit(ctx context.Context, key, etag string, limit int64) ([]byte, string, error) {
	d := h.Timeout
	if d <= 0 {
		d = limits.DefaultTimeout
	}
	ctx, cancel, hit := limits.WithDeadline(ctx, d)
	defer cancel()
	lr := &limits.Reader{Limit: limit, Object: h.Base + "/" + key, Setting: settingIn(h.Settings, "max_document_size")}
	if lr.Limit <= 0 {
		lr.Limit = limits.DefaultDocument
	}
	deadline := func() error {
		return &cache.UnavailableError{Cache: h.Base, Err: &limits.DeadlineError{Object: key, Deadline: d, Read: lr.N, Setting: settingIn(h.Settings, "fetch_timeout")}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.Base+"/"+key, nil)
	if err != nil {
		return nil, "", err
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := h.Client.Do(req)
	if hit(err) {
		return nil, "", deadline()
	}
	if err != nil {
		return nil, "", &cache.UnavailableError{Cache: h.Base, Err: err}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return nil, etag, ErrNotModified
	case resp.StatusCode == http.StatusOK:
		lr.R = resp.Body
		data, err := io.ReadAll(lr)
		var tl *limits.TooLargeError
		switch {
		case errors.As(err, &tl):
			return nil, "", err
		case hit(err):
			return nil, "", deadline()
		case err != nil:
			return nil, "", &cache.UnavailableError{Cache: h.Base, Err: fmt.Errorf("reading %s: %w", key, err)}
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
// Its ETags are the content's SHA-256. A document larger than 1 MiB is
// refused ([limits.DefaultDocument]; a caller with a smaller limit checks
// the length).
type DirSource string

// Get implements [Source].
func (d DirSource) Get(ctx context.Context, key, etag string) ([]byte, string, error) {
	return d.GetLimit(ctx, key, etag, limits.DefaultDocument)
}

// GetLimit implements [Source].
func (d DirSource) GetLimit(_ context.Context, key, etag string, limit int64) ([]byte, string, error) {
	if !fs.ValidPath(key) {
		return nil, "", fmt.Errorf("channel key %q: %w", key, fs.ErrInvalid)
	}
	f, err := os.Open(filepath.Join(string(d), filepath.FromSlash(key)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	if err != nil {
		return nil, "", &cache.UnavailableError{Cache: d.String(), Err: err}
	}
	defer f.Close()
	if limit <= 0 {
		limit = limits.DefaultDocument
	}
	data, err := io.ReadAll(&limits.Reader{R: f, Limit: limit, Object: d.String() + "/" + key})
	var tl *limits.TooLargeError
	if errors.As(err, &tl) {
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
