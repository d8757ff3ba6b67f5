package simhost

import (
	"context"
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/testenv"
)

// start starts n simulated hosts for t, or skips it with the reason the
// machine cannot.
func start(t *testing.T, n int) *Network {
	t.Helper()
	if err := Check(); err != nil {
		testenv.Missing(t, err.Error())
	}
	nw, err := Start(context.Background(), Options{Hosts: n, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nw.Close() })
	return nw
}

// TestHost: each host has its own namespaces, address, /etc and state
// directory, and its systemd is the recording stand-in.
func TestHost(t *testing.T) {
	nw := start(t, 2)
	ctx := context.Background()
	h1, h2 := nw.Hosts()[0], nw.Hosts()[1]
	for _, h := range nw.Hosts() {
		out, err := h.Run(ctx, "cat /etc/hostname; ip -4 -o addr show dev eth0; test ! -e /run/systemd/system && echo nosystemd")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, h.Name()+"\n") || !strings.Contains(out, h.Addr().String()+"/") || !strings.Contains(out, "nosystemd") {
			t.Errorf("%s: %q", h.Name(), out)
		}
	}
	if _, err := h1.Run(ctx, "touch /var/lib/deploy/mine /etc/mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.Run(ctx, "test ! -e /var/lib/deploy/mine && test ! -e /etc/mine"); err != nil {
		t.Errorf("h2 sees h1's files: %v", err)
	}
	if _, err := h2.Run(ctx, "ping -c1 -W2 "+h1.Addr().String()+" >/dev/null 2>&1 || true"); err != nil {
		t.Fatal(err)
	}
	out, err := h1.Run(ctx, `systemctl is-active -- app.service; systemctl is-system-running --wait; systemctl show -p Id -p ActiveState -- a.service b.service; systemctl show --property=ActiveState --value x.service; systemctl daemon-reload && echo reloaded; systemd-run --unit=x true || echo refused`)
	if err != nil {
		t.Fatal(err)
	}
	want := "active\nrunning\nId=a.service\nActiveState=active\n\nId=b.service\nActiveState=active\nactive\nreloaded\nrefused\n"
	if out != want {
		t.Errorf("the stand-in answered %q, want %q", out, want)
	}
	calls, err := h1.Calls(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 6 || calls[0][0] != "systemctl" || calls[0][1] != "is-active" || calls[5][0] != "systemd-run" {
		t.Errorf("calls %q", calls)
	}
	if c, _ := h2.Calls(ctx); len(c) != 0 {
		t.Errorf("h2's calls %q, want none", c)
	}
}
