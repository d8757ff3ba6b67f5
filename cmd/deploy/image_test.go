package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/imageroot"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/testenv"
	"github.com/declarative/deploy/oci"
	"github.com/declarative/deploy/oci/ocitest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

const imageFleet = `
role "hello" {
  package "hello" {
    go {
      src = "./hello"
    }
  }
  file "/etc/hello/motd" {
    content = "hello from the image\n"
  }
  service "hello" {
    exec_start  = "${package.hello}/bin/hello 'two words' 100%%"
    environment = { GREETING = "hi", MOTD = "/etc/hello/motd" }
  }
}

host "h1" {
  address = "10.0.0.1"
  roles   = [role.hello]
}
`

const helloMain = `package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	fmt.Printf("%s %s\n", os.Getenv("GREETING"), strings.Join(os.Args[1:], "|"))
}
`

// runImageCLI runs the real main in-process with the given cache and returns
// stdout, failing the test on a non-zero exit.
func runImageCLI(t *testing.T, cache string, args ...string) string {
	t.Helper()
	// A clean deploy cache, not a clean Go build cache: the go build of
	// the role's package would otherwise compile the standard library
	// again under each new XDG_CACHE_HOME (minutes on two cores).
	for _, kv := range e2e.GoCaches(t) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("XDG_CACHE_HOME", cache)
	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("deploy %s: exit %d\n%s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

// TestImageCommand: deploy image of a role, on two clean caches, gives the
// same digest and the same bytes; the archive loads into a registry with one
// layer per store path; pulled back into a store, its entrypoint runs in its
// root filesystem (chroot, so the test needs root).
func TestImageCommand(t *testing.T) {
	fleetDir := t.TempDir()
	for name, content := range map[string]string{"fleet.hcl": imageFleet, "hello/go.mod": "module example.com/hello\n\ngo 1.22\n", "hello/main.go": helloMain} {
		os.MkdirAll(filepath.Join(fleetDir, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(fleetDir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	agent := e2e.Agent(t)
	var digests []string
	var archives [][]byte
	for i := range 2 {
		out := filepath.Join(t.TempDir(), "hello.tar")
		d := runImageCLI(t, t.TempDir(), "image", "--agent", agent, "-o", out, fleetDir+"#hello")
		digests = append(digests, strings.TrimSpace(d))
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		archives = append(archives, data)
		if i == 0 && !strings.HasPrefix(digests[0], "sha256:") {
			t.Fatalf("deploy image printed %q, want a digest", d)
		}
	}
	if digests[0] != digests[1] || !bytes.Equal(archives[0], archives[1]) {
		t.Fatalf("two clean caches gave %s and %s (archives equal: %t)", digests[0], digests[1], bytes.Equal(archives[0], archives[1]))
	}

	// One layer per store path of the role's closure.
	dir := t.TempDir()
	untarTo(t, archives[0], dir)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	h, err := v1.NewHash(digests[0])
	if err != nil {
		t.Fatal(err)
	}
	img, err := idx.Image(h)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	runImageCLI(t, cache, "image", "--agent", agent, "-o", filepath.Join(t.TempDir(), "x.tar"), fleetDir+"#hello")
	local, err := closure.NewLocalStore(filepath.Join(cache, "deploy"), closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := local.Closure(cf.Config.Labels["dev.deploy.system"])
	if err != nil {
		t.Fatal(err)
	}
	paths := len(cl)
	reg := ocitest.Start(t)
	ref := reg.Host + "/hello/image:1"
	if got := reg.Push(t, ref, img); got != digests[0] {
		t.Errorf("the registry has digest %s, want %s", got, digests[0])
	}
	// deploy image --push: the same digest in the registry.
	pushed := reg.Host + "/hello/pushed:1"
	if d := strings.TrimSpace(runImageCLI(t, t.TempDir(), "image", "--agent", agent, "--push", pushed, "--insecure", fleetDir+"#hello")); d != digests[0] {
		t.Errorf("deploy image --push printed %s, want %s", d, digests[0])
	}
	if got := reg.Digest(t, pushed); got != digests[0] {
		t.Errorf("the pushed image has digest %s, want %s", got, digests[0])
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != paths {
		t.Errorf("image has %d layers, %v; the closure has %d paths", len(layers), err, paths)
	}

	// Pulled back, the entrypoint runs inside the image's root.
	testenv.NeedRoot(t)
	s, err := closure.NewLocalStore(t.TempDir(), closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	back, err := (&oci.Puller{CacheDir: t.TempDir()}).Realize(context.Background(), s, ref, digests[0], true, oci.Platform("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(back.Config.Entrypoint); n != 3 || back.Config.Entrypoint[1] != "two words" || back.Config.Entrypoint[2] != "100%" {
		t.Fatalf("entrypoint = %q, want the program, \"two words\" and \"100%%\"", back.Config.Entrypoint)
	}
	cmd := exec.Command(back.Config.Entrypoint[0], back.Config.Entrypoint[1:]...)
	cmd.Env = back.Config.Env
	// The root as the agent realizes it on a host, from the layer paths.
	var blobs []imageroot.Layer
	for _, l := range back.Layers {
		blobs = append(blobs, imageroot.Layer{Digest: l.Digest, Blob: filepath.Join(s.RealPath(l.Path), oci.LayerFile)})
	}
	images := t.TempDir()
	if _, _, err := imageroot.Realize(context.Background(), images, back.Digest, blobs); err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: filepath.Join(imageroot.Path(images, back.Digest), imageroot.RootDir)}
	cmd.Dir = "/"
	got, err := cmd.CombinedOutput()
	if err != nil || string(got) != "hi two words|100%\n" {
		t.Errorf("the image's entrypoint printed %q, %v; want %q", got, err, "hi two words|100%\n")
	}
}

func untarTo(t *testing.T, data []byte, dir string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		b, _ := io.ReadAll(tr)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
