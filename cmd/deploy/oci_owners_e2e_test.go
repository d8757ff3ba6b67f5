package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/declarative/deploy/vmtest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// appImageFleet runs the test image's app as the image's own user: it
// copies its 0600 file into its runtime directory (before the unit is
// active), then runs a program with a file capability.
const appImageFleet = `
role "app" {
  package "app" {
    oci {
      image    = "%s/test/app:1"
      insecure = true
    }
  }
  service "app" {
    root              = package.app
    exec_start_pre    = ["/bin/sh -c 'cat /srv/app/secret.txt > /run/app/out'"]
    exec_start        = "/usr/local/bin/capsleep infinity"
    runtime_directory = ["app"]
  }
}
`

// capNetBindService is security.capability for cap_net_bind_service=ep.
var capNetBindService = string([]byte{0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

// headerLayer is a gzip-compressed layer of tar headers; a regular file's
// body is in its Linkname field.
func headerLayer(t *testing.T, hdrs ...*tar.Header) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		h := *h
		body := ""
		if h.Typeflag == tar.TypeReg {
			body, h.Linkname, h.Size = h.Linkname, "", int64(len(h.Linkname))
		}
		h.ModTime, h.Format = time.Unix(1700000000, 0), tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestImageOwnersCapsE2E deploys an image whose app runs as its own user
// (4321, named in the image's /etc/passwd), reads a 0600 file it owns and
// runs a program with a file capability; then a new image that shares its
// base layer (the copy sends only the new layer), a rollback to the first
// image, and gc of the second image's root once no generation uses it.
func TestImageOwnersCapsE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	ctx := context.Background()
	rootfs, err := vmtest.Rootfs(ctx, []string{"nginx-light"}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	reg := ocitest.Start(t)
	l, err := nw.Listen(ctx, "tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	regHost := reg.Serve(t, l)

	base := ocitest.DirLayer(t, rootfs, "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info")
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	group, err := os.ReadFile(filepath.Join(rootfs, "etc/group"))
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := os.ReadFile(filepath.Join(rootfs, "usr/bin/sleep"))
	if err != nil {
		t.Fatal(err)
	}
	const uid = 4321
	app := func(secret string) v1.Layer {
		capsleep := &tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/capsleep", Linkname: string(sleep), Mode: 0o755,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capNetBindService}}
		return headerLayer(t,
			&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Linkname: string(passwd) + fmt.Sprintf("app:x:%d:%d::/srv/app:/usr/sbin/nologin\n", uid, uid), Mode: 0o644},
			&tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Linkname: string(group) + fmt.Sprintf("app:x:%d:\n", uid), Mode: 0o644},
			&tar.Header{Typeflag: tar.TypeDir, Name: "srv/", Mode: 0o755},
			&tar.Header{Typeflag: tar.TypeDir, Name: "srv/app/", Mode: 0o700, Uid: uid, Gid: uid},
			&tar.Header{Typeflag: tar.TypeReg, Name: "srv/app/secret.txt", Linkname: secret, Mode: 0o600, Uid: uid, Gid: uid},
			&tar.Header{Typeflag: tar.TypeDir, Name: "usr/local/bin/", Mode: 0o755},
			capsleep,
		)
	}
	cfg := v1.Config{User: "app", Entrypoint: []string{"/bin/sh"}}
	push := func(top v1.Layer) string {
		img := ocitest.Image(t, "amd64", cfg, base, top)
		reg.Push(t, reg.Host+"/test/app:1", img)
		d, _ := img.Digest()
		return d.Hex
	}

	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "  roles    = [role.app]\n", "")
	fl.Write(t, "app.hcl", fmt.Sprintf(appImageFleet, regHost))
	r := cli.New(t, nw, fl)
	target := fl.Target("@test")
	agent := "$(readlink -f /run/deploy/current-system)/agent/bin/deploy-agent"
	copyDone := func(res *cli.Result) fleet.Event {
		t.Helper()
		for _, ev := range res.Events {
			if ev.Host == h.Name() && ev.Phase == "copy" && ev.State == "done" {
				return ev
			}
		}
		t.Fatalf("no copy done event for %s", h.Name())
		return fleet.Event{}
	}
	running := func(step, hex, secret string) {
		t.Helper()
		root := "/var/lib/deploy/images/" + hex + "/rootfs"
		if got := strings.TrimSpace(h.Succeed("grep -o 'RootDirectory=.*' /etc/systemd/system/app.service")); got != "RootDirectory="+root {
			t.Errorf("%s: app.service has %s, want RootDirectory=%s", step, got, root)
		}
		h.WaitForUnit("app.service")
		// The service ran as the image's user and read the file it owns.
		if got := h.Succeed("cat /run/app/out"); got != secret {
			t.Errorf("%s: the service read %q, want %q", step, got, secret)
		}
		if got := strings.TrimSpace(h.Succeed(`pid=$(systemctl show -P MainPID app.service); stat -c '%u %g' /proc/$pid; grep CapEff /proc/$pid/status`)); got != fmt.Sprintf("%d %d\nCapEff:\t0000000000000400", uid, uid) {
			t.Errorf("%s: the service's process: %q, want uid and gid %d and only cap_net_bind_service (0x400) effective, from the file capability", step, got, uid)
		}
		// On the host: the realized file keeps its owner and mode, and
		// another user cannot read it.
		file := root + "/srv/app/secret.txt"
		if got := strings.TrimSpace(h.Succeed("stat -c '%a %u %g' " + file + " " + root + "/srv/app " + root + "/usr/local/bin/capsleep")); got != fmt.Sprintf("600 %d %d\n700 %d %d\n755 0 0", uid, uid, uid, uid) {
			t.Errorf("%s: realized modes and owners: %q", step, got)
		}
		h.Fail("setpriv --reuid=65534 --regid=65534 --clear-groups cat " + file)
		h.Fail(fmt.Sprintf("setpriv --reuid=%d --regid=%d --clear-groups cat /var/lib/deploy/images/%s/rootfs/srv/app/secret.txt", uid+1, uid+1, hex))
		h.Succeed("test $(stat -c %a /var/lib/deploy/images) = 700")
		h.Succeed(agent + " verify")
	}

	// 1. The first image.
	first := push(app("v1 secret\n"))
	r.Run(t, "lock", fl.Dir).Want(t, 0)
	res1 := r.JSON(t, "", target).Want(t, 0)
	running("first deploy", first, "v1 secret\n")
	c1 := copyDone(res1)

	// 2. A new image sharing the base layer: only the new layer, the image
	// path and the system's own paths are copied.
	top2 := app("v2 secret\n")
	second := push(top2)
	r.Run(t, "lock", "--update", fl.Dir).Want(t, 0)
	res2 := r.JSON(t, "", target).Want(t, 0)
	running("new image", second, "v2 secret\n")
	c2 := copyDone(res2)
	// The paths the copy named: the new top layer and the new image path
	// among them, no other layer.
	sent := map[string]bool{}
	for _, ev := range res2.Events {
		if ev.Type == fleet.EventProgress && ev.Host == h.Name() && ev.Phase == "copy" && ev.Path != "" {
			sent[ev.Path] = true
		}
	}
	topDigest, _ := top2.Digest()
	baseDigest, _ := base.Digest()
	var layersSent, imagesSent []string
	for p := range sent {
		switch {
		case strings.Contains(p, "-oci-layer-"):
			layersSent = append(layersSent, p)
		case strings.HasSuffix(p, "-oci-"+second[:16]):
			imagesSent = append(imagesSent, p)
		}
	}
	t.Logf("the new image's copy named %q", slices.Sorted(maps.Keys(sent)))
	if len(layersSent) != 1 || !strings.HasSuffix(layersSent[0], "-oci-layer-"+topDigest.Hex[:16]) || len(imagesSent) != 1 || len(sent) != c2.CopyPaths {
		t.Errorf("the new image's copy named %d paths %q (copy_paths %d); want its top layer (%s, not the base %s) and its image path among them", len(sent), slices.Sorted(maps.Keys(sent)), c2.CopyPaths, topDigest.Hex[:16], baseDigest.Hex[:16])
	}
	baseSize := strings.TrimSpace(h.Succeed("du -sb /var/lib/deploy/store/*-oci-layer-* | sort -n | tail -1 | cut -f1"))
	t.Logf("first deploy copied %d paths, %d bytes; the new image %d paths, %d bytes; the base layer path is %s bytes", c1.CopyPaths, c1.Total, c2.CopyPaths, c2.Total, baseSize)
	var baseBytes int64
	fmt.Sscan(baseSize, &baseBytes)
	if c2.Total >= baseBytes/4 || c2.Total <= 0 {
		t.Errorf("the new image's deploy sent %d bytes, want well under the base layer's %d", c2.Total, baseBytes)
	}
	// The host holds three layer paths (base, two tops), the base once.
	if got := strings.TrimSpace(h.Succeed("ls -d /var/lib/deploy/store/*-oci-layer-* | wc -l")); got != "3" {
		t.Errorf("the host has %s layer paths, want 3 (the shared base once)", got)
	}

	// 2b. An image the host fails to realize (a file stands where its root
	// would go): the activation fails before anything else changed, and
	// the host keeps running the second image.
	third := push(app("v3 secret\n"))
	r.Run(t, "lock", "--update", fl.Dir).Want(t, 0)
	h.Succeed("touch /var/lib/deploy/images/" + third)
	res3 := r.JSON(t, "", target).Want(t, ExitRolledBack)
	if got := res3.Results()[h.Name()]; got.Result != fleet.ResultRolledBack || !strings.Contains(got.Error, "image") {
		t.Errorf("an image the host cannot realize: %+v, want rolled back naming the image", got)
	}
	h.Succeed("rm -f /run/app/out; systemctl restart app.service")
	running("after a failed realization", second, "v2 secret\n")
	if got := strings.TrimSpace(h.Succeed("ls -A /var/lib/deploy/images")); got != strings.Join(sortedStrings(first, second, third), "\n") {
		t.Errorf("after a failed realization the host has %q in its images directory, want the two roots and the blocking file", got)
	}
	h.Succeed("rm /var/lib/deploy/images/" + third)

	// 3. deploy rollback returns the first image, whose root is still there.
	r.Text(t, "rollback", "--confirm-timeout", "10s", target).Want(t, 0)
	h.Succeed("rm -f /run/app/out; systemctl restart app.service")
	running("rollback", first, "v1 secret\n")

	// 4. The first image again in a new generation (the same digest: the
	// same root), then gc keeping one generation: the second image's root
	// goes, with the generations that used it.
	if again := push(app("v1 secret\n")); again != first {
		t.Fatalf("the first image pushed again has digest %s, want %s", again, first)
	}
	fl.Write(t, "app.hcl", strings.Replace(fmt.Sprintf(appImageFleet, regHost), `runtime_directory = ["app"]`, `runtime_directory = ["app"]
    environment       = { GENERATION = "3" }`, 1))
	r.Run(t, "lock", "--update", fl.Dir).Want(t, 0)
	r.JSON(t, "", target).Want(t, 0)
	if got := strings.Fields(h.Succeed("ls /var/lib/deploy/images")); len(got) != 2 {
		t.Errorf("before gc the host has image roots %q, want both", got)
	}
	h.Succeed(agent + " gc --keep 1")
	if got := strings.TrimSpace(h.Succeed("ls -A /var/lib/deploy/images")); got != first {
		t.Errorf("after gc the host has image roots %q, want only %s", got, first)
	}
	h.Succeed("rm -f /run/app/out; systemctl restart app.service")
	running("after gc", first, "v1 secret\n")
}

func sortedStrings(s ...string) []string {
	slices.Sort(s)
	return s
}
