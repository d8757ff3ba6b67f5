package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/minio/minio-go/v7"
)

// TestSubstituteE2E: CI builds a fleet with a go package and pushes it to
// a binary cache in a real MinIO (deploy cache push), which records each
// package's build inputs → output, signed. An operator on another machine
// (its own HOME, store and an empty Go build cache) builds the same commit
// and compiles nothing: the package comes from the cache, and the system
// path is CI's. A realisation tampered with in the bucket (another output,
// or no signature) is refused with a warning, and the package is built
// locally, to the same path.
func TestSubstituteE2E(t *testing.T) {
	bins := e2e.Binaries(t)
	goCaches := e2e.GoCaches(t)
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "cache", true)
	sk, pk, err := cache.GenerateKey("e2e-cache-1")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "cache.key")
	os.WriteFile(keyFile, []byte(sk.String()+"\n"), 0o600)

	fleet := t.TempDir()
	for name, content := range map[string]string{
		"fleet.hcl": fmt.Sprintf(`cache {
  url         = "s3://cache/fleet?endpoint=%s&region=us-east-1"
  public_keys = [%q]
}

host "web1" {
  address = "10.0.0.1"
  package "hello" {
    go { src = "./hello" }
  }
  service "hello" {
    exec_start = "${package.hello}/bin/hello"
  }
}
`, srv.Endpoint, pk.String()),
		"hello/go.mod": "module example.com/hello\n\ngo 1.22\n",
		// Unique per run: a machine-wide Go build cache cannot have it.
		"hello/main.go": fmt.Sprintf("package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(%q) }\n", t.Name()+fmt.Sprint(os.Getpid())),
	} {
		p := filepath.Join(fleet, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// operator runs deploy on a machine of its own: HOME, store, and Go
	// build cache (goCache; "" for the machine's).
	operator := func(env []string, goCache string, args ...string) (stdout, stderr string) {
		t.Helper()
		home := t.TempDir()
		c := exec.Command(bins.Deploy, args...)
		c.Dir = fleet
		c.Env = append([]string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache"), "PATH=" + os.Getenv("PATH")}, goCaches...)
		if goCache != "" {
			c.Env = append(c.Env, "GOCACHE="+goCache)
		}
		c.Env = append(c.Env, env...)
		var out, errb bytes.Buffer
		c.Stdout, c.Stderr = &out, &errb
		if err := c.Run(); err != nil {
			t.Fatalf("deploy %s: %v\n%s", strings.Join(args, " "), err, errb.String())
		}
		return strings.TrimSpace(out.String()), errb.String()
	}
	entries := func(dir string) int {
		n := 0
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return nil
		})
		return n
	}

	// CI: build and push.
	_, ciErr := operator(append(srv.Env(), "DEPLOY_CACHE_KEY="+keyFile), "", "cache", "push", ".#web1")
	if !strings.Contains(ciErr, "build realisations recorded") {
		t.Fatalf("cache push recorded no realisation:\n%s", ciErr)
	}
	ctx := context.Background()
	var realisation string
	for obj := range srv.Client.ListObjects(ctx, "cache", minio.ListObjectsOptions{Prefix: "fleet/realisations/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		realisation = obj.Key
	}
	if !strings.HasPrefix(realisation, "fleet/realisations/go-package-v1-") {
		t.Fatalf("no realisation in the bucket (%q)", realisation)
	}
	ciSystem, _ := operator(nil, "", "build", ".#web1")

	// The operator: nothing compiled, the same system.
	goCache := t.TempDir()
	sys, stderr := operator(nil, goCache, "build", ".#web1")
	t.Logf("the operator's build:\n%s", stderr)
	if sys != ciSystem {
		t.Errorf("the operator built %q, CI %q", sys, ciSystem)
	}
	if !strings.Contains(stderr, `package "hello" substituted from the cache`) {
		t.Errorf("build does not say the package was substituted:\n%s", stderr)
	}
	if strings.Contains(stderr, "building package") || entries(goCache) != 0 {
		t.Errorf("the operator compiled (%d files in its Go build cache):\n%s", entries(goCache), stderr)
	}

	// Tampered realisations: refused, built here, same path.
	obj, err := srv.Client.GetObject(ctx, "cache", realisation, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	var r cache.Realisation
	if err := json.Unmarshal(orig, &r); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tamper func(r cache.Realisation) cache.Realisation
		want   string
	}{
		{"another output", func(r cache.Realisation) cache.Realisation {
			r.Out = filepath.Dir(r.Out) + "/00000000000000000000000000000000-evil"
			return r
		}, "signed by e2e-cache-1: no valid signature by a trusted key"},
		{"unsigned", func(r cache.Realisation) cache.Realisation { r.Sigs = nil; return r }, "unsigned: no valid signature by a trusted key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, _ := json.Marshal(tc.tamper(r))
			if _, err := srv.Client.PutObject(ctx, "cache", realisation, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
			goCache := t.TempDir()
			sys, stderr := operator(nil, goCache, "build", ".#web1")
			t.Logf("the operator's build:\n%s", stderr)
			if !strings.Contains(stderr, "Substitute refused") || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "building it here instead") {
				t.Errorf("no warning naming the refused realisation (%q):\n%s", tc.want, stderr)
			}
			if sys != ciSystem || entries(goCache) == 0 {
				t.Errorf("built %q (%d files in the Go build cache), want %q built here", sys, entries(goCache), ciSystem)
			}
		})
	}
}
