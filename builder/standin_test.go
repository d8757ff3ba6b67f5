package builder

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// standIns is an HTTP transport that answers, without any network, for the
// external inputs the examples pin: registry requests (any host) go to an
// in-memory registry holding a small stand-in nginx image under every image
// the examples name, and any other URL gets a stand-in release archive. No
// test may reach the internet; these let the examples build in tests with
// pins that `deploy lock` computes against the stand-ins.
type standIns struct {
	reg     http.Handler
	archive []byte
}

var (
	standInOnce sync.Once
	standInRT   *standIns
)

func (s *standIns) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	if req.Body == nil {
		// A client request may have no body; a server's handler expects one.
		req = req.Clone(req.Context())
		req.Body = http.NoBody
	}
	if strings.HasPrefix(req.URL.Path, "/v2/") || req.URL.Path == "/v2" {
		s.reg.ServeHTTP(rec, req)
	} else {
		rec.Write(s.archive)
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// standInClient returns an *http.Client whose transport is the stand-ins,
// with the stand-in image pushed as every image the example fleets use.
func standInClient(t *testing.T) *http.Client {
	t.Helper()
	standInOnce.Do(func() {
		s := &standIns{reg: registry.New(registry.Logger(log.New(io.Discard, "", 0))),
			archive: tarGz(t, [][2]string{{"node_exporter-1.7.0.linux-amd64/", ""}, {"node_exporter-1.7.0.linux-amd64/node_exporter", "#!/bin/sh\necho stand-in\n"}})}
		img := ocitest.Image(t, "amd64", v1.Config{Entrypoint: []string{"/usr/sbin/nginx"}},
			ocitest.Layer(t, ocitest.Exe("usr/sbin/nginx", "#!/bin/sh\n"), ocitest.File("etc/nginx/nginx.conf", "stand-in\n"),
				ocitest.Dir("usr/share/nginx/html/"), ocitest.Dir("var/cache/nginx/")))
		for _, ref := range exampleImages(t) {
			r, err := name.ParseReference(ref)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(r, img, remote.WithTransport(s)); err != nil {
				t.Fatalf("pushing the stand-in for %s: %v", ref, err)
			}
		}
		standInRT = s
	})
	if standInRT == nil {
		t.Fatal("stand-ins failed to start")
	}
	return &http.Client{Transport: standInRT}
}

// exampleImages lists the images the examples' deploy.lock files pin.
func exampleImages(t *testing.T) []string {
	t.Helper()
	locks, _ := filepath.Glob("../examples/*/" + modules.LockFileName)
	var refs []string
	for _, l := range locks {
		lock, err := modules.ReadLock(filepath.Dir(l))
		if err != nil {
			t.Fatal(err)
		}
		for k, in := range lock.Inputs {
			if in.Type == modules.LockOCI {
				ref, _, _ := strings.Cut(k, " ")
				refs = append(refs, ref)
			}
		}
	}
	return refs
}

// lockWithStandIns re-pins every external input of the fleet in dir (a
// copy of an example) to the stand-ins, when it has any.
func lockWithStandIns(t *testing.T, dir string, client *http.Client) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, modules.LockFileName)); err != nil {
		return
	}
	pb := &modules.PackageBuilder{Store: newTestBuilder(t, t.TempDir()).Store, CacheDir: t.TempDir(), HTTPClient: client}
	lock, diags := UpdateLock(context.Background(), load(t, dir), pb, true)
	if diags.HasErrors() {
		t.Fatalf("locking %s against the stand-ins: %v", dir, diags)
	}
	if err := lock.Write(dir); err != nil {
		t.Fatal(err)
	}
}

// The examples' deploy.lock files are in canonical form (what deploy lock
// writes).
func TestExampleLocksCanonical(t *testing.T) {
	locks, _ := filepath.Glob("../examples/*/" + modules.LockFileName)
	for _, l := range locks {
		data, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		lock, err := modules.ReadLock(filepath.Dir(l))
		if err != nil {
			t.Fatal(err)
		}
		if got := lock.Marshal(); !bytes.Equal(got, data) {
			t.Errorf("%s is not canonical; deploy lock would write:\n%s", l, got)
		}
	}
}
