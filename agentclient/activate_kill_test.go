package agentclient

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/oci/ocitest"
	"github.com/declarative/deploy/vmtest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// killSystem is one side of the kill test: a system and what the host
// must look like when it runs it (files, units, secrets).
type killSystem struct {
	name    string
	path    string
	conf    string            // /etc/app/conf
	only    string            // the file only this system has
	absent  string            // the file only the other system has
	units   map[string]bool   // unit → must run (false: must not exist)
	secrets map[string]string // secret → plaintext ("" must not exist anywhere)
	image   string            // the hex digest of the image its img.service runs in
}

// killImage pushes an image of the test root filesystem (a base layer
// both systems share) with /srv/version saying name, and returns the package and service that run it, and its digest.
func killImage(t *testing.T, reg *ocitest.Registry, base v1.Layer, name string) (decl, hex string) {
	top := ocitest.Layer(t, ocitest.Dir("srv/"), ocitest.File("srv/version", name+"\n"))
	img := ocitest.Image(t, "amd64", v1.Config{}, base, top)
	ref := reg.Host + "/kill/img:" + name
	digest := reg.Push(t, ref, img)
	decl = fmt.Sprintf("  package \"img\" {\n    oci {\n      image    = %q\n      insecure = true\n    }\n  }\n"+
		"  service \"img\" {\n    root       = package.img\n    exec_start = \"/bin/sleep infinity\"\n  }\n", reg.Host+"/kill/img@"+digest)
	return decl, strings.TrimPrefix(digest, "sha256:")
}

