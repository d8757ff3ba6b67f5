package agentclient

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
)

// powerLoss drives the qemu host of TestPowerLoss.
type powerLoss struct {
	t   *testing.T
	q   *vmtest.QEMUHost
	cfg *mesh.Config
	tg  mesh.Target
	b   *builder.Builder
	dir string
}

// build builds the host from body (plus the payload files named) and
// returns the system path; nothing is copied.
func (p *powerLoss) build(body string) string {
	p.t.Helper()
	hcl := fmt.Sprintf("host \"q1\" {\n  address  = \"127.0.0.1\"\n  port     = %d\n  host_key = %q\n%s\n}\n", p.q.Port(), p.q.HostKeyLine(), body)
	if err := os.WriteFile(filepath.Join(p.dir, "fleet.hcl"), []byte(hcl), 0o644); err != nil {
		p.t.Fatal(err)
	}
	fl, diags := builder.Load(p.dir)
	if diags.HasErrors() {
		p.t.Fatalf("Load: %v", diags)
	}
	res, diags := p.b.Build(context.Background(), fl, "q1")
	if diags.HasErrors() {
		p.t.Fatalf("Build: %v", diags)
	}
	return res.SystemPath
}

// payload writes n fleet files of about size bytes each, different for
// each seed, and returns file resources for them: n store paths to copy.
func (p *powerLoss) payload(seed uint64, n, size int) string {
	p.t.Helper()
	var b strings.Builder
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := filepath.Join(p.dir, fmt.Sprint("payload-", seed))
	os.MkdirAll(dir, 0o755)
	buf := make([]byte, size)
	for i := range n {
		for j := range buf {
			buf[j] = byte('a' + rng.IntN(26))
		}
		name := fmt.Sprintf("f%04d", i)
		if err := os.WriteFile(filepath.Join(dir, name), buf, 0o644); err != nil {
			p.t.Fatal(err)
		}
		fmt.Fprintf(&b, "  file \"/var/lib/payload/%s\" {\n    source = \"payload-%d/%s\"\n  }\n", name, seed, name)
	}
	return b.String()
}

func (p *powerLoss) connect() *mesh.Client {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := p.cfg.Connect(ctx, p.tg)
	if err != nil {
		p.t.Fatalf("connect: %v", err)
	}
	return c
}

func (p *powerLoss) copy(system string) {
	p.t.Helper()
	c := p.connect()
	defer c.Close()
	if _, err := testClient(p.b.Store, c).Copy(context.Background(), []string{system}, p.agent(), CopyOptions{}); err != nil {
		p.t.Fatalf("Copy: %v", err)
	}
}

func (p *powerLoss) agent() string {
	p.t.Helper()
	agent, err := p.b.Store.AddAgent(context.Background(), buildAgent(p.t))
	if err != nil {
		p.t.Fatal(err)
	}
	return agent.Path
}

func (p *powerLoss) activate(system string) error {
	c := p.connect()
	defer c.Close()
	return p.activateCtx(context.Background(), c, system)
}

// activateCtx activates system over the established connection c.
func (p *powerLoss) activateCtx(ctx context.Context, c *mesh.Client, system string) error {
	cl := &Client{Target: p.tg, Mesh: p.cfg, conn: c}
	_, err := cl.Activate(ctx, system, ActivateOptions{ConfirmTimeout: 60 * time.Second, ReconnectFor: 3 * time.Minute, Logf: p.t.Logf})
	return err
}

// verify runs the boot default's agent's verify: every valid store path
// rehashed, every reference valid. It returns the number of valid paths.
func (p *powerLoss) verify() int {
	p.t.Helper()
	out, err := p.q.Run(context.Background(), "/var/lib/deploy/profiles/system/agent/bin/deploy-agent verify 2>&1")
	if err != nil {
		p.t.Fatalf("deploy-agent verify after the power loss: %v\n%s", err, out)
	}
	n := strings.TrimSpace(p.q.Succeed("ls /var/lib/deploy/db | grep -c '\\.narinfo$'"))
	var k int
	fmt.Sscan(n, &k)
	return k
}

