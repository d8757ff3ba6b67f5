package s3cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/internal/limits"
)

func env(srv *miniotest.Server) func(string) string {
	vals := map[string]string{}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		vals[k] = v
	}
	return func(k string) string { return vals[k] }
}

// A closure pushed to a real MinIO bucket: NARs in parts, narinfos listed
// in one listing, fetched back over plain HTTP (the bucket readable by
// anyone, as hosts fetch) and verified.
func TestPushFetchMinIO(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "cache", true)
	ctx := context.Background()
	b, err := Open("s3://cache/fleet?endpoint="+srv.Endpoint+"&region=us-east-1", env(srv))
	if err != nil {
		t.Fatal(err)
	}
	b.PartSize = 5 << 20 // S3's smallest: a 12 MiB NAR goes in three parts
	src, _ := closure.NewLocalStore(t.TempDir(), closure.DefaultStoreDir)
	dir := t.TempDir()
	big := make([]byte, 12<<20)
	rand.Read(big) // incompressible
	os.WriteFile(filepath.Join(dir, "blob"), big, 0o644)
	lib, err := src.AddTree(ctx, dir, "big", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "app"), []byte("uses "+lib.Path), 0o644)
	app, err := src.AddTree(ctx, dir2, "app", []string{lib.Path})
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{lib.Path, app.Path}
	sk, pk, _ := cache.GenerateKey("minio-test-1")
	stats, err := (&cache.Pusher{Cache: b, Key: sk}).Push(ctx, src, paths)
	if err != nil || stats.Uploaded != 2 || stats.FileBytes < 12<<20 {
		t.Fatalf("Push = %+v, %v", stats, err)
	}
	listed, err := b.List(ctx)
	if err != nil || len(listed) != 2 || !listed[cache.Key(app.Path)] {
		t.Fatalf("List = %v, %v", listed, err)
	}
	rc, err := b.Get(ctx, "nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Contains(info, []byte("StoreDir: /var/lib/deploy/store\n")) {
		t.Errorf("nix-cache-info %q", info)
	}
	if _, err := b.Get(ctx, "nope.narinfo"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get of a missing key: %v, want fs.ErrNotExist", err)
	}
	// Over plain HTTP, anonymously, as a host fetches.
	http, err := cache.Open(srv.Endpoint+"/cache/fleet", nil)
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := closure.NewLocalStore(t.TempDir(), closure.DefaultStoreDir)
	fetched, err := (&cache.Fetcher{Cache: http, Keys: []*cache.PublicKey{pk}}).Fetch(ctx, dst, paths)
	if err != nil || len(fetched) != 2 {
		t.Fatalf("Fetch over HTTP = %v, %v", fetched, err)
	}
	got, _ := os.ReadFile(filepath.Join(dst.RealPath(lib.Path), "blob"))
	if !bytes.Equal(got, big) {
		t.Fatal("the fetched NAR's content differs")
	}
	// Wrong credentials: an error that says what to check, not "unavailable".
	bad, _ := Open("s3://cache/fleet?endpoint="+srv.Endpoint, func(k string) string {
		if k == "AWS_SECRET_ACCESS_KEY" {
			return "wrong"
		}
		return env(srv)(k)
	})
	_, err = bad.List(ctx)
	var ue *cache.UnavailableError
	if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "credentials") {
		t.Errorf("List with a wrong secret: %v, want an error naming the credentials", err)
	}
}

// Conditional writes: create-only, and replace only what was read, as a
// channel's head is claimed by one publish at a time.
func TestConditionalWritesMinIO(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "cache", false)
	ctx := context.Background()
	b, err := Open("s3://cache/fleet/channels/prod?endpoint="+srv.Endpoint, env(srv))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.ReadObject(ctx, "channel.json"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadObject of a missing key = %v", err)
	}
	if err := b.WriteObject(ctx, "channel.json", []byte("1"), "application/json", "", true); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteObject(ctx, "channel.json", []byte("x"), "application/json", "", true); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("second create = %v, want a failed precondition", err)
	}
	data, etag, err := b.ReadObject(ctx, "channel.json")
	if err != nil || string(data) != "1" || etag == "" {
		t.Fatalf("ReadObject = %q %q %v", data, etag, err)
	}
	if err := b.WriteObject(ctx, "channel.json", []byte("2"), "application/json", etag, false); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteObject(ctx, "channel.json", []byte("3"), "application/json", etag, false); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("write with a stale ETag = %v, want a failed precondition", err)
	}
	if data, _, _ := b.ReadObject(ctx, "channel.json"); string(data) != "2" {
		t.Fatalf("content %q, want 2", data)
	}
	// A document above 16 MiB is refused, not cut short and parsed.
	if err := b.WriteObject(ctx, "big.json", bytes.Repeat([]byte(" "), 16<<20+1), "application/json", "", false); err != nil {
		t.Fatal(err)
	}
	var tl *limits.TooLargeError
	if _, _, err := b.ReadObject(ctx, "big.json"); !errors.As(err, &tl) {
		t.Fatalf("ReadObject of 16 MiB + 1 = %v, want a TooLargeError", err)
	}
}

// A read of a small object is one GET, its ETag from the GET's answer (a
// channel's readers, publish --wait and status --channel, read one
// document per host: a HEAD before each GET doubled their requests).
func TestReadObjectOneRequest(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "cache", false)
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	rp := httputil.NewSingleHostReverseProxy(target)
	px := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	defer px.Close()
	ctx := context.Background()
	b, err := Open("s3://cache/fleet/channels/prod?endpoint="+px.URL, env(srv))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteObject(ctx, "status/web1.json", []byte(`{"v":1}`), "application/json", "", false); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	seen = nil
	mu.Unlock()
	data, etag, err := b.ReadObject(ctx, "status/web1.json")
	if err != nil || string(data) != `{"v":1}` || etag == "" {
		t.Fatalf("ReadObject = %q %q %v", data, etag, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || !strings.HasPrefix(seen[0], "GET ") {
		t.Errorf("requests for one read: %v, want one GET", seen)
	}
}
