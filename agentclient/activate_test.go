package agentclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
)

// fixture is one test host plus a builder that makes system closures for
// it from fleets written in the test.
type fixture struct {
	t      *testing.T
	nw     *vmtest.Network
	h      *vmtest.Host
	cfg    *mesh.Config
	b      *builder.Builder
	client *mesh.Client
	n      int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	cache := t.TempDir()
	store, err := closure.NewLocalStore(cache, closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, nw: nw, h: h, cfg: testConfig(t, nw),
		b: &builder.Builder{Store: store, CacheDir: filepath.Join(cache, "build"), Agent: builder.Agent{Binary: buildAgent(t)}}}
	f.client = connect(t, f.cfg, target(h))
	return f
}

// build builds host h1 from a fleet whose host block holds body, and
// copies the closure to the host. It returns the system path.
func (f *fixture) build(body string) string {
	f.t.Helper()
	f.n++
	dir := filepath.Join(f.t.TempDir(), fmt.Sprint("fleet", f.n))
	os.MkdirAll(dir, 0o755)
	hcl := fmt.Sprintf("host %q {\n  address = %q\n%s\n}\n", f.h.Name(), f.h.Addr().String(), body)
	if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(hcl), 0o644); err != nil {
		f.t.Fatal(err)
	}
	fl, diags := builder.Load(dir)
	if diags.HasErrors() {
		f.t.Fatalf("Load: %v\n%s", diags, hcl)
	}
	res, diags := f.b.Build(context.Background(), fl, f.h.Name())
	if diags.HasErrors() {
		f.t.Fatalf("Build: %v\n%s", diags, hcl)
	}
	if _, err := testClient(f.b.Store, f.client).Copy(context.Background(), []string{res.SystemPath}, res.Manifest.Agent, CopyOptions{}); err != nil {
		f.t.Fatalf("Copy: %v", err)
	}
	return res.SystemPath
}

func (f *fixture) activate(system string, opts ActivateOptions) (*ActivateResult, error) {
	f.t.Helper()
	return f.activateOn(f.client, system, opts)
}

// activateOn activates system over conn (the client's connection).
func (f *fixture) activateOn(conn *mesh.Client, system string, opts ActivateOptions) (*ActivateResult, error) {
	f.t.Helper()
	if opts.ConfirmTimeout == 0 {
		opts.ConfirmTimeout = 4 * time.Second
	}
	if hook := opts.Logf; hook != nil {
		opts.Logf = func(format string, args ...any) { f.t.Logf(format, args...); hook(format, args...) }
	} else {
		opts.Logf = f.t.Logf
	}
	if opts.Meta == nil {
		opts.Meta = map[string]string{"git_rev": fmt.Sprint("rev", f.n), "message": f.t.Name()}
	}
	return f.clientOn(conn).Activate(context.Background(), system, opts)
}

// clientOn is a Client of the fixture's host whose connection is conn.
func (f *fixture) clientOn(conn *mesh.Client) *Client {
	return &Client{Target: target(f.h), Mesh: f.cfg, Store: f.b.Store, conn: conn}
}

func (f *fixture) mustActivate(system string) *ActivateResult {
	f.t.Helper()
	res, err := f.activate(system, ActivateOptions{})
	if err != nil {
		f.t.Logf("agent log:\n%s", f.h.Succeed("cat /var/lib/deploy/log/*.log | tail -50"))
		f.t.Fatalf("Activate: %v", err)
	}
	return res
}

type hostStatus struct {
	Current    int   `json:"current"`
	Boot       int   `json:"boot"`
	Pending    int   `json:"pending"`
	Failed     []int `json:"failed"`
	Consistent bool  `json:"consistent"`
}

func (f *fixture) status() hostStatus {
	f.t.Helper()
	var s hostStatus
	out := f.h.Succeed("/var/lib/deploy/profiles/system-1-link/agent/bin/deploy-agent status --json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		f.t.Fatalf("status: %v\n%s", err, out)
	}
	return s
}