type plStatus struct {
	Current       int    `json:"current"`
	CurrentSystem string `json:"current_system"`
	Boot          int    `json:"boot"`
	BootSystem    string `json:"boot_system"`
	Pending       int    `json:"pending"`
	Consistent    bool   `json:"consistent"`
}

func (p *powerLoss) status() plStatus {
	p.t.Helper()
	out := p.q.Succeed("/var/lib/deploy/profiles/system/agent/bin/deploy-agent status --json")
	var s plStatus
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		p.t.Fatalf("status: %v\n%s", err, out)
	}
	return s
}

// runs checks that the host runs exactly one of systems (by its conf
// file, its unit and its current-system link) and returns which.
func (p *powerLoss) runs(systems map[string]string) string {
	p.t.Helper()
	st := p.status()
	if !st.Consistent || st.Pending != 0 || st.Current == 0 || st.Current != st.Boot || st.CurrentSystem != st.BootSystem {
		p.t.Fatalf("status %+v: want a consistent host running its boot default", st)
	}
	want, ok := systems[st.CurrentSystem]
	if !ok {
		p.t.Fatalf("the host runs %s, none of the systems of the test", st.CurrentSystem)
	}
	if got := p.q.Succeed("cat /etc/app/conf"); got != want+"\n" {
		p.t.Fatalf("the host runs %s but /etc/app/conf = %q, want %q", st.CurrentSystem, got, want+"\n")
	}
	link := strings.TrimSpace(p.q.Succeed("readlink -f /etc/systemd/system/app.service"))
	if wantLink := strings.TrimSpace(p.q.Succeed("readlink -f " + st.CurrentSystem + "/units/app.service")); link != wantLink {
		p.t.Fatalf("app.service links to %s, want %s's %s", link, st.CurrentSystem, wantLink)
	}
	if active := strings.TrimSpace(p.q.Succeed("systemctl is-active app.service || true")); active != "active" {
		p.t.Fatalf("app.service is %s", active)
	}
	return want
}

