package channel_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/pull/channel"
)

// A document that goes on past the source's limit is cut off there (the
// server's writes fail long before the 256 MiB it sends) and refused with
// the limit and the setting named; one that trickles is cut off at the
// source's deadline. Left alone, the trickle would end after 30 seconds.
func TestHTTPSourceLimits(t *testing.T) {
	hungUp := make(chan bool, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ch/hosts/endless.json":
			junk := bytes.Repeat([]byte(" "), 64<<10)
			cut := false
			for sent := 0; sent < 256<<20 && !cut; sent += len(junk) {
				_, err := w.Write(junk)
				cut = err != nil
			}
			hungUp <- cut
		case "/ch/hosts/slow.json":
			w.Write([]byte("{"))
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
				w.Write([]byte(`"v":1}`))
			}
		}
	}))
	defer srv.Close()
	src := &channel.HTTPSource{Base: srv.URL + "/ch", Client: &http.Client{}, MaxSize: 4 << 10, Timeout: 500 * time.Millisecond}
	ctx := context.Background()

	_, _, err := src.Get(ctx, channel.ReleaseKey("endless"), "")
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), "4 KiB") || !strings.Contains(err.Error(), "max_document_size") {
		t.Errorf("Get(endless) = %v, want a TooLargeError naming 4 KiB and max_document_size", err)
	}
	if !<-hungUp {
		t.Errorf("the source read all 256 MiB of the document: it was not cut off")
	}

	_, _, err = src.Get(ctx, channel.ReleaseKey("slow"), "")
	var ue *cache.UnavailableError
	var de *limits.DeadlineError
	if !errors.As(err, &ue) || !errors.As(err, &de) || !strings.Contains(err.Error(), "fetch_timeout") {
		t.Errorf("Get(slow) = %v, want an UnavailableError wrapping a DeadlineError naming fetch_timeout", err)
	}
}

// A directory source refuses a document above the default limit.
func TestDirSourceLimit(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "hosts"), 0o755)
	os.WriteFile(filepath.Join(dir, "hosts", "web1.json"), bytes.Repeat([]byte(" "), limits.DefaultDocument+1), 0o644)
	_, _, err := channel.DirSource(dir).Get(context.Background(), channel.ReleaseKey("web1"), "")
	var tl *limits.TooLargeError
	if !errors.As(err, &tl) {
		t.Errorf("Get = %v, want a TooLargeError", err)
	}
}
