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

// postgresFleet runs PostgreSQL from an image built here from Debian's
// packages, as the image's postgres user, with its data in a state
// directory (initialised on the first start).
const postgresFleet = `
role "db" {
  package "postgres" {
    oci {
      image    = "%s/test/postgres:15"
      insecure = true
    }
  }
  service "postgres" {
    root              = package.postgres
    exec_start_pre    = ["/bin/sh -c 'test -s /var/lib/postgresql/data/PG_VERSION || /usr/lib/postgresql/15/bin/initdb -D /var/lib/postgresql/data'"]
    exec_start        = "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/data -k /run/postgresql -c listen_addresses=127.0.0.1"
    state_directory   = ["postgresql"]
    runtime_directory = ["postgresql"]
  }
}
`

// TestImagePostgresE2E is the acceptance: PostgreSQL from an OCI
// image (Debian bookworm's postgresql, debootstrapped once per machine, as
// one layer that keeps owners and modes) serves a query with its data in a
// state directory; the image's 0600 postgres files are 0600 and owned by
// the service's user on the host, and no other user reads them.
func TestImagePostgresE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	ctx := context.Background()
	rootfs, err := vmtest.Rootfs(ctx, []string{"postgresql"}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	// The image's own record of the postgres user and of a 0600 file it
	// owns (the package's cluster, made by its postinst).
	secret := "var/lib/postgresql/15/main/PG_VERSION"
	fi, err := os.Stat(filepath.Join(rootfs, secret))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	uid, gid := st.Uid, st.Gid
	if fi.Mode().Perm() != 0o600 || uid == 0 {
		t.Fatalf("%s in the root filesystem has mode %o, owner %d: want 0600 owned by postgres", secret, fi.Mode().Perm(), uid)
	}

	reg := ocitest.Start(t)
	l, err := nw.Listen(ctx, "tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	regHost := reg.Serve(t, l)
	layer := ocitest.OwnedDirLayer(t, rootfs, "usr/share/doc", "usr/share/man")
	img := ocitest.Image(t, "amd64", v1.Config{User: "postgres", Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}, layer)
	reg.Push(t, reg.Host+"/test/postgres:15", img)
	digest, _ := img.Digest()

	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "  roles    = [role.db]\n", "")
	fl.Write(t, "db.hcl", fmt.Sprintf(postgresFleet, regHost))
	r := cli.New(t, nw, fl)
	r.Run(t, "lock", fl.Dir).Want(t, 0)
	r.JSON(t, "", fl.Target("@test")).Want(t, 0)

	root := "/var/lib/deploy/images/" + digest.Hex + "/rootfs"
	h.WaitForUnit("postgres.service")
	psql := fmt.Sprintf("systemd-run --wait --pipe -q -p RootDirectory=%s -p MountAPIVFS=yes -p User=%d -p Group=%d -p BindPaths=/run/postgresql "+
		"/usr/lib/postgresql/15/bin/psql -h /run/postgresql -d postgres -Atc ", root, uid, gid)
	// Until it accepts connections (bounded by the harness's command
	// deadline, as WaitForUnit is).
	ready := "until " + psql + `"select 1" >/dev/null 2>&1; do sleep 0.1; done`
	h.Succeed(ready)
	if got := strings.TrimSpace(h.Succeed(psql + `"create table t (x int); insert into t values (42); select x from t"`)); got != "CREATE TABLE\nINSERT 0 1\n42" && got != "42" {
		t.Errorf("the query answered %q, want 42", got)
	}
	// The data is in the state directory, the service's, private.
	if got := strings.TrimSpace(h.Succeed("stat -c '%a %u' /var/lib/postgresql/data; test -s /var/lib/postgresql/data/PG_VERSION && echo ok")); got != fmt.Sprintf("700 %d\nok", uid) {
		t.Errorf("the state directory: %q, want 0700 owned by %d", got, uid)
	}
	if got := strings.TrimSpace(h.Succeed(`pid=$(systemctl show -P MainPID postgres.service); stat -c '%u %g' /proc/$pid`)); got != fmt.Sprintf("%d %d", uid, gid) {
		t.Errorf("postgres runs as %q, want %d %d", got, uid, gid)
	}
	// The image's 0600 file is 0600 and the service user's on the host; no
	// other user reads it.
	if got := strings.TrimSpace(h.Succeed("stat -c '%a %u %g' " + root + "/" + secret)); got != fmt.Sprintf("600 %d %d", uid, gid) {
		t.Errorf("%s realized as %q, want 600 %d %d", secret, got, uid, gid)
	}
	h.Fail("setpriv --reuid=65534 --regid=65534 --clear-groups cat " + root + "/" + secret)
	// Every entry of the image is on the host as in the root filesystem the
	// layer was made from: type, mode (set-ID bits included), owner, group.
	want := map[string]string{}
	skip := map[string]bool{"usr/share/doc": true, "usr/share/man": true}
	mountPoints := map[string]bool{"dev": true, "proc": true, "sys": true, "run": true, "tmp": true, "var/tmp": true,
		"root": true, "home": true, "usr": true, "etc/resolv.conf": true, "etc/hosts": true}
	err = filepath.WalkDir(rootfs, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rootfs, p)
		if skip[rel] {
			return filepath.SkipDir
		}
		if rel == "." || mountPoints[rel] || strings.HasPrefix(rel, "dev/") {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		typ := map[uint32]string{syscall.S_IFDIR: "d", syscall.S_IFREG: "f", syscall.S_IFLNK: "l", syscall.S_IFIFO: "p"}[st.Mode&syscall.S_IFMT]
		if typ == "" {
			return nil
		}
		want[rel] = fmt.Sprintf("%o %d %d %s", st.Mode&0o7777, st.Uid, st.Gid, typ)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(h.Succeed("cd "+root+" && find . -mindepth 1 -printf '%P\\t%m %U %G %y\\n'")), "\n") {
		p, rest, _ := strings.Cut(line, "\t")
		got[p] = rest
	}
	differ := 0
	for p, w := range want {
		if got[p] != w {
			if differ++; differ <= 10 {
				t.Errorf("/%s on the host: %q, in the image's source: %q", p, got[p], w)
			}
		}
	}
	t.Logf("compared %d entries of the image with the host's realized root: %d differ", len(want), differ)

	// A restart keeps the data.
	h.Succeed("systemctl restart postgres.service")
	h.Succeed(ready)
	if got := strings.TrimSpace(h.Succeed(psql + `"select x from t"`)); got != "42" {
		t.Errorf("after a restart the query answered %q, want 42", got)
	}
}
