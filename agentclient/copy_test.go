package agentclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
)

// buildAgent is the deploy-agent of the end-to-end tests.
func buildAgent(t testing.TB) string { return e2e.Agent(t) }

// mixedClosure adds a closure of about size bytes to s: one large path of
// several big files, some medium paths, many small ones, all referenced by
// a root. It returns the root.
func mixedClosure(t testing.TB, s *closure.Store, size int64, seed uint64) string {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	buf := make([]byte, 1<<20)
	fill := func(p string, n int64) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriter(f)
		for n > 0 {
			k := min(n, int64(len(buf)))
			for i := 0; i < int(k); i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8 && i+j < int(k); j++ {
					buf[i+j] = byte(v >> (8 * j))
				}
			}
			w.Write(buf[:k])
			n -= k
		}
		w.Flush()
		f.Close()
	}
	var refs []string
	add := func(name string, files map[string]int64) {
		src := filepath.Join(dir, name)
		for f, n := range files {
			fill(filepath.Join(src, f), n)
		}
		pi, err := s.AddTree(ctx, src, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, pi.Path)
	}
	large := size * 6 / 10
	add("large", map[string]int64{"a.img": large / 3, "b.img": large / 3, "lib/c.so": large - 2*(large/3)})
	for i := 0; i < 10; i++ {
		add(fmt.Sprint("medium-", i), map[string]int64{"bin/tool": size * 3 / 100, "share/doc": 4096})
	}
	for i := 0; i < 100; i++ {
		add(fmt.Sprint("small-", i), map[string]int64{"etc/conf": size / 1000, "x": int64(i)})
	}
	root, err := s.AddTree(ctx, writeDir(t, map[string]string{"manifest.json": fmt.Sprint(seed)}), "system-test", refs)
	if err != nil {
		t.Fatal(err)
	}
	return root.Path
}

func writeDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testConfig reaches nw's hosts (see e2e.MeshConfig).
func testConfig(t testing.TB, nw *vmtest.Network) *mesh.Config { return e2e.MeshConfig(t, nw) }

func target(h *vmtest.Host) mesh.Target { return e2e.Target(h) }

