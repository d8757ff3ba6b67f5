package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/declarative/deploy/vmtest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// redisFleet runs Redis from an image built here from Debian's packages,
// as the image's redis user, with the image's own configuration (0640,
// redis's) and its data in a state directory.
const redisFleet = `
role "cache" {
  package "redis" {
    oci {
      image    = "%s/test/redis:7"
      insecure = true
    }
  }
  service "redis" {
    root              = package.redis
    exec_start        = "/usr/bin/redis-server /etc/redis/redis.conf --daemonize no --supervised no --logfile '' --port 0 --unixsocket /run/redis/redis.sock --unixsocketperm 700"
    state_directory   = ["redis"]
    runtime_directory = ["redis"]
    logs_directory    = ["redis"]
  }
}
`

// TestImageRedisE2E runs a second daemon with its own user from an image:
// Redis reads its 0640 configuration, which the host keeps 0640 and
// redis's, serves a write and a read on its socket, and keeps its data in
// the state directory.
func TestImageRedisE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	ctx := context.Background()
	rootfs, err := vmtest.Rootfs(ctx, []string{"redis-server"}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	const conf = "etc/redis/redis.conf"
	fi, err := os.Stat(filepath.Join(rootfs, conf))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	uid, gid := st.Uid, st.Gid
	if fi.Mode().Perm() != 0o640 || uid == 0 {
		t.Fatalf("%s in the root filesystem has mode %o, owner %d: want 0640 owned by redis", conf, fi.Mode().Perm(), uid)
	}

	reg := ocitest.Start(t)
	l, err := nw.Listen(ctx, "tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	regHost := reg.Serve(t, l)
	img := ocitest.Image(t, "amd64", v1.Config{User: "redis"}, ocitest.OwnedDirLayer(t, rootfs, "usr/share/doc", "usr/share/man"))
	reg.Push(t, reg.Host+"/test/redis:7", img)
	digest, _ := img.Digest()

	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "  roles    = [role.cache]\n", "")
	fl.Write(t, "cache.hcl", fmt.Sprintf(redisFleet, regHost))
	r := cli.New(t, nw, fl)
	r.Run(t, "lock", fl.Dir).Want(t, 0)
	r.JSON(t, "", fl.Target("@test")).Want(t, 0)

	root := "/var/lib/deploy/images/" + digest.Hex + "/rootfs"
	h.WaitForUnit("redis.service")
	cliCmd := fmt.Sprintf("systemd-run --wait --pipe -q -p RootDirectory=%s -p MountAPIVFS=yes -p User=%d -p Group=%d -p BindPaths=/run/redis /usr/bin/redis-cli -s /run/redis/redis.sock ", root, uid, gid)
	h.Succeed("until " + cliCmd + "ping 2>/dev/null | grep -q PONG; do sleep 0.1; done") // within the harness's command deadline
	if got := strings.TrimSpace(h.Succeed(cliCmd + "set k from-the-image && " + cliCmd + "get k && " + cliCmd + "save")); got != "OK\nfrom-the-image\nOK" {
		t.Errorf("redis answered %q", got)
	}
	if got := strings.TrimSpace(h.Succeed(`pid=$(systemctl show -P MainPID redis.service); stat -c '%u %g' /proc/$pid; stat -c '%a %u' ` + root + "/" + conf + "; test -s /var/lib/redis/dump.rdb && echo saved")); got != fmt.Sprintf("%d %d\n640 %d\nsaved", uid, gid, uid) {
		t.Errorf("redis's process, its configuration on the host, its data: %q; want uid and gid %d %d, 640 %d, a dump in the state directory", got, uid, gid, uid)
	}
	h.Fail("setpriv --reuid=65534 --regid=65534 --clear-groups cat " + root + "/" + conf)
}
