package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/tailnet"
	"github.com/declarative/deploy/mesh/tailnet/tailnettest"
	"github.com/declarative/deploy/vmtest"
)

// onTailnet puts h on an in-process tailnet and returns its node and a
// mesh configuration whose dialer is the production tailnet transport.
// With tailnetOnly, h's sshd then listens on 127.0.0.1 only, so the direct
// path is refused and only the tailnet (whose node forwards to loopback)
// reaches it.
func onTailnet(t testing.TB, nw *vmtest.Network, h *vmtest.Host, tailnetOnly bool) (*tailnettest.Node, *mesh.Config) {
	t.Helper()
	tn := tailnettest.Start(t)
	node := tn.InstallNode(t, nw, vmtest.ControllerAddr, h)
	if tailnetOnly {
		h.Succeed("printf 'ListenAddress 127.0.0.1\\n' > /etc/ssh/sshd_config.d/zz-tailnet-only.conf && systemctl restart ssh")
		h.WaitForOpenPort(22)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if c, err := nw.Dial(ctx, h.Name(), 22); err == nil {
			c.Close()
			t.Fatal("the direct path to sshd is open; the test needs it closed")
		}
	}
	tr := tn.Transport(t, "operator")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := tr.Start(ctx); err != nil {
		t.Fatalf("join the tailnet: %v", err)
	}
	cfg := testConfig(t, nw)
	cfg.Dialer = tr
	cfg.DialTimeout = 30 * time.Second
	return node, cfg
}

func tailnetTarget(h *vmtest.Host) mesh.Target {
	return mesh.Target{Name: h.Name(), Address: h.Name(), HostKey: h.HostKeyLine()}
}

var _ mesh.Dialer = (*tailnet.Transport)(nil)