func (f *fixture) wantStatus(current, boot int, failed ...int) {
	f.t.Helper()
	s := f.status()
	if s.Current != current || s.Boot != boot || fmt.Sprint(s.Failed) != fmt.Sprint(append([]int{}, failed...)) || !s.Consistent {
		f.t.Fatalf("status = %+v, want current %d, boot %d, failed %v, consistent", s, current, boot, failed)
	}
}

// count returns how many lines of file on the host are word.
func (f *fixture) count(file, word string) int {
	f.t.Helper()
	out := f.h.Succeed(fmt.Sprintf("grep -c '^%s$' %s || true", word, file))
	var n int
	fmt.Sscan(strings.TrimSpace(out), &n)
	return n
}

func (f *fixture) waitCount(file, word string, want int) {
	f.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for f.count(file, word) != want {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s has %d %q lines, want %d", file, f.count(file, word), word, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (f *fixture) active(unit string) bool {
	out, _ := f.h.Run(context.Background(), "systemctl is-active "+unit)
	return strings.TrimSpace(out) == "active"
}

// svc is a service that logs "start" and, on SIGHUP (its reload),
// "reload" to /var/tmp/NAME.log.
func svc(name string, restartTrigger, reloadTrigger string) string {
	return fmt.Sprintf(`
  service %[1]q {
    exec_start       = "/bin/sh -c 'trap \"echo reload >> /var/tmp/%[1]s.log\" HUP; echo start >> /var/tmp/%[1]s.log; while :; do sleep 0.2; done'"
    exec_reload      = "/bin/kill -HUP $MAINPID"
    restart          = "always"
    restart_triggers = [%[2]q]
    reload_triggers  = [%[3]q]
  }
`, name, restartTrigger, reloadTrigger)
}

func file(path, content string) string {
	return fmt.Sprintf("  file %q {\n    content = %q\n  }\n", path, content)
}

// A service deployed, changed (restarted), changed only in a reload
// trigger (reloaded, not restarted), removed (stopped, its files gone); an
// unchanged unit is not touched.
func TestActivateUnitLifecycle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	gen1 := f.build(svc("a", "1", "1") + svc("b", "1", "1") + svc("c", "1", "1") + file("/etc/app/a.conf", "a v1\n"))
	if res := f.mustActivate(gen1); res.Generation != 1 || res.Outcome != "done" {
		t.Fatalf("first activation = %+v, want generation 1 done", res)
	}
	for _, u := range []string{"a", "b", "c"} {
		if !f.active(u + ".service") {
			t.Fatalf("%s.service is not active after generation 1", u)
		}
		f.waitCount("/var/tmp/"+u+".log", "start", 1)
	}
	if got := f.h.Succeed("cat /etc/app/a.conf"); got != "a v1\n" {
		t.Fatalf("a.conf = %q", got)
	}
	f.wantStatus(1, 1)
	cPID := f.h.Succeed("systemctl show -p MainPID --value c.service")

	// a: restart trigger changed; b: reload trigger only; c: unchanged.
	gen2 := f.build(svc("a", "2", "1") + svc("b", "1", "2") + svc("c", "1", "1") + file("/etc/app/a.conf", "a v2\n"))
	if res := f.mustActivate(gen2); res.Generation != 2 {
		t.Fatalf("second activation = %+v", res)
	}
	f.waitCount("/var/tmp/a.log", "start", 2)
	f.waitCount("/var/tmp/b.log", "reload", 1)
	if n := f.count("/var/tmp/b.log", "start"); n != 1 {
		t.Errorf("b was started %d times, want 1 (reloaded, not restarted)", n)
	}
	if n := f.count("/var/tmp/c.log", "start"); n != 1 {
		t.Errorf("c was started %d times, want 1 (untouched)", n)
	}
	if pid := f.h.Succeed("systemctl show -p MainPID --value c.service"); pid != cPID {
		t.Errorf("c's main PID changed from %s to %s", cPID, pid)
	}
	if got := f.h.Succeed("cat /etc/app/a.conf"); got != "a v2\n" {
		t.Fatalf("a.conf = %q, want v2", got)
	}
	f.wantStatus(2, 2)

	// a removed with its file.
	gen3 := f.build(svc("b", "1", "2") + svc("c", "1", "1"))
	if res := f.mustActivate(gen3); res.Generation != 3 {
		t.Fatalf("third activation = %+v", res)
	}
	if f.active("a.service") {
		t.Error("a.service still active after its removal")
	}
	f.h.Fail("test -e /etc/systemd/system/a.service")
	f.h.Fail("test -e /etc/systemd/system/multi-user.target.wants/a.service")
	f.h.Fail("test -e /etc/app/a.conf")
	if n := f.count("/var/tmp/c.log", "start"); n != 1 || !f.active("c.service") {
		t.Errorf("c started %d times (want 1), active %v", n, f.active("c.service"))
	}
	f.wantStatus(3, 3)
	// The generations are listed with their metadata.
	out := f.h.Succeed("/var/lib/deploy/profiles/system/agent/bin/deploy-agent generations --json")
	gens, err := agentapi.DecodeGenerations([]byte(out))
	if err != nil || len(gens) != 3 || gens[2].GitRev != "rev3" || !gens[2].Boot || !strings.Contains(out, `"v": 1`) {
		t.Fatalf("generations = %s (%v)", out, err)
	}
}

