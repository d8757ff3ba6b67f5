package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/declarative/deploy/vmtest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// nginxImageFleet runs nginx from an image on every host: the site's
// configuration comes from the fleet, bound over the image's conf.d.
const nginxImageFleet = `
role "web" {
  package "nginx" {
    oci {
      image    = "%s/web/nginx:stable"
      insecure = true
    }
  }
  file "/etc/nginx-site/site.conf" {
    content = <<-EOF
      server {
        listen 8080;
        root /var/www/html;
        location = /fleet { return 200 "fleet config %s\n"; }
      }
    EOF
  }
  service "nginx" {
    root            = package.nginx
    bind            = ["/etc/nginx-site:/etc/nginx/conf.d"]
    state_directory = ["nginx"]
    logs_directory  = ["nginx"]
  }
  health_check "nginx" {
    url      = "http://127.0.0.1:8080/fleet"
    timeout  = "8s"
    interval = "500ms"
  }
}
`

// TestImageServiceE2E deploys nginx (Debian's nginx-light with its
// libraries, debootstrapped once per machine) from an image in a registry to
// two hosts, rolls a new tag, has a broken image roll back on its health
// check, and rolls back to the first image.
func TestImageServiceE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 2)
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
	regHost := reg.Serve(t, l) // where deploy, in the switch namespace, pulls from

	// The base layer is the root filesystem without documentation; each
	// version adds a layer that removes Debian's default site (a
	// whiteout) and replaces the web root (an opaque directory).
	base := ocitest.DirLayer(t, rootfs, "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info")
	cfg := v1.Config{Entrypoint: []string{"nginx"}, Cmd: []string{"-g", "daemon off;"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, StopSignal: "SIGQUIT"}
	version := func(v string, extra ...ocitest.Entry) v1.Image {
		site := ocitest.Layer(t, append([]ocitest.Entry{
			ocitest.Whiteout("etc/nginx/sites-enabled/default"),
			ocitest.Dir("var/www/html/"), ocitest.Opaque("var/www/html"), ocitest.File("var/www/html/index.html", "version "+v+"\n"),
		}, extra...)...)
		return ocitest.Image(t, "amd64", cfg, base, site)
	}
	push := func(img v1.Image) { reg.Push(t, reg.Host+"/web/nginx:stable", img) }

	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "  roles    = [role.web]\n", "")
	r := cli.New(t, nw, fl)
	writeFleet := func(config string) {
		t.Helper()
		fl.Write(t, "web.hcl", fmt.Sprintf(nginxImageFleet, regHost, config))
	}
	lock := func(update bool) {
		t.Helper()
		args := []string{"lock"}
		if update {
			args = append(args, "--update")
		}
		r.Run(t, append(args, fl.Dir)...).Want(t, 0)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: nw.DialContext}, Timeout: 10 * time.Second}
	get := func(h *vmtest.Host, path string) string {
		t.Helper()
		resp, err := client.Get("http://" + h.Name() + ":8080" + path)
		if err != nil {
			t.Fatalf("GET %s%s: %v", h.Name(), path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	expect := func(step, page, config string) {
		t.Helper()
		for _, h := range nw.Hosts {
			if got := get(h, "/"); got != page {
				t.Errorf("%s: %s serves %q at /, want %q", step, h.Name(), got, page)
			}
			if got := get(h, "/fleet"); got != "fleet config "+config+"\n" {
				t.Errorf("%s: %s serves %q at /fleet, want the fleet's config %s", step, h.Name(), got, config)
			}
		}
	}
	imageOf := func(h *vmtest.Host) string {
		return strings.TrimSpace(h.Succeed("grep -o 'RootDirectory=.*' /etc/systemd/system/nginx.service"))
	}
	target := fl.Target("@test")

	// 1. The first image, pinned by deploy lock, on both hosts.
	push(version("1"))
	writeFleet("v1")
	lock(false)
	r.JSON(t, "", target).Want(t, 0)
	expect("first deploy", "version 1\n", "v1")
	first := imageOf(nw.Hosts[0])
	for _, h := range nw.Hosts {
		// Nothing was written into the image's store path (systemd found
		// every mount point), and nginx runs from the image: the host has
		// no nginx of its own.
		h.Succeed("$(readlink -f /run/deploy/current-system)/agent/bin/deploy-agent verify")
		h.Succeed(`pid=$(systemctl show -P MainPID nginx.service); test -x /proc/$pid/root/usr/sbin/nginx && ! test -e /usr/sbin/nginx`)
		// The host's /etc/hosts is visible inside, and the state directory
		// is the host's /var/lib/nginx (nginx made its temp directories there).
		h.Succeed(`pid=$(systemctl show -P MainPID nginx.service); cmp /proc/$pid/root/etc/hosts /etc/hosts && test -d /var/lib/nginx/body`)
	}

	// 2. A new image under the tag: deploy lock --update re-pins it and the
	// service restarts on it; the fleet's config changes at the same time.
	push(version("2"))
	writeFleet("v2")
	lock(true)
	res := r.JSON(t, "", target).Want(t, 0)
	for _, h := range nw.Hosts {
		if r := res.Results()[h.Name()]; r.Result != fleet.ResultOK {
			t.Errorf("second deploy: %s %+v", h.Name(), r)
		}
	}
	expect("new tag", "version 2\n", "v2")
	second := imageOf(nw.Hosts[0])
	if second == first {
		t.Fatalf("the new tag did not change the service's root (%s)", first)
	}

	// 3. A broken image (nginx.conf that does not parse): the health check
	// fails and the hosts return to the second image.
	push(version("3", ocitest.File("etc/nginx/nginx.conf", "this is not nginx syntax\n")))
	lock(true)
	res = r.JSON(t, "", target).Want(t, ExitRolledBack)
	for _, h := range nw.Hosts {
		r := res.Results()[h.Name()]
		if r.Result != fleet.ResultRolledBack && r.Result != fleet.ResultSkipped {
			t.Errorf("broken image: %s %+v, want rolled back (or skipped after the canary failed)", h.Name(), r)
		}
		if got := imageOf(h); got != second {
			t.Errorf("broken image: %s runs %s after the rollback, want %s", h.Name(), got, second)
		}
		h.Succeed("systemctl is-active nginx.service")
	}
	expect("after the failed health check", "version 2\n", "v2")

	// 4. deploy rollback returns the first image.
	r.Text(t, "rollback", "--confirm-timeout", "10s", target).Want(t, 0)
	expect("deploy rollback", "version 1\n", "v1")
	for _, h := range nw.Hosts {
		if got := imageOf(h); got != first {
			t.Errorf("rollback: %s runs %s, want the first image %s", h.Name(), got, first)
		}
	}
}
