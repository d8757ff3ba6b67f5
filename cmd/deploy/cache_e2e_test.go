package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
	"github.com/minio/minio-go/v7"
)

// TestCacheE2E deploys a 200 MB closure to five hosts through a binary
// cache in a real MinIO: the operator uploads it once, each host fetches
// it from the bucket over plain HTTP and verifies it, and the SSH stream
// to each host carries only the host's system path. Then a tampered NAR in
// the bucket is refused on every host, named, and nothing is activated.
func TestCacheE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 5)
	srv := miniotest.Start(t, miniotest.Options{
		Host: vmtest.ControllerAddr.String(),
		Command: func(name string, args ...string) *exec.Cmd {
			return nw.ControllerCommand(context.Background(), name, args...)
		},
		Dial: nw.DialContext,
	})
	srv.Bucket(t, "cache", true)
	sk, pk, err := cache.GenerateKey("e2e-cache-1")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "cache.key")
	os.WriteFile(keyFile, []byte(sk.String()+"\n"), 0o600)

	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "", "")
	fleetDir := fl.Dir
	blob := make([]byte, 200<<20)
	rand.Read(blob)
	writeBlob := func() string {
		os.MkdirAll(filepath.Join(fleetDir, "blob"), 0o755)
		if err := os.WriteFile(filepath.Join(fleetDir, "blob", "data"), blob, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(blob)
		return hex.EncodeToString(sum[:])
	}
	want := writeBlob()
	fleetHCL := fmt.Sprintf(`cache {
  url         = "s3://cache/fleet?endpoint=%s&region=us-east-1"
  public_keys = [%q]
}

deployment "all" {
  hosts      = [%s]
  batch_size = "100%%"
  canary     = 0
}

role "data" {
  package "blob" {
    path = "./blob"
  }
  file "/etc/blob-path" {
    content = "${package.blob}/data"
  }
}

defaults {
  roles = [role.data]
}
`, srv.Endpoint, pk.String(), fl.Names())
	fl.Write(t, "fleet.hcl", fleetHCL)
	r := cli.New(t, nw, fl).With(append(srv.Env(), "DEPLOY_CACHE_KEY="+keyFile)...)
	run := func(args ...string) *cli.Result {
		t.Helper()
		return r.JSON(t, "", append([]string{"--confirm-timeout", "60s"}, args...)...)
	}

	events := run(fl.Target("all")).Want(t, 0).Events
	var pushes []fleet.Event
	for _, ev := range events {
		if ev.Type == fleet.EventCachePush && ev.State == "done" {
			pushes = append(pushes, ev)
		}
	}
	if len(pushes) != 1 || pushes[0].CopyPaths == 0 || pushes[0].Total < 200<<20 || pushes[0].Total > 210<<20 {
		for _, ev := range events {
			if ev.Type == fleet.EventCachePush {
				t.Logf("%+v", ev)
			}
		}
		t.Fatalf("cache.push done events %+v: want one upload of the 200 MB closure", pushes)
	}
	for _, h := range nw.Hosts {
		var done *fleet.Event
		for i, ev := range events {
			if ev.Type == fleet.EventPhase && ev.Host == h.Name() && ev.Phase == fleet.PhaseCopy && ev.State == "done" {
				done = &events[i]
			}
		}
		if done == nil || done.CopyPaths != 1 || done.Total > 1<<20 || done.FetchedBytes < 200<<20 {
			t.Errorf("%s: copy done %+v; want only the system path sent (1 path, small) and 200 MB fetched from the cache", h.Name(), done)
		}
		if r := cli.Results(events)[h.Name()]; r.Result != fleet.ResultOK {
			t.Errorf("%s: %+v", h.Name(), r)
		}
		if got := h.Succeed(`sha256sum "$(cat /etc/blob-path)" | cut -d' ' -f1`); strings.TrimSpace(got) != want {
			t.Errorf("%s: the blob's hash %q, want %q", h.Name(), got, want)
		}
		h.Succeed("/run/deploy/current-system/agent/bin/deploy-agent verify")
	}

	// A new blob, pushed with deploy cache push, then its NAR tampered
	// with in the bucket (same size, flipped bytes): every host refuses
	// it, names it, and activates nothing.
	blob[len(blob)/2] ^= 0xff
	writeBlob()
	before := nw.Hosts[0].Succeed("readlink /run/deploy/current-system")
	ctx := context.Background()
	old := map[string]bool{}
	for obj := range srv.Client.ListObjects(ctx, "cache", minio.ListObjectsOptions{Prefix: "fleet/nar/", Recursive: true}) {
		old[obj.Key] = true
	}
	r.Run(t, "cache", "push", fl.Target("all")).Want(t, 0)
	// The new blob's NAR: the one large object the push added.
	var biggest minio.ObjectInfo
	for obj := range srv.Client.ListObjects(ctx, "cache", minio.ListObjectsOptions{Prefix: "fleet/nar/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		if !old[obj.Key] && obj.Size > 100<<20 {
			if biggest.Key != "" {
				t.Fatalf("two new large NARs: %s and %s", biggest.Key, obj.Key)
			}
			biggest = obj
		}
	}
	if biggest.Key == "" {
		t.Fatal("deploy cache push uploaded no new large NAR")
	}
	o, err := srv.Client.GetObject(ctx, "cache", biggest.Key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nar := new(bytes.Buffer)
	nar.ReadFrom(o)
	o.Close()
	data := nar.Bytes()
	data[len(data)/3] ^= 0x55
	if _, err := srv.Client.PutObject(ctx, "cache", biggest.Key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	// (Exit 4: a copy failed.)
	res := run(fl.Target("all")).Want(t, ExitUnreachable)
	for _, h := range nw.Hosts {
		r := res.Results()[h.Name()]
		if r.Result != fleet.ResultUnreachable || r.Phase != fleet.PhaseCopy || !strings.Contains(r.Error, "refused") || !strings.Contains(r.Error, "-blob") {
			t.Errorf("%s: %+v; want the copy refused, naming the blob's path", h.Name(), r)
		}
	}
	if after := nw.Hosts[0].Succeed("readlink /run/deploy/current-system"); after != before {
		t.Errorf("h1 runs %q after the refused copy, want %q", after, before)
	}
	nw.Hosts[0].Succeed("/run/deploy/current-system/agent/bin/deploy-agent verify")
}