// A generation whose service fails to start, or whose health check fails,
// rolls back automatically: the previous generation's files and units are
// back and running, and the error says rolled back.
func TestActivateFailureRollsBack(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	up := "  health_check \"up\" {\n    command = [\"/bin/true\"]\n  }\n"
	gen1 := f.build(svc("a", "1", "1") + file("/etc/app/a.conf", "a v1\n") + up)
	f.mustActivate(gen1)
	f.wantMetrics(t, "after generation 1", map[string]float64{
		"deploy_current_generation":         1,
		"deploy_last_activation_generation": 1,
		"deploy_last_activation_success":    1,
		"deploy_last_check_generation":      1,
		"deploy_checks_failing":             0,
		"deploy_check_failing{check=up}":    0,
	}, "deploy_last_rollback_success")

	cases := []struct {
		name string
		body string
		want string // in the error, when set
	}{
		{"failing service", svc("a", "2", "1") + file("/etc/app/a.conf", "a v2\n") + file("/etc/app/new.conf", "new\n") +
			"  service \"broken\" {\n    exec_start = \"/bin/false\"\n  }\n", ""},
		{"failing health check", svc("a", "2", "1") + file("/etc/app/a.conf", "a v2\n") + file("/etc/app/new.conf", "new\n") +
			"  health_check \"never\" {\n    command = [\"/bin/false\"]\n    timeout = \"2s\"\n    interval = \"500ms\"\n  }\n", ""},
		// Up 0.6 s, down 0.1 s (RestartSec's default), up again: between
		// two looks of the settle loop it may well be running each time;
		// its restart count gives it away.
		{"crash-looping service", svc("a", "2", "1") + file("/etc/app/a.conf", "a v2\n") + file("/etc/app/new.conf", "new\n") +
			"  service \"flappy\" {\n    exec_start = \"/bin/sh -c 'sleep 0.6; exit 1'\"\n  }\n",
			"unit flappy.service failed"},
	}
	failed := []int{}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			starts := f.count("/var/tmp/a.log", "start")
			sys := f.build(tc.body)
			_, err := f.activate(sys, ActivateOptions{})
			var rb *RolledBackError
			if !errors.As(err, &rb) {
				t.Fatalf("Activate = %v, want a RolledBackError", err)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			gen := i + 2
			if rb.Generation != gen {
				t.Errorf("rolled back generation %d, want %d", rb.Generation, gen)
			}
			if got := f.h.Succeed("cat /etc/app/a.conf"); got != "a v1\n" {
				t.Errorf("a.conf = %q after the rollback, want v1", got)
			}
			f.h.Fail("test -e /etc/app/new.conf")
			f.h.Fail("test -e /etc/systemd/system/broken.service")
			if !f.active("a.service") {
				t.Error("a.service not active after the rollback")
			}
			// a ran generation 2's unit, then generation 1's again.
			f.waitCount("/var/tmp/a.log", "start", starts+2)
			failed = append(failed, gen)
			f.wantStatus(1, 1, failed...)
			// The automatic rollback succeeded, and generation 1's check
			// ran again and passed: nothing reads as failing any more.
			f.wantMetrics(t, "after the rollback", map[string]float64{
				"deploy_current_generation":                           1,
				"deploy_last_activation_generation":                   float64(gen),
				"deploy_last_activation_success":                      0,
				"deploy_last_activation_outcome{outcome=rolled-back}": 1,
				"deploy_last_rollback_generation":                     1,
				"deploy_last_rollback_success":                        1,
				"deploy_last_rollback_outcome{outcome=rolled-back}":   1,
				"deploy_last_check_generation":                        1,
				"deploy_checks_failing":                               0,
				"deploy_check_failing{check=up}":                      0,
			}, "deploy_check_failing{check=never}")
		})
	}
}