func newLocal(t testing.TB) (*closure.Store, string) {
	t.Helper()
	local, err := closure.NewLocalStore(t.TempDir(), closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := local.AddAgent(context.Background(), buildAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	return local, agent.Path
}

func connect(t testing.TB, cfg *mesh.Config, tg mesh.Target) *mesh.Client {
	t.Helper()
	c, err := cfg.Connect(context.Background(), tg)
	if err != nil {
		t.Fatalf("Connect(%s): %v", tg.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitReachable waits (bounded) until the controller can reach h's sshd,
// as the link comes back after Restore.
// testClient is a Client of the host behind conn whose connection is conn
// (a test chooses when a copy gets a fresh connection); local is its store.
func testClient(local *closure.Store, conn *mesh.Client) *Client {
	return &Client{Target: conn.Target(), Store: local, conn: conn}
}

func waitReachable(t testing.TB, nw *vmtest.Network, h *vmtest.Host) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := nw.Dial(ctx, h.Name(), 22)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s unreachable 20 s after Restore: %v", h.Name(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func agentCmd(agent string, args ...string) string {
	return path.Join(agent, agentapi.AgentBin) + " " + strings.Join(args, " ")
}

func TestCopyLargeClosure(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	local, agent := newLocal(t)
	size := int64(500 << 20)
	if testing.Short() {
		size = 20 << 20
	}
	root := mixedClosure(t, local, size, 1)
	cfg := testConfig(t, nw)
	ctx := context.Background()

	res, err := testClient(local, connect(t, cfg, target(h))).Copy(ctx, []string{root}, agent, CopyOptions{})
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if !res.Bootstrapped || res.Stats.Missing != res.Paths-1 { // the bootstrap installed the agent
		t.Fatalf("first copy: %+v (stats %+v), want a bootstrap and every path sent", res, res.Stats)
	}
	t.Logf("copied %d paths, %d NAR bytes", res.Stats.Imported, res.Stats.NarBytes)
	// The target's store rehashes clean.
	h.Succeed(agentCmd(agent, "verify"))
	if n := strings.TrimSpace(h.Succeed("ls /var/lib/deploy/db | grep -c narinfo")); n != fmt.Sprint(res.Paths) {
		t.Fatalf("target has %s valid paths, want %d", n, res.Paths)
	}
	// A second copy: no bootstrap, nothing sent.
	res, err = testClient(local, connect(t, cfg, target(h))).Copy(ctx, []string{root}, agent, CopyOptions{Compress: true})
	if err != nil {
		t.Fatalf("second Copy: %v", err)
	}
	if res.Bootstrapped || res.Stats.Missing != 0 || res.Stats.NarBytes != 0 {
		t.Fatalf("second copy: %+v (stats %+v), want nothing to do", res, res.Stats)
	}
}

// TestCopyCutAtRandom cuts the network at random moments of a throttled
// copy: the operator must fail within a bounded wait naming the host, the
// target must hold no valid partial path, and a rerun must send only what
// is missing.
func TestCopyCutAtRandom(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	local, agent := newLocal(t)
	root := mixedClosure(t, local, 24<<20, 2)
	cl, _ := local.Closure(root, agent)
	var total int64
	for _, pi := range cl {
		total += pi.NarSize
	}
	cfg := testConfig(t, nw)
	ctx := context.Background()
	// Bootstrap once, unthrottled.
	if _, err := testClient(local, connect(t, cfg, target(h))).Copy(ctx, nil, agent, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	const rate = 8 << 20 // bytes per second: a copy takes about 3 s
	full := time.Duration(float64(total) / rate * float64(time.Second))
	rng := rand.New(rand.NewPCG(3, 4))
	iterations := 20
	if testing.Short() {
		iterations = 3
	}
	partial := 0
	for i := 0; i < iterations; i++ {
		h.Throttle(rate)
		client := connect(t, cfg, target(h))
		errc := make(chan error, 1)
		go func() {
			_, err := testClient(local, client).Copy(ctx, []string{root}, agent, CopyOptions{})
			errc <- err
		}()
		time.Sleep(time.Duration(rng.Int64N(int64(full))))
		h.Cut()
		cutAt := time.Now()
		var err error
		select {
		case err = <-errc:
		case <-time.After(30 * time.Second):
			t.Fatalf("iteration %d: the copy did not fail within 30 s of the cut", i)
		}
		t.Logf("iteration %d: copy ended %v after the cut: %v", i, time.Since(cutAt).Round(100*time.Millisecond), err)
		if err != nil {
			var ue *mesh.UnreachableError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), h.Name()) {
				t.Errorf("iteration %d: error %v, want an UnreachableError naming %q", i, err, h.Name())
			}
		}
		h.Restore()
		h.Throttle(0)
		waitReachable(t, nw, h)
		// The receiver of the cut session may still import what reached
		// the host before the cut; it exits once its connection is reset.
		// Count valid paths only after that, so the count is exact.
		h.Succeed("for i in $(seq 300); do pgrep -f '[d]eploy-agent receive' >/dev/null || exit 0; sleep 0.1; done; echo 'receiver still running 30 s after the cut' >&2; exit 1")
		// The target's store holds only complete, valid paths.
		h.Succeed(agentCmd(agent, "verify"))
		before := strings.Count(h.Succeed("ls /var/lib/deploy/db"), ".narinfo")
		res, err := testClient(local, connect(t, cfg, target(h))).Copy(ctx, []string{root}, agent, CopyOptions{})
		if err != nil {
			t.Fatalf("iteration %d: rerun: %v", i, err)
		}
		if res.Stats.Missing != len(cl)-before {
			t.Fatalf("iteration %d: rerun sent %d paths; %d of %d were valid before it", i, res.Stats.Missing, before, len(cl))
		}
		if before > 1 && before < len(cl) {
			partial++
		}
		h.Succeed(agentCmd(agent, "verify"))
		// Forget everything but the agent for the next round.
		agentHash, _, _ := closure.SplitPath(closure.DefaultStoreDir, agent)
		h.Succeed(fmt.Sprintf(`cd /var/lib/deploy && for f in db/*.narinfo; do case $f in db/%s.narinfo) ;; *) rm "$f";; esac; done && for d in store/*; do case $d in %s) ;; *) chmod -R u+w "$d"; rm -rf "$d";; esac; done`,
			agentHash, strings.TrimPrefix(agent, "/var/lib/deploy/")))
	}
	t.Logf("%d of %d cuts left the target with some but not all paths", partial, iterations)
	if partial == 0 {
		t.Fatal("no cut landed in the middle of a copy: the test proved nothing")
	}
}

func TestCopyHostKeys(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 2)
	h, other := nw.Hosts[0], nw.Hosts[1]
	local, agent := newLocal(t)
	root := mixedClosure(t, local, 1<<20, 5)
	cfg := testConfig(t, nw)
	ctx := context.Background()

	changed := target(h)
	changed.HostKey = other.HostKeyLine()
	_, err := cfg.Connect(ctx, changed)
	var hke *mesh.HostKeyError
	if !errors.As(err, &hke) || hke.Want == hke.Got || !strings.Contains(err.Error(), hke.Got) {
		t.Fatalf("Connect with a changed key = %v, want a HostKeyError naming both fingerprints", err)
	}
	unknown := target(h)
	unknown.HostKey = ""
	_, err = cfg.Connect(ctx, unknown)
	var uhe *mesh.UnknownHostError
	if !errors.As(err, &uhe) || !strings.Contains(uhe.Hint(), "keyscan") {
		t.Fatalf("Connect to an unknown host = %v, want an UnknownHostError with a keyscan hint", err)
	}
	// Nothing was sent: the target has no store.
	h.Fail("test -e /var/lib/deploy")
	_ = root
	_ = agent
}

func TestCopySudo(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	local, agent := newLocal(t)
	root := mixedClosure(t, local, 4<<20, 6)
	h.Succeed(`useradd -m -s /bin/bash deployer && echo 'deployer:s3cret-pw' | chpasswd &&
		install -d -m 700 -o deployer -g deployer ~deployer/.ssh &&
		install -m 600 -o deployer -g deployer /root/.ssh/authorized_keys ~deployer/.ssh/authorized_keys &&
		echo 'deployer ALL=(ALL:ALL) ALL' > /etc/sudoers.d/deployer && chmod 440 /etc/sudoers.d/deployer`)
	cfg := testConfig(t, nw)
	cfg.SudoPassword = func(context.Context, string) (string, error) { return "s3cret-pw", nil }
	tg := target(h)
	tg.User, tg.Sudo = "deployer", true
	res, err := testClient(local, connect(t, cfg, tg)).Copy(context.Background(), []string{root}, agent, CopyOptions{})
	if err != nil {
		t.Fatalf("Copy as deployer with sudo: %v", err)
	}
	if !res.Bootstrapped || res.Stats.Imported != res.Paths-1 {
		t.Fatalf("Copy as deployer: %+v", res.Stats)
	}
	h.Succeed(agentCmd(agent, "verify"))
	// Everything the agent wrote belongs to root.
	if out := h.Succeed("find /var/lib/deploy ! -user root | head -3"); strings.TrimSpace(out) != "" {
		t.Fatalf("files not owned by root: %s", out)
	}
	// The password never appeared in a process's argv (sudo -S reads stdin).
	if out := h.Succeed("grep -rl s3cret-pw /var/log/ /tmp 2>/dev/null || true"); strings.TrimSpace(out) != "" {
		t.Fatalf("the sudo password leaked into %s", out)
	}
}

// TestCopyUpgradesAgent bootstraps an agent on a host without gzip (over
// SFTP, uncompressed), then copies to that host with a newer agent: the new
// agent comes through the old one's receive (compressed, one session), not
// as an uploaded binary, and then receives the rest.
func TestCopyUpgradesAgent(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	local, agent := newLocal(t)
	// An "older" agent: the same program with other bytes, so another
	// store path (ELF ignores what follows its sections).
	bin, err := os.ReadFile(buildAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	oldBin := filepath.Join(t.TempDir(), "deploy-agent")
	if err := os.WriteFile(oldBin, append(bin, "older"...), 0o755); err != nil {
		t.Fatal(err)
	}
	old, err := local.AddAgent(context.Background(), oldBin)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, nw)
	ctx := context.Background()
	var logs []string
	logf := func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }
	// The first bootstrap, on a host without gzip: the bare binary over
	// SFTP.
	h.Succeed("mv /usr/bin/gzip /usr/bin/gzip.hidden")
	res, err := testClient(local, connect(t, cfg, target(h))).Copy(ctx, []string{old.Path}, old.Path, CopyOptions{Logf: logf})
	h.Succeed("mv /usr/bin/gzip.hidden /usr/bin/gzip")
	if err != nil || !res.Bootstrapped {
		t.Fatalf("first copy: %+v, %v; want the old agent uploaded", res, err)
	}
	if joined := strings.Join(logs, "\n"); strings.Contains(joined, "received") || !strings.Contains(joined, "no gzip on the host") {
		t.Fatalf("first copy: want an SFTP upload, logs:\n%s", joined)
	}
	logs = nil
	root := mixedClosure(t, local, 4<<20, 2)
	res, err = testClient(local, connect(t, cfg, target(h))).Copy(ctx, []string{root}, agent, CopyOptions{Logf: logf})
	if err != nil {
		t.Fatalf("second copy: %v\n%s", err, strings.Join(logs, "\n"))
	}
	joined := strings.Join(logs, "\n")
	if !res.Bootstrapped || !strings.Contains(joined, "the host's agent dev received "+agent) || strings.Contains(joined, "uploading") {
		t.Fatalf("second copy: %+v; want the new agent received by the old one, logs:\n%s", res, joined)
	}
	if res.Stats.Missing != res.Paths-1 {
		t.Fatalf("second copy: stats %+v, want every path but the agent sent after it", res.Stats)
	}
	h.Succeed(agentCmd(agent, "verify"))
	if out := h.Succeed("ls /var/lib/deploy/store"); strings.Contains(out, closure.UploadPrefix) {
		t.Fatalf("an upload was left in the store:\n%s", out)
	}
}