// TestPowerLoss resets a qemu host (its disk a file, its page cache its
// own) without a flush at random moments of a copy and of an activation,
// five times each, and checks after each boot that every valid store path
// verifies, that the host runs exactly the old or the new generation, and
// that the copy or activation run again succeeds. It runs with
// DEPLOY_QEMU=1 (make test-powerloss).
func TestPowerLoss(t *testing.T) {
	const trials = 5
	q := vmtest.StartQEMU(t)
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(key, q.ClientKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	kh := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(kh, nil, 0o600)
	cache := t.TempDir()
	store, err := closure.NewLocalStore(cache, closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	p := &powerLoss{t: t, q: q, dir: t.TempDir(),
		cfg: &mesh.Config{IdentityFiles: []string{key}, KnownHostsFiles: []string{kh}, SSHConfigFile: "none", Logf: t.Logf,
			Getenv: func(string) string { return "" }},
		tg: mesh.Target{Name: "q1", Address: "127.0.0.1", Port: q.Port(), User: "root", HostKey: q.HostKeyLine()},
		b:  &builder.Builder{Store: store, CacheDir: filepath.Join(cache, "build"), Agent: builder.Agent{Binary: buildAgent(t)}}}
	app := func(name string) string {
		return fmt.Sprintf("  file \"/etc/app/conf\" {\n    content = \"%s\\n\"\n  }\n", name) +
			fmt.Sprintf("  service \"app\" {\n    exec_start = \"/bin/sleep infinity\"\n    restart_triggers = [%q]\n  }\n", name)
	}
	sysA := p.build(app("A"))
	sysC := p.build(app("C") + "  file \"/etc/app/only-c\" {\n    content = \"c\"\n  }\n")
	p.copy(sysA)
	p.copy(sysC)
	if err := p.activate(sysA); err != nil {
		t.Fatalf("activating A: %v", err)
	}
	names := map[string]string{sysA: "A", sysC: "C"}
	p.runs(names)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 2))
	t.Logf("seed %d", seed)

	// Copies: a closure of 600 paths (about 20 MB) each time new, reset
	// at a random moment of its copy (the agent commits a batch every
	// second or so).
	const nFiles, fileSize = 600, 32 << 10
	// (The window is timed from an established connection: under TCG the
	// SSH handshake alone takes a second or two.)
	calib := p.build(app("A") + p.payload(seed, nFiles, fileSize))
	c := p.connect()
	start := time.Now()
	if _, err := testClient(p.b.Store, c).Copy(context.Background(), []string{calib}, p.agent(), CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	copyTime := time.Since(start)
	c.Close()
	t.Logf("copying %d new paths takes %v", nFiles+1, copyTime.Round(100*time.Millisecond))
	for i := range trials {
		t.Run(fmt.Sprint("copy ", i), func(t *testing.T) {
			p.t = t
			sys := p.build(app("A") + p.payload(seed+uint64(i)+1, nFiles, fileSize))
			before := p.verify()
			boot := q.BootID()
			at := time.Duration((float64(i) + rng.Float64()) / trials * float64(copyTime))
			c := p.connect()
			defer c.Close()
			agent := p.agent()
			done := make(chan error, 1)
			go func() {
				_, err := testClient(p.b.Store, c).Copy(context.Background(), []string{sys}, agent, CopyOptions{})
				done <- err
			}()
			time.Sleep(at)
			q.Reset()
			t.Logf("reset %v into the copy", at.Round(10*time.Millisecond))
			q.WaitBoot(boot)
			err := <-done
			valid := p.verify()
			t.Logf("the interrupted copy: %v; %d valid paths after the boot (%d before), all verify", err, valid, before)
			if got := p.runs(names); got != "A" {
				t.Fatalf("the host runs %s after a reset during a copy, want A", got)
			}
			p.copy(sys)
			if after := p.verify(); after < before+nFiles {
				t.Fatalf("after the copy ran again: %d valid paths, want at least %d", after, before+nFiles)
			}
		})
		p.t = t
		if t.Failed() {
			return
		}
	}

	// Activations: A → C → A ..., reset at a random moment of each.
	c = p.connect()
	start = time.Now()
	if err := p.activateCtx(context.Background(), c, sysC); err != nil {
		t.Fatal(err)
	}
	actTime := time.Since(start)
	c.Close()
	if err := p.activate(sysA); err != nil {
		t.Fatal(err)
	}
	t.Logf("an activation takes %v", actTime.Round(100*time.Millisecond))
	from, to := sysA, sysC
	ended := map[string]int{}
	for i := range trials {
		t.Run(fmt.Sprint("activation ", i), func(t *testing.T) {
			p.t = t
			boot := q.BootID()
			ctx, cancel := context.WithCancel(context.Background())
			c := p.connect()
			defer c.Close()
			done := make(chan error, 1)
			started := time.Now()
			go func() { done <- p.activateCtx(ctx, c, to) }()
			if i < trials-1 {
				// Stratified over the activation's length.
				time.Sleep(time.Duration((float64(i) + rng.Float64()) / (trials - 1) * float64(actTime)))
			} else {
				// The last one the moment the operator has its answer: the
				// confirmed generation must survive the power loss.
				if err := <-done; err != nil {
					t.Fatalf("Activate: %v", err)
				}
				done <- nil
			}
			q.Reset()
			t.Logf("reset %v into the activation of %s over %s", time.Since(started).Round(10*time.Millisecond), names[to], names[from])
			q.WaitBoot(boot)
			cancel()
			t.Logf("the operator's Activate: %v", <-done)
			p.verify()
			got := p.runs(names)
			if i == trials-1 && got != names[to] {
				t.Fatalf("the host runs %s after a power loss right after the confirmation of %s", got, names[to])
			}
			if got == names[to] {
				ended["new"]++
			} else {
				ended["old"]++
			}
			t.Logf("the host runs %s after the boot", got)
			if err := p.activate(to); err != nil {
				t.Fatalf("the activation run again: %v", err)
			}
			if got := p.runs(names); got != names[to] {
				t.Fatalf("after the rerun the host runs %s, want %s", got, names[to])
			}
		})
		p.t = t
		if t.Failed() {
			return
		}
		from, to = to, from
	}
	t.Logf("activations reset %d times: ended on the old system %d times, the new one %d times", trials, ended["old"], ended["new"])
}
