package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// BenchmarkCacheVsPush deploys a new 100 MB package to 1, 5 and 10 hosts,
// side by side: pushed over SSH from the operator to every host, and
// through a binary cache (a MinIO on the test network) that the operator
// uploads to once and every host fetches from. It reports the operator's
// upload (NAR bytes over SSH plus bytes to the cache) and the wall time of
// the deploy run. Every iteration deploys new content, so nothing is
// already there.
//
//	go test ./cmd/deploy -run '^$' -bench CacheVsPush -benchtime 3x
func BenchmarkCacheVsPush(b *testing.B) {
	const size = 100 << 20
	for _, n := range []int{1, 5, 10} {
		for _, via := range []string{"ssh", "cache"} {
			b.Run(fmt.Sprintf("hosts=%d/via=%s", n, via), func(b *testing.B) {
				nw := vmtest.Start(b, n)
				fl := e2e.NewFleet(b, nw)
				fl.WriteHosts(b, "", "")
				fleetDir := fl.Dir
				var cacheBlock string
				var env []string
				if via == "cache" {
					srv := miniotest.Start(b, miniotest.Options{
						Host: vmtest.ControllerAddr.String(),
						Command: func(name string, args ...string) *exec.Cmd {
							return nw.ControllerCommand(context.Background(), name, args...)
						},
						Dial: nw.DialContext,
					})
					srv.Bucket(b, "cache", true)
					sk, pk, _ := cache.GenerateKey("bench-1")
					keyFile := filepath.Join(b.TempDir(), "key")
					os.WriteFile(keyFile, []byte(sk.String()), 0o600)
					cacheBlock = fmt.Sprintf("cache {\n  url = \"s3://cache/b?endpoint=%s\"\n  public_keys = [%q]\n}\n", srv.Endpoint, pk.String())
					env = append(srv.Env(), "DEPLOY_CACHE_KEY="+keyFile)
				}
				writeBlobFleet(b, fl, cacheBlock)
				r := cli.New(b, nw, fl).With(env...)
				blob := make([]byte, size)
				var upload int64
				var elapsed time.Duration
				for b.Loop() {
					b.StopTimer()
					rand.Read(blob)
					os.WriteFile(filepath.Join(fleetDir, "blob", "data"), blob, 0o644)
					b.StartTimer()
					start := time.Now()
					res := r.JSON(b, "", "--parallel-copy", "16", fleetDir+"#all")
					elapsed += time.Since(start)
					events := res.Want(b, 0).Events
					fetched := int64(0)
					for _, ev := range events {
						switch {
						case ev.Type == fleet.EventPhase && ev.Phase == fleet.PhaseCopy && ev.State == "done":
							upload += ev.Total
							fetched += ev.FetchedBytes
						case ev.Type == fleet.EventCachePush && ev.State == "done":
							upload += ev.Total
						}
						if ev.Type == fleet.EventResult && ev.Result != fleet.ResultOK {
							b.Fatalf("%s: %s %s", ev.Host, ev.Result, ev.Error)
						}
					}
					if via == "cache" && fetched < int64(n)*size {
						b.Fatalf("the hosts fetched %d bytes from the cache, want %d", fetched, int64(n)*size)
					}
				}
				b.ReportMetric(float64(upload)/float64(b.N)/(1<<20), "upload-MiB/op")
				b.ReportMetric(elapsed.Seconds()/float64(b.N), "s/deploy")
			})
		}
	}
}

// writeBlobFleet adds to fleet a deployment "all" of every host in one
// batch, each with a package "blob" (the directory fleet/blob, which it
// makes) and a file naming it; extra goes first (a cache block, say).
func writeBlobFleet(t testing.TB, fl *e2e.Fleet, extra string) {
	t.Helper()
	hcl := extra + `
deployment "all" {
  hosts      = [` + fl.Names() + `]
  batch_size = "100%"
  canary     = 0
}
role "data" {
  package "blob" {
    path = "./blob"
  }
  file "/etc/blob-path" {
    content = "${package.blob}"
  }
}
defaults {
  roles = [role.data]
}
`
	fl.Write(t, "fleet.hcl", hcl)
	if err := os.MkdirAll(filepath.Join(fl.Dir, "blob"), 0o755); err != nil {
		t.Fatal(err)
	}
}