// TestCopyOverTailnet copies closures to a host reachable only through the
// tailnet: agent bootstrap, transfer and verification; then stops the
// host's tailnet node in the middle of a copy, which must fail, and a rerun
// after the node is back must send only the missing paths.
func TestCopyOverTailnet(t *testing.T) {
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	node, cfg := onTailnet(t, nw, h, true)
	local, agent := newLocal(t)
	size := int64(64 << 20)
	if testing.Short() {
		size = 24 << 20
	}
	ctx := context.Background()

	root := mixedClosure(t, local, size, 11)
	res, err := testClient(local, connect(t, cfg, tailnetTarget(h))).Copy(ctx, []string{root}, agent, CopyOptions{})
	if err != nil {
		t.Fatalf("Copy over the tailnet: %v", err)
	}
	if !res.Bootstrapped || res.Stats.Missing != res.Paths-1 {
		t.Fatalf("first copy: %+v (stats %+v), want a bootstrap and every path sent", res, res.Stats)
	}
	h.Succeed(agentCmd(agent, "verify"))

	// A second closure; the host's node stops when a third of it is across.
	root2 := mixedClosure(t, local, size, 12)
	cl, err := local.Closure(root2, agent)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, pi := range cl {
		total += pi.NarSize
	}
	before := strings.Count(h.Succeed("ls /var/lib/deploy/db"), ".narinfo")
	third := make(chan struct{})
	var once sync.Once
	errc := make(chan error, 1)
	client := connect(t, cfg, tailnetTarget(h))
	go func() {
		_, err := testClient(local, client).Copy(ctx, []string{root2}, agent, CopyOptions{Progress: func(p closure.Progress) {
			if p.Confirmed > total/3 {
				once.Do(func() { close(third) })
			}
		}})
		errc <- err
	}()
	select {
	case <-third:
	case err := <-errc:
		t.Fatalf("copy ended before a third was across: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("a third of the copy not across after 2 minutes")
	}
	node.Stop(t)
	stopped := time.Now()
	select {
	case err = <-errc:
	case <-time.After(time.Minute):
		t.Fatal("the copy did not fail within a minute of the node stopping")
	}
	t.Logf("copy ended %v after the node stopped: %v", time.Since(stopped).Round(100*time.Millisecond), err)
	var ue *mesh.UnreachableError
	if err == nil || !errors.As(err, &ue) {
		// A copy that finished in the instant before the stop proves nothing.
		t.Fatalf("copy with the node stopped = %v, want an *mesh.UnreachableError", err)
	}
	node.Start(t)
	h.Succeed(agentCmd(agent, "verify")) // only complete, valid paths
	mid := strings.Count(h.Succeed("ls /var/lib/deploy/db"), ".narinfo")
	if mid <= before {
		t.Fatalf("no path of the second closure became valid before the stop (%d valid before, %d after)", before, mid)
	}
	// The rerun keeps the product's default keepalive (3 misses of 5 s):
	// the test's 1 s probes exist to notice the stop above quickly, and
	// under CPU contention (another test package on the other core) a
	// relayed tailnet connection can go 3 s without a reply while a copy
	// saturates it, which they then call dead (seen once in CI).
	lenient := *cfg
	lenient.KeepaliveInterval, lenient.KeepaliveMax = 0, 0
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	client2, err := lenient.ConnectRetry(rctx, tailnetTarget(h))
	if err != nil {
		t.Fatalf("reconnect after the node is back: %v", err)
	}
	defer client2.Close()
	res, err = testClient(local, client2).Copy(ctx, []string{root2}, agent, CopyOptions{})
	if err != nil {
		t.Fatalf("rerun: %v", err)
	}
	valid := 0
	db := h.Succeed("ls /var/lib/deploy/db")
	for _, pi := range cl {
		if hash, _, _ := closure.SplitPath(closure.DefaultStoreDir, pi.Path); strings.Contains(db, hash+".narinfo") {
			valid++
		}
	}
	// The closure's paths valid before the rerun: everything of the first
	// closure it shares (the agent) plus what arrived before the stop.
	if want := len(cl) - (mid - before) - 1; res.Stats.Missing != want {
		t.Errorf("rerun sent %d paths, want %d (%d of the closure's %d arrived before the stop)", res.Stats.Missing, want, mid-before, len(cl))
	}
	if valid != len(cl) {
		t.Errorf("after the rerun %d of %d paths are valid", valid, len(cl))
	}
	h.Succeed(agentCmd(agent, "verify"))
	t.Logf("%d paths arrived before the stop; the rerun sent the other %d", mid-before, res.Stats.Missing)
}

// BenchmarkCopyTailnetVsDirect copies the same closure to the same host
// over direct SSH and over SSH through the in-process tailnet (every packet
// relayed by DERP on the controller), and streams raw bytes into
// `cat > /dev/null` over each for reference. The host's store is emptied
// (but for the agent) between iterations.
func BenchmarkCopyTailnetVsDirect(b *testing.B) {
	nw := vmtest.Start(b, 1)
	h := nw.Hosts[0]
	_, tcfg := onTailnet(b, nw, h, false)
	dcfg := testConfig(b, nw)
	local, agent := newLocal(b)
	const size = 128 << 20
	root := mixedClosure(b, local, size, 21)
	cl, _ := local.Closure(root, agent)
	var total int64 // what each iteration sends: all but the agent
	for _, pi := range cl {
		if pi.Path != agent {
			total += pi.NarSize
		}
	}
	ctx := context.Background()
	if _, err := testClient(local, connect(b, dcfg, target(h))).Copy(ctx, nil, agent, CopyOptions{}); err != nil {
		b.Fatal(err)
	}
	agentHash, _, _ := closure.SplitPath(closure.DefaultStoreDir, agent)
	wipe := fmt.Sprintf(`cd /var/lib/deploy && for f in db/*.narinfo; do case $f in db/%s.narinfo) ;; *) rm "$f";; esac; done && for d in store/*; do case $d in %s) ;; *) chmod -R u+w "$d"; rm -rf "$d";; esac; done`,
		agentHash, strings.TrimPrefix(agent, "/var/lib/deploy/"))
	for _, via := range []struct {
		name string
		cfg  *mesh.Config
		tg   mesh.Target
	}{{"direct", dcfg, target(h)}, {"tailnet", tcfg, tailnetTarget(h)}} {
		b.Run("copy/"+via.name, func(b *testing.B) {
			client := connect(b, via.cfg, via.tg)
			b.SetBytes(total)
			for b.Loop() {
				b.StopTimer()
				h.Succeed(wipe)
				b.StartTimer()
				res, err := testClient(local, client).Copy(ctx, []string{root}, agent, CopyOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if res.Stats.Missing != len(cl)-1 {
					b.Fatalf("sent %d paths, want %d", res.Stats.Missing, len(cl)-1)
				}
			}
		})
		b.Run("raw/"+via.name, func(b *testing.B) {
			client := connect(b, via.cfg, via.tg)
			b.SetBytes(size)
			for b.Loop() {
				s, err := client.Start(ctx, []string{"sh", "-c", "cat > /dev/null"})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(s.Stdin, io.LimitReader(zeros{}, size)); err != nil {
					b.Fatal(err)
				}
				s.Stdin.Close()
				if err := s.Wait(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestConfirmAcrossTailnetNodeRestart stops the host's tailnet node just as
// the operator is about to confirm, and starts it again a few seconds
// later, within the confirmation window: the confirmation (a new
// connection, retried) must still arrive, so the host keeps the new
// generation instead of rolling back.
func TestConfirmAcrossTailnetNodeRestart(t *testing.T) {
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	node, cfg := onTailnet(t, nw, h, true)
	local, _ := newLocal(t)
	dir := t.TempDir()
	hcl := fmt.Sprintf("host %q {\n  address = %q\n  file \"/etc/deploy-tailnet-test\" {\n    content = \"over the tailnet\\n\"\n  }\n}\n", h.Name(), h.Name())
	if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
	fl, diags := builder.Load(dir)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	b := &builder.Builder{Store: local, CacheDir: filepath.Join(t.TempDir(), "build"), Agent: builder.Agent{Binary: buildAgent(t)}}
	res, diags := b.Build(context.Background(), fl, h.Name())
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	c := connect(t, cfg, tailnetTarget(h))
	if _, err := testClient(local, c).Copy(context.Background(), []string{res.SystemPath}, res.Manifest.Agent, CopyOptions{}); err != nil {
		t.Fatalf("Copy over the tailnet: %v", err)
	}
	restarted := make(chan struct{})
	called := false
	cl := &Client{Target: tailnetTarget(h), Mesh: cfg, conn: c}
	out, err := cl.Activate(context.Background(), res.SystemPath, ActivateOptions{
		ConfirmTimeout: 60 * time.Second, Logf: t.Logf,
		BeforeConfirm: func() {
			called = true
			node.Stop(t)
			go func() {
				time.Sleep(3 * time.Second)
				node.Start(t)
				close(restarted)
			}()
		},
	})
	if called {
		<-restarted
	}
	if err != nil {
		t.Fatalf("Activate with the node restarted in the confirmation window (hook ran: %v): %v\n%s", called, err, h.Succeed("tail -30 /var/lib/deploy/log/*.log"))
	}
	if out.Generation != 1 {
		t.Fatalf("generation %d, want 1", out.Generation)
	}
	// Confirmed: the boot default moved to the new generation.
	if got := h.Succeed("readlink /var/lib/deploy/profiles/system"); !strings.Contains(got, "system-1-link") {
		t.Fatalf("boot default %q, want generation 1 (confirmed)", got)
	}
	h.Succeed("grep -q over /etc/deploy-tailnet-test")
}