// killActivation is the kill -9 fault test (issue 16): an activation of
// one system over the other is killed (the worker, the front, or every
// process of the activation including its watchdog) at stratified random
// moments over its whole length, half the time followed by a reboot (a
// power cut or a clean reboot). Each time the host must end on exactly the
// old or exactly the new system (files, units and secrets checked against
// what that system declares), never a mix, with status consistent, and
// the activation run again must succeed. Each system runs a service in an
// OCI image of its own (sharing a base layer), and the root of the image
// being activated is removed before each round, so that kills also land
// while the agent realizes it.
func TestActivateKill9(t *testing.T) {
	t.Parallel()
	const rounds = 24
	rootfs, err := vmtest.Rootfs(context.Background(), []string{"nginx-light"}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	reg := ocitest.Start(t)
	base := ocitest.DirLayer(t, rootfs, "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info")
	imgA, hexA := killImage(t, reg, base, "A")
	imgB, hexB := killImage(t, reg, base, "B")
	f := newFixture(t)
	s := newSecretFleet(f)
	db1, db2, api := "db-one-"+rand2(), "db-two-"+rand2(), "api-"+rand2()
	s.put("db", db1)
	check := "  health_check \"ok\" {\n    command = [\"/bin/true\"]\n    timeout = \"10s\"\n  }\n"
	sysA := &killSystem{name: "A", conf: "A\n", only: "/etc/app/only-a", absent: "/etc/app/only-b",
		units: map[string]bool{"a.service": true, "b.service": false, "img.service": true}, secrets: map[string]string{"db": db1, "api": ""}, image: hexA}
	sysA.path = s.build(appUser + imgA + secretDecl("db", "app") + svc("a", "1", "1") +
		file("/etc/app/conf", sysA.conf) + file(sysA.only, "a\n") + check)
	s.put("db", db2)
	s.put("api", api)
	sysB := &killSystem{name: "B", conf: "B\n", only: "/etc/app/only-b", absent: "/etc/app/only-a",
		units: map[string]bool{"a.service": true, "b.service": true, "img.service": true}, secrets: map[string]string{"db": db2, "api": api}, image: hexB}
	sysB.path = s.build(appUser + imgB + secretDecl("db", "app") + secretDecl("api", "app") + svc("a", "2", "1") + svc("b", "1", "1") +
		file("/etc/app/conf", sysB.conf) + file(sysB.only, "b\n") + check + slowScript(1))
	f.mustActivate(sysA.path)
	f.hostRuns(sysA)

	// The length of an undisturbed activation (with the operator's
	// confirmation), to spread the kills over.
	start := time.Now()
	f.mustActivate(sysB.path)
	length := time.Since(start)
	f.hostRuns(sysB)
	t.Logf("an undisturbed activation takes %v", length.Round(10*time.Millisecond))

	const confirm = 4 * time.Second
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	from, to := sysA, sysB // swapped at the start of each round: the host runs B
	endedOld, endedNew := 0, 0
	phases := map[string]int{}
	origT, origH := f.t, f.h
	for i := range rounds {
		from, to = to, from
		// Every third round the operator withholds its confirmation (its
		// outside check fails): the host rolls back at the deadline, so
		// kills land while it awaits confirmation and while it rolls back.
		// Otherwise the operator confirms after a check of 1.5 s, so that
		// kills also land while it awaits confirmation.
		withhold := i%3 == 2
		window := length + 1500*time.Millisecond
		if withhold {
			window = length + confirm + length
		}
		// Stratified: round i kills in the i-th slice of its window.
		at := time.Duration((float64(i) + rng.Float64()) / rounds * float64(window))
		what := []string{"worker", "front", "worker unit and front", "everything"}[(i+i/4)%4]
		reboot := []string{"", "", "power cut", "clean reboot"}[i%4]
		name := fmt.Sprintf("%02d %s at %v %s", i, what, at.Round(10*time.Millisecond), reboot)
		if withhold {
			name += " unconfirmed"
		}
		t.Run(name, func(t *testing.T) {
			f.t = t
			f.h = f.h.With(t)
			// The host runs from: the root of to's image goes, to be
			// realized again by this activation.
			f.h.Succeed("rm -rf /var/lib/deploy/images/" + to.image)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				c := f.clientOn(nil)
				defer c.Close()
				_, err := c.Activate(ctx, to.path, ActivateOptions{ConfirmTimeout: confirm,
					ReconnectFor: 40 * time.Second, Logf: t.Logf, Meta: map[string]string{"message": t.Name()},
					Check: func(ctx context.Context) error {
						time.Sleep(1500 * time.Millisecond)
						if withhold {
							return fmt.Errorf("withheld by the test: %w", ErrWithhold)
						}
						return nil
					}})
				done <- err
			}()
			time.Sleep(at)
			phase := f.phaseNow()
			f.kill(what)
			phases[phase]++
			t.Logf("killed %s in phase %q", what, phase)
			switch reboot {
			case "power cut":
				f.h.Crash()
				f.h.Boot()
			case "clean reboot":
				f.h.Reboot()
			}
			select {
			case err := <-done:
				t.Logf("the operator's Activate: %v", err)
			case <-time.After(90 * time.Second):
				cancel()
				<-done
				t.Fatal("the operator's Activate did not end")
			}
			f.waitSettled()
			ended := f.hostRunsOneOf(from, to)
			if ended == to {
				endedNew++
			} else {
				endedOld++
			}
			f.wantKillMetrics(t, reboot == "")
			// The activation run again succeeds.
			rerun := f.clientOn(nil)
			_, err := rerun.Activate(context.Background(), to.path, ActivateOptions{ConfirmTimeout: 10 * time.Second, Logf: t.Logf})
			rerun.Close()
			if err != nil {
				t.Logf("agent logs:\n%s", f.h.Succeed("tail -n 40 $(ls -1v /var/lib/deploy/log/activate-*.log | tail -2)"))
				t.Fatalf("the rerun: %v", err)
			}
			f.hostRuns(to)
			cur := float64(f.status().Current)
			f.wantMetrics(t, "after the rerun", map[string]float64{
				"deploy_current_generation":         cur,
				"deploy_last_activation_generation": cur,
				"deploy_last_activation_success":    1,
				"deploy_last_check_generation":      cur,
				"deploy_checks_failing":             0,
			})
		})
		f.t, f.h = origT, origH
		if t.Failed() {
			break
		}
	}
	t.Logf("%d rounds: ended on the old system %d times, on the new one %d times; killed in phases %v", rounds, endedOld, endedNew, phases)
}

