package tailnet_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
	"github.com/declarative/deploy/mesh/tailnet"
	"github.com/declarative/deploy/mesh/tailnet/tailnettest"
	"github.com/declarative/deploy/vmtest"
)

// setup boots one test host whose sshd listens on 127.0.0.1 only, puts it on
// an in-process tailnet, and returns it with a started operator transport
// and a mesh configuration that dials through it.
func setup(t *testing.T) (*vmtest.Host, *tailnettest.Node, *tailnet.Transport, *mesh.Config) {
	t.Helper()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	tn := tailnettest.Start(t)
	node := tn.InstallNode(t, nw, vmtest.ControllerAddr, h)
	// The direct path is closed: sshd no longer listens on the host's
	// address, only on its loopback, where the tailnet node forwards to.
	h.Succeed("printf 'ListenAddress 127.0.0.1\\n' > /etc/ssh/sshd_config.d/zz-tailnet-only.conf && systemctl restart ssh")
	h.WaitForOpenPort(22)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := nw.Dial(ctx, h.Name(), 22); err == nil {
		c.Close()
		t.Fatal("direct TCP connection to the host's sshd succeeded; the test needs it closed")
	} else {
		t.Logf("direct dial to %s:22 fails as intended: %v", h.Addr(), err)
	}

	tr := tn.Transport(t, "operator")
	sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
	defer scancel()
	if err := tr.Start(sctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	ip4, _ := tr.Addrs()
	t.Logf("operator on the tailnet as %v; %s as %v", ip4, node.Name, node.Addr)

	dir := t.TempDir()
	key := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(key, nw.ClientKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &mesh.Config{
		Dialer:            tr,
		IdentityFiles:     []string{key},
		KnownHostsFiles:   []string{filepath.Join(dir, "known_hosts")},
		SSHConfigFile:     "none",
		KeepaliveInterval: time.Second,
		KeepaliveMax:      3,
		DialTimeout:       30 * time.Second,
		Getenv:            func(k string) string { return map[string]string{"HOME": dir}[k] },
		Logf:              t.Logf,
	}
	return h, node, tr, cfg
}

func TestTransportOverTailnet(t *testing.T) {
	h, node, _, cfg := setup(t)
	tg := mesh.Target{Name: h.Name(), Address: h.Name(), HostKey: h.HostKeyLine()}

	t.Run("Conformance", func(t *testing.T) {
		meshtest.RunTransportTests(t, func(t *testing.T) *mesh.Client {
			cl, err := cfg.Connect(context.Background(), tg)
			if err != nil {
				t.Fatalf("Connect(%q) over the tailnet: %v", tg.Address, err)
			}
			return cl
		})
	})

	t.Run("Addresses", func(t *testing.T) {
		for _, addr := range []string{h.Name(), h.Name() + "." + tailnettest.MagicDNSDomain, node.Addr.String()} {
			cl, err := cfg.Connect(context.Background(), mesh.Target{Name: h.Name(), Address: addr, HostKey: h.HostKeyLine()})
			if err != nil {
				t.Errorf("Connect(%q) = %v", addr, err)
				continue
			}
			var out strings.Builder
			err = cl.Run(context.Background(), []string{"sh", "-c", `echo "$SSH_CONNECTION"`}, nil, &out, nil)
			cl.Close()
			if err != nil {
				t.Errorf("Run over %q: %v", addr, err)
				continue
			}
			// sshd sees the node's forwarder on loopback: the session came
			// through the tailnet, not from the controller's address.
			if f := strings.Fields(out.String()); len(f) != 4 || f[0] != "127.0.0.1" || f[2] != "127.0.0.1" {
				t.Errorf("over %q: SSH_CONNECTION = %q, want 127.0.0.1 ... 127.0.0.1 22", addr, out.String())
			}
		}
	})

	t.Run("HostKeyStillVerified", func(t *testing.T) {
		other := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
		_, err := cfg.Connect(context.Background(), mesh.Target{Name: h.Name(), Address: h.Name(), HostKey: other})
		var hk *mesh.HostKeyError
		if !errors.As(err, &hk) {
			t.Fatalf("Connect with another pinned key = %v, want *mesh.HostKeyError", err)
		}
	})

	t.Run("NodeRestart", func(t *testing.T) {
		// The host's node goes away: an established connection dies, and a
		// short window gives up with the host unreachable.
		cl, err := cfg.Connect(context.Background(), tg)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		node.Stop(t)
		select {
		case <-cl.Dead():
		case <-time.After(30 * time.Second):
			t.Fatal("connection still alive 30 s after the host's node stopped")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = cfg.ConnectRetry(ctx, tg)
		cancel()
		var ue *mesh.UnreachableError
		if !errors.As(err, &ue) {
			t.Fatalf("ConnectRetry with the node down = %v, want *mesh.UnreachableError", err)
		}
		// Within a longer window (as a confirmation would have), the node
		// coming back is ridden out.
		ctx, cancel = context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			cl, err := cfg.ConnectRetry(ctx, tg)
			if err == nil {
				err = cl.Run(ctx, []string{"true"}, nil, nil, nil)
				cl.Close()
			}
			done <- err
		}()
		time.Sleep(2 * time.Second)
		node.Start(t)
		if err := <-done; err != nil {
			t.Fatalf("ConnectRetry across the node's restart: %v\nnode log:\n%s", err, node.Logs())
		}
	})
}

func TestStateDir(t *testing.T) {
	tests := []struct {
		name    string
		tr      *tailnet.Transport
		env     map[string]string
		want    string
		wantErr bool
	}{
		{"default profile", &tailnet.Transport{}, map[string]string{"HOME": "/home/op"}, "/home/op/.config/deploy/tailnet/default", false},
		{"xdg", &tailnet.Transport{Profile: "corp"}, map[string]string{"HOME": "/home/op", "XDG_CONFIG_HOME": "/x"}, "/x/deploy/tailnet/corp", false},
		{"relative xdg ignored", &tailnet.Transport{}, map[string]string{"HOME": "/h", "XDG_CONFIG_HOME": "rel"}, "/h/.config/deploy/tailnet/default", false},
		{"explicit dir", &tailnet.Transport{Dir: "/state", Profile: "x"}, nil, "/state", false},
		{"bad profile", &tailnet.Transport{Profile: "../x"}, map[string]string{"HOME": "/h"}, "", true},
		{"no home", &tailnet.Transport{}, map[string]string{}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := tt.tr
			tr.Getenv = func(k string) string { return tt.env[k] }
			got, err := tr.StateDir()
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("StateDir() = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestAuthKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for _, f := range []string{filepath.Join(dir, "missing"), empty} {
		tr := &tailnet.Transport{Dir: t.TempDir(), AuthKeyFile: f, Getenv: func(string) string { return "" }}
		err := tr.Start(context.Background())
		if err == nil || !strings.Contains(err.Error(), "auth key") {
			t.Errorf("Start with AuthKeyFile %q = %v, want an auth key error", f, err)
		}
	}
}