// A generation that breaks SSH (sshd moves to another port) cannot be
// confirmed; the host rolls back on its own within the confirmation
// timeout and is reachable again.
func TestActivateBrokenSSHRollsBack(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	sshd := func(port int) string {
		return file("/etc/ssh/sshd_config.d/deploy.conf", fmt.Sprintf("Port %d\n", port)) +
			"  activation_script \"sshd\" {\n    script = \"systemctl restart ssh\"\n  }\n"
	}
	gen1 := f.build(svc("a", "1", "1") + sshd(22))
	f.mustActivate(gen1)
	gen2 := f.build(svc("a", "2", "1") + sshd(2222))
	const timeout = 4 * time.Second
	var awaited time.Time
	_, err := f.activate(gen2, ActivateOptions{ConfirmTimeout: timeout, BeforeConfirm: func() { awaited = time.Now() }})
	var rb *RolledBackError
	if !errors.As(err, &rb) || rb.Generation != 2 {
		t.Fatalf("Activate = %v, want generation 2 rolled back", err)
	}
	t.Logf("rolled back %v after the agent began waiting: %v", time.Since(awaited).Round(100*time.Millisecond), err)
	// Reachable on port 22 again, within the timeout and a few seconds.
	waitSSH(t, f, awaited.Add(timeout+10*time.Second))
	f.wantStatus(1, 1, 2)
	if got := f.h.Succeed("cat /etc/ssh/sshd_config.d/deploy.conf"); got != "Port 22\n" {
		t.Fatalf("sshd config = %q", got)
	}
}

func waitSSH(t *testing.T, f *fixture, deadline time.Time) {
	t.Helper()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := f.cfg.Connect(ctx, target(f.h))
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("host not reachable over SSH by the deadline: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// An unmanaged file in the way fails the activation, and the rollback must
// leave it exactly as it was: deploy removes only what it wrote. With
// force, deploy takes the file over; a later generation without it then
// removes it, as it owns it now.
func TestActivateNeverRemovesUnmanagedFile(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.h.Succeed("echo mine > /etc/operator-notes")
	gen := f.build(file("/etc/operator-notes", "deploy's version"))
	_, err := f.activate(gen, ActivateOptions{})
	var rb *RolledBackError
	if !errors.As(err, &rb) {
		t.Fatalf("activation over an unmanaged file: %v, want rolled back", err)
	}
	if got := f.h.Succeed("cat /etc/operator-notes"); got != "mine\n" {
		t.Fatalf("the unmanaged file after the rollback: %q, want it untouched", got)
	}
	forced := f.build(`file "/etc/operator-notes" {
    content = "deploy's version\n"
    force   = true
  }`)
	f.mustActivate(forced)
	if got := f.h.Succeed("cat /etc/operator-notes"); got != "deploy's version\n" {
		t.Fatalf("after force: %q", got)
	}
	f.mustActivate(f.build(file("/etc/other", "x")))
	f.h.Fail("test -e /etc/operator-notes")
}