// manifestProblems checks the host against everything system's manifest
// declares: each file's content (its store source), owner, group and
// mode; each unit's link and, for units to start, that it runs; each
// secret's file with its owner, group and mode.
func (f *fixture) manifestProblems(system string) []string {
	f.t.Helper()
	m, err := manifest.Parse([]byte(f.h.Succeed("cat " + system + "/manifest.json")))
	if err != nil {
		f.t.Fatal(err)
	}
	var script strings.Builder
	for _, fl := range m.Files {
		fmt.Fprintf(&script, "if cmp -s %q %q; then echo \"file %s $(stat -c '%%U %%G %%a' %q)\"; else echo \"file %s differs\"; fi\n", fl.Path, fl.Source, fl.Path, fl.Path, fl.Path)
	}
	for _, u := range m.Units {
		fmt.Fprintf(&script, "echo \"unit %s $(readlink /etc/systemd/system/%s) $(systemctl is-active %s)\"\n", u.Name, u.Name, u.Name)
	}
	for _, sc := range m.Secrets {
		fmt.Fprintf(&script, "echo \"secret %s $(stat -L -c '%%U %%G %%a' /run/deploy/secrets/%s 2>&1)\"\n", sc.Name, sc.Name)
	}
	got := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(f.h.Succeed(script.String())), "\n") {
		got[l] = true
	}
	var problems []string
	want := func(line string) {
		if !got[line] {
			problems = append(problems, fmt.Sprintf("manifest: want %q", line))
		}
	}
	mode := func(s string) string { return strings.TrimLeft(s, "0") }
	for _, fl := range m.Files {
		want(fmt.Sprintf("file %s %s %s %s", fl.Path, fl.Owner, fl.Group, mode(fl.Mode)))
	}
	for _, u := range m.Units {
		state := "active"
		if !u.Start {
			state = strings.Fields(f.h.Succeed("systemctl is-active " + u.Name + " || true"))[0]
		}
		want(fmt.Sprintf("unit %s %s %s", u.Name, u.Source, state))
	}
	for _, sc := range m.Secrets {
		owner, group, md := sc.Owner, sc.Group, sc.Mode
		if owner == "" {
			owner = "root"
		}
		if group == "" {
			group = "root"
		}
		if md == "" {
			md = "0400"
		}
		want(fmt.Sprintf("secret %s %s %s %s", sc.Name, owner, group, mode(md)))
	}
	return problems
}

// wantKillMetrics checks the host's textfile after a kill round: it shows
// the running generation and, when the round had no reboot (which ends
// an activation without a result), the outcome of the killed activation:
// a rollback that succeeded to the running generation, or an activation
// of it that was done.
func (f *fixture) wantKillMetrics(t *testing.T, withResult bool) {
	t.Helper()
	cur := float64(f.status().Current)
	want := map[string]float64{"deploy_current_generation": cur}
	if withResult {
		out := f.h.Succeed(`id=$(ls -1v /var/lib/deploy/log/ | sed -n 's/^activate-\([0-9]*\)\.log$/\1/p' | tail -1)
cat /var/lib/deploy/log/activate-$id.result.json`)
		var res struct {
			Outcome    string `json:"outcome"`
			Generation int    `json:"generation"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("the killed activation's result: %v\n%s", err, out)
		}
		want["deploy_last_activation_outcome{outcome="+res.Outcome+"}"] = 1
		switch res.Outcome {
		case "rolled-back":
			want["deploy_last_rollback_success"] = 1
			want["deploy_last_rollback_generation"] = cur
			want["deploy_last_activation_success"] = 0
		case "done":
			want["deploy_last_activation_success"] = 1
			want["deploy_last_activation_generation"] = cur
		}
	}
	f.wantMetrics(t, "after the kill", want)
}

func rand2() string { return fmt.Sprintf("%016x", rand.Uint64()) }

// phaseNow is the phase of the host's last activation ("" when none
// recorded), for the log.
func (f *fixture) phaseNow() string {
	out, _ := f.h.Run(context.Background(), `cat /run/deploy/state.json 2>/dev/null`)
	var st struct {
		Activation *struct {
			ID    string `json:"id"`
			Phase string `json:"phase"`
		} `json:"activation"`
	}
	if json.Unmarshal([]byte(out), &st) != nil || st.Activation == nil {
		return ""
	}
	return st.Activation.Phase
}

// kill sends SIGKILL to processes of the newest activation on the host:
// the worker (its main process, as the OOM killer would), the front (the
// activate command in the SSH session), the worker's unit and the front,
// or everything (worker unit, front and the watchdog's process).
func (f *fixture) kill(what string) {
	f.t.Helper()
	const newest = `id=$(ls -1v /var/lib/deploy/log/ | sed -n 's/^activate-\([0-9]*\)\.log$/\1/p' | tail -1)
worker=deploy-activate-$id.service watchdog=deploy-watchdog-$id.service
`
	// The front: the process whose argv is <agent> activate ... (exact
	// argv[1], read from /proc, so nothing else matches).
	const front = `for p in /proc/[0-9]*; do
  a1=$(tr '\0' '\n' < $p/cmdline 2>/dev/null | sed -n 2p)
  a0=$(tr '\0' '\n' < $p/cmdline 2>/dev/null | sed -n 1p)
  case "$a0" in */bin/deploy-agent) [ "$a1" = activate ] && kill -9 ${p#/proc/} ;; esac
done
`
	const workerMain = `pid=$(systemctl show -p MainPID --value $worker 2>/dev/null); [ "${pid:-0}" -gt 0 ] && kill -9 $pid
`
	const workerUnit = `systemctl kill --signal=SIGKILL $worker 2>/dev/null
`
	const watchdogMain = `pid=$(systemctl show -p MainPID --value $watchdog 2>/dev/null); [ "${pid:-0}" -gt 0 ] && kill -9 $pid
`
	script := newest
	switch what {
	case "worker":
		script += workerMain
	case "front":
		script += front
	case "worker unit and front":
		script += front + workerUnit
	case "everything":
		script += front + workerUnit + watchdogMain
	}
	f.h.Run(context.Background(), script+"true")
}

// waitSettled waits until the host's last activation has ended (nothing
// in progress, the lock free).
func (f *fixture) waitSettled() {
	f.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := f.h.Run(context.Background(), "/var/lib/deploy/profiles/system-1-link/agent/bin/deploy-agent status --json")
		var st struct {
			Pending    int             `json:"pending"`
			Lock       json.RawMessage `json:"lock"`
			Consistent bool            `json:"consistent"`
			Activation *struct {
				Phase string `json:"phase"`
			} `json:"activation"`
		}
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Pending == 0 && (len(st.Lock) == 0 || string(st.Lock) == "null") &&
			(st.Activation == nil || !strings.Contains("starting applying checking awaiting-confirmation rolling-back", st.Activation.Phase)) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Logf("agent logs:\n%s", f.h.Succeed("tail -n 60 $(ls -1v /var/lib/deploy/log/activate-*.log | tail -2)"))
			f.t.Fatalf("the host did not settle: %s (%v)", out, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// hostRunsOneOf checks that the host runs exactly a or exactly b and
// returns which.
func (f *fixture) hostRunsOneOf(a, b *killSystem) *killSystem {
	f.t.Helper()
	cur := strings.TrimSpace(f.h.Succeed("readlink /run/deploy/current-system || true"))
	switch cur {
	case a.path:
		f.hostRuns(a)
		return a
	case b.path:
		f.hostRuns(b)
		return b
	}
	f.t.Fatalf("current-system = %q, neither %s nor %s", cur, a.path, b.path)
	return nil
}

// hostRuns checks that the host runs exactly sys: the running and boot
// generations are one generation of sys, the application is complete, and
// files, units and secrets are exactly sys's.
func (f *fixture) hostRuns(sys *killSystem) {
	f.t.Helper()
	st := f.status()
	if !st.Consistent || st.Current == 0 || st.Current != st.Boot || st.Pending != 0 {
		f.t.Fatalf("status %+v: want a consistent host whose running generation is its boot default", st)
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	gen := fmt.Sprintf("/var/lib/deploy/profiles/system-%d-link", st.Current)
	if got := strings.TrimSpace(f.h.Succeed("readlink " + gen)); got != sys.path {
		bad("generation %d is %s, want system %s", st.Current, got, sys.name)
	}
	if got := strings.TrimSpace(f.h.Succeed("readlink /run/deploy/current-system")); got != sys.path {
		bad("current-system is %s", got)
	}
	if got := f.h.Succeed("cat /etc/app/conf"); got != sys.conf {
		bad("/etc/app/conf = %q", got)
	}
	if _, err := f.h.Run(context.Background(), "test -f "+sys.only); err != nil {
		bad("%s is missing", sys.only)
	}
	if _, err := f.h.Run(context.Background(), "test -e "+sys.absent); err == nil {
		bad("%s (the other system's) exists", sys.absent)
	}
	for u, run := range sys.units {
		link := strings.TrimSpace(f.h.Succeed("readlink /etc/systemd/system/" + u + " || true"))
		want := ""
		if run {
			want = strings.TrimSpace(f.h.Succeed(fmt.Sprintf("readlink -f %s/units/%s", sys.path, u)))
			if got := strings.TrimSpace(f.h.Succeed("readlink -f /etc/systemd/system/" + u)); got != want {
				bad("%s links to %s, want %s", u, got, want)
			}
			if !f.active(u) {
				bad("%s is not active", u)
			}
		} else {
			if link != want {
				bad("%s exists (-> %s)", u, link)
			}
			if f.active(u) {
				bad("%s is active", u)
			}
		}
	}
	if got := strings.TrimSpace(f.h.Succeed("readlink /run/deploy/secrets || true")); got != fmt.Sprintf("secrets.d/%d", st.Current) {
		bad("/run/deploy/secrets -> %q, want secrets.d/%d", got, st.Current)
	}
	for name, plain := range sys.secrets {
		if plain == "" {
			if out := strings.TrimSpace(f.h.Succeed("find /run/deploy/secrets.d -name " + name)); out != "" {
				bad("secret %s (the other system's) has plaintext on the host: %s", name, out)
			}
			continue
		}
		if got, _ := f.h.Run(context.Background(), "cat /run/deploy/secrets/"+name); got != plain {
			bad("secret %s = %q, want %q", name, got, plain)
		}
	}
	// The image root (of a system with an image: the hung-worker test's
	// have none): the system's, whole, with the image's owner and
	// mode; every root on the host is whole (a killed realization leaves
	// only a temporary directory).
	if sys.image != "" {
		root := "/var/lib/deploy/images/" + sys.image + "/rootfs"
		if got := strings.TrimSpace(f.h.Succeed("grep -h '^RootDirectory=' /etc/systemd/system/img.service")); got != "RootDirectory="+root {
			bad("img.service has %s, want RootDirectory=%s", got, root)
		}
		if got, _ := f.h.Run(context.Background(), "cat "+root+"/srv/version; stat -c '%a %u' "+root+"/srv/version"); got != sys.name+"\n644 0\n" {
			bad("the image root's /srv/version: %q", got)
		}
		if got, _ := f.h.Run(context.Background(), "pid=$(systemctl show -P MainPID img.service); cat /proc/$pid/root/srv/version"); got != sys.name+"\n" {
			bad("img.service does not run in %s's image root: %q", sys.name, got)
		}
		for _, d := range strings.Fields(f.h.Succeed("ls /var/lib/deploy/images")) {
			if _, err := f.h.Run(context.Background(), "test -f /var/lib/deploy/images/"+d+"/rootfs/srv/version && test -d /var/lib/deploy/images/"+d+"/rootfs/usr/sbin"); err != nil {
				bad("the image root %s is not whole", d)
			}
		}
	}
	problems = append(problems, f.manifestProblems(sys.path)...)
	if len(problems) > 0 {
		f.t.Logf("agent logs:\n%s", f.h.Succeed("tail -n 60 $(ls -1v /var/lib/deploy/log/activate-*.log | tail -2)"))
		f.t.Fatalf("the host does not run exactly system %s (generation %d):\n  %s", sys.name, st.Current, strings.Join(problems, "\n  "))
	}
}
