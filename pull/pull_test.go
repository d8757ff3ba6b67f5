package pull

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/pull/channel"
	"golang.org/x/crypto/ssh"
)

// fixture is a channel and a cache in directories, the publisher's and the
// cache's keys, a local store to build systems in, and one host's agent
// whose activations are recorded instead of run.
type fixture struct {
	t         *testing.T
	stateDir  string
	chanDir   string
	cacheDir  string
	local     *closure.Store
	publisher *cache.SecretKey
	cacheKey  *cache.SecretKey
	activated []string
	// keys are the hosts' SSH host keys (shared by the fixtures of one
	// channel).
	keys map[string]ed25519.PrivateKey
	// outcome is what the next activation returns.
	outcome agentapi.Outcome
	check   string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, stateDir: t.TempDir(), chanDir: t.TempDir(), cacheDir: t.TempDir(), outcome: agentapi.OutcomeDone,
		keys: map[string]ed25519.PrivateKey{}}
	var err error
	f.local, err = closure.NewLocalStore(t.TempDir(), filepath.Join(f.stateDir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	f.publisher, _, _ = cache.GenerateKey("ci-1")
	f.cacheKey, _, _ = cache.GenerateKey("cache-1")
	return f
}

func (f *fixture) config(host string) *agentapi.PullConfig {
	return &agentapi.PullConfig{V: 1, Host: host, Channel: "prod", URL: "file://" + f.chanDir,
		PublisherKeys: []string{f.publisher.Public().String()}, CacheURL: "file://" + f.cacheDir,
		CacheKeys: []string{f.cacheKey.Public().String()}, StatusURL: "file://" + f.chanDir, StateDir: f.stateDir}
}

func (f *fixture) agent(host string) *Agent {
	a := &Agent{Config: f.config(host), Layout: activation.Layout{StateDir: f.stateDir, RunDir: filepath.Join(f.stateDir, "run")},
		Version: "test", Logf: f.t.Logf, HostKey: f.key(host)}
	a.Activate = func(ctx context.Context, system string, meta map[string]string) (*agentapi.Result, error) {
		f.activated = append(f.activated, system)
		return &agentapi.Result{Outcome: f.outcome, Generation: len(f.activated), Check: f.check, Message: "test activation"}, nil
	}
	return a
}

// key is host's SSH ed25519 host key.
func (f *fixture) key(host string) ed25519.PrivateKey {
	if f.keys[host] == nil {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			f.t.Fatal(err)
		}
		f.keys[host] = k
	}
	return f.keys[host]
}

// keyLine is host's public host key, as the fleet's host_key holds it.
func (f *fixture) keyLine(host string) string {
	pk, err := ssh.NewPublicKey(f.key(host).Public())
	if err != nil {
		f.t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
}

// system builds a system closure (a package and the system referring to
// it) for host and pushes it to the cache.
func (f *fixture) system(host, version string) string {
	f.t.Helper()
	ctx := context.Background()
	dir := f.t.TempDir()
	os.WriteFile(filepath.Join(dir, "app"), []byte("app "+version), 0o644)
	pkg, err := f.local.AddTree(ctx, dir, "app-"+version, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	sys := f.t.TempDir()
	os.WriteFile(filepath.Join(sys, "manifest.json"), []byte(`{"uses":"`+pkg.Path+`"}`), 0o644)
	pi, err := f.local.AddTree(ctx, sys, "system-"+host, []string{pkg.Path})
	if err != nil {
		f.t.Fatal(err)
	}
	p := &cache.Pusher{Cache: cache.Dir(f.cacheDir), Key: f.cacheKey}
	if _, err := p.Push(ctx, f.local, []string{pkg.Path, pi.Path}); err != nil {
		f.t.Fatal(err)
	}
	return pi.Path
}

// publish writes host's release document, signed by key (the publisher's
// when nil), and returns its bytes. The release names the host keys of
// its earlier waves unless it names some.
func (f *fixture) publish(rel *agentapi.Release, keys ...*cache.SecretKey) []byte {
	f.t.Helper()
	if len(keys) == 0 {
		keys = []*cache.SecretKey{f.publisher}
	}
	rel.V, rel.Channel = agentapi.Version, "prod"
	if rel.Wave == 0 {
		rel.Wave, rel.Waves = 1, 1
	}
	if rel.Published.IsZero() {
		rel.Published = time.Now().UTC()
	}
	if rel.AfterKeys == nil && len(rel.After) > 0 {
		rel.AfterKeys = map[string]string{}
		for _, h := range rel.After {
			rel.AfterKeys[h] = f.keyLine(h)
		}
	}
	data, err := channel.Sign(agentapi.DocRelease, rel, keys...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.write(channel.ReleaseKey(rel.Host), data)
	return data
}

func (f *fixture) write(key string, data []byte) {
	f.t.Helper()
	if err := channel.DirStore(f.chanDir).Put(context.Background(), key, data); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) status(host string) *agentapi.PullStatus {
	f.t.Helper()
	data, err := os.ReadFile(filepath.Join(f.chanDir, channel.StatusKey(host)))
	if err != nil {
		f.t.Fatal(err)
	}
	st, err := channel.VerifyStatus(data, "prod", host, f.keyLine(host))
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

func (f *fixture) poll(a *Agent, want string) *Result {
	f.t.Helper()
	res, err := a.Poll(context.Background())
	if err != nil {
		f.t.Fatalf("Poll: %v", err)
	}
	if res.Action != want {
		f.t.Fatalf("Poll = %q (serial %d, status %+v), want %q", res.Action, res.Serial, res.Status, want)
	}
	return res
}

func TestPollActivatesAndRefuses(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web1")
	f.poll(a, "no-release")
	v1 := f.system("web1", "v1")
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: v1, GitRev: "c1", Publisher: "ci"})
	f.poll(a, "done")
	if len(f.activated) != 1 || f.activated[0] != v1 {
		t.Fatalf("activated %v, want %s", f.activated, v1)
	}
	if st := f.status("web1"); st.Serial != 1 || st.Outcome != agentapi.PullDone || st.System != v1 || st.Refused != nil {
		t.Fatalf("status %+v", st)
	}
	if ok, _ := closure.NewTargetStore(f.stateDir).Valid(v1); !ok {
		t.Fatal("the closure is not valid on the host")
	}
	if target, err := os.Readlink(filepath.Join(f.stateDir, "profiles", RootName("prod"))); err != nil || target != v1 {
		t.Errorf("gc root %q, %v; want %s", target, err, v1)
	}
	f.poll(a, "none")
	old := f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: v1})
	v2 := f.system("web1", "v2")
	current := f.publish(&agentapi.Release{Host: "web1", Serial: 2, System: v2})
	f.poll(a, "done")
	before := f.status("web1")

	// Each refusal is reported, changes nothing, and is reported once.
	evil, _, _ := cache.GenerateKey("ci-1")
	stranger, _, _ := cache.GenerateKey("stranger-1")
	v3 := f.system("web1", "v3")
	web2 := f.system("web2", "v1")
	for _, tt := range []struct {
		name string
		doc  func() []byte
		want string
	}{
		{"replay of serial 1", func() []byte { return old }, "serial not above the current one: serial 1, this host is at 2"},
		{"unknown key", func() []byte {
			return f.publish(&agentapi.Release{Host: "web1", Serial: 3, System: v3}, stranger)
		}, `not signed by a trusted publisher key: signed by "stranger-1"`},
		{"another key with a trusted name", func() []byte {
			return f.publish(&agentapi.Release{Host: "web1", Serial: 3, System: v3}, evil)
		}, "not signed by a trusted publisher key"},
		{"unsigned", func() []byte {
			data := f.publish(&agentapi.Release{Host: "web1", Serial: 3, System: v3})
			var doc agentapi.SignedDocument
			json.Unmarshal(data, &doc)
			doc.Signatures = nil
			data, _ = json.Marshal(doc)
			return data
		}, "unsigned"},
		{"another host's release", func() []byte {
			f.publish(&agentapi.Release{Host: "web2", Serial: 3, System: web2})
			data, _ := os.ReadFile(filepath.Join(f.chanDir, channel.ReleaseKey("web2")))
			return data
		}, `for another host: host "web2", this is "web1"`},
		{"a system outside the store", func() []byte {
			return f.publish(&agentapi.Release{Host: "web1", Serial: 3, System: "/nix/store/00000000000000000000000000000000-system-web1"})
		}, "is not in this host's store"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.write(channel.ReleaseKey("web1"), tt.doc())
			f.poll(a, "refused")
			st := f.status("web1")
			if st.Refused == nil || !strings.Contains(st.Refused.Reason, tt.want) {
				t.Fatalf("refusal %+v, want %q", st.Refused, tt.want)
			}
			if st.Serial != 2 || st.Outcome != agentapi.PullDone || st.System != v2 || !st.OutcomeTime.Equal(before.OutcomeTime) {
				t.Fatalf("status %+v: the refusal changed the release (or when it was done)", st)
			}
			if len(f.activated) != 2 {
				t.Fatalf("activated %v", f.activated)
			}
			f.poll(a, "none")
		})
	}
	// The current release, read again, is no replay.
	f.write(channel.ReleaseKey("web1"), current)
	f.poll(a, "none")
	if st := f.status("web1"); st.Refused == nil || st.Serial != before.Serial {
		t.Fatalf("status %+v", st)
	}

	// A tampered closure: refused, nothing activated, and the serial is
	// used up (the publisher publishes a fixed one).
	v4 := f.system("web1", "v4")
	ni, _ := os.ReadFile(filepath.Join(f.cacheDir, cache.Key(v4)))
	url := ""
	for _, line := range strings.Split(string(ni), "\n") {
		if u, ok := strings.CutPrefix(line, "URL: "); ok {
			url = u
		}
	}
	nar := filepath.Join(f.cacheDir, url)
	content, err := os.ReadFile(nar)
	if err != nil {
		t.Fatal(err)
	}
	content[len(content)/2] ^= 0xff
	os.WriteFile(nar, content, 0o644)
	f.publish(&agentapi.Release{Host: "web1", Serial: 4, System: v4})
	f.poll(a, "refused")
	if st := f.status("web1"); st.Serial != 4 || st.Outcome != agentapi.PullRefused || !strings.Contains(st.Message, "closure refused") {
		t.Fatalf("status %+v", st)
	}
	if len(f.activated) != 2 {
		t.Fatalf("activated %v after a tampered closure", f.activated)
	}
	if ok, _ := closure.NewTargetStore(f.stateDir).Valid(v4); ok {
		t.Fatal("the tampered system became valid")
	}
	f.poll(a, "none")
}

func TestPollWaves(t *testing.T) {
	f := newFixture(t)
	canary := f.agent("web1")
	// web2 is a host of its own: its own state directory, so its own store
	// directory, so its own cache.
	g := newFixture(t)
	g.publisher, g.cacheKey, g.chanDir, g.keys = f.publisher, f.cacheKey, f.chanDir, f.keys
	rest := g.agent("web2")
	g.activated = f.activated

	published := time.Now().UTC()
	deadline := published.Add(time.Hour)
	wave2 := func(serial int64, system string, deadline time.Time) {
		f.publish(&agentapi.Release{Host: "web2", Serial: serial, System: system, Wave: 2, Waves: 2, After: []string{"web1"}, Deadline: deadline, Published: published})
	}
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: f.system("web1", "v1"), Wave: 1, Waves: 2, Published: published})
	wave2(1, g.system("web2", "v1"), deadline)
	g.poll(rest, "waiting")
	if st := f.status("web2"); st.Outcome != agentapi.PullWaiting || !strings.Contains(st.Message, "waiting for web1") {
		t.Fatalf("status %+v", st)
	}
	if len(g.activated) != 0 {
		t.Fatalf("web2 activated %v before web1 reported", g.activated)
	}
	// Waiting again changes nothing: the state file is not written again
	// (an atomic write would be a new inode).
	before, err := os.Stat(rest.stateFile())
	if err != nil {
		t.Fatal(err)
	}
	g.poll(rest, "waiting")
	if after, err := os.Stat(rest.stateFile()); err != nil || !os.SameFile(before, after) {
		t.Errorf("a second waiting poll wrote the state file again (%v)", err)
	}
	f.poll(canary, "done")
	g.poll(rest, "done")
	if len(g.activated) != 1 {
		t.Fatalf("web2 activated %v", g.activated)
	}

	// The canary rolls back: the second wave halts, and stays halted.
	f.outcome, f.check = agentapi.OutcomeRolledBack, "http"
	f.publish(&agentapi.Release{Host: "web1", Serial: 2, System: f.system("web1", "v2"), Wave: 1, Waves: 2, Published: published})
	f.poll(canary, "rolled-back")
	if st := f.status("web1"); st.Outcome != agentapi.PullRolledBack || st.Check != "http" || st.Serial != 2 {
		t.Fatalf("canary status %+v", st)
	}
	v2 := g.system("web2", "v2")
	wave2(2, v2, deadline)
	g.poll(rest, "halted")
	if st := f.status("web2"); st.Outcome != agentapi.PullHalted || st.Serial != 2 || !strings.Contains(st.Message, `web1 (rolled-back, health check "http") failed`) {
		t.Fatalf("status %+v", st)
	}
	g.poll(rest, "none")
	if len(g.activated) != 1 {
		t.Fatalf("web2 activated %v", g.activated)
	}

	// A first wave that does not report by the deadline halts the second.
	wave2(3, v2, time.Now().Add(-time.Second))
	g.poll(rest, "halted")
	if st := f.status("web2"); !strings.Contains(st.Message, "web1 did not report by") {
		t.Fatalf("status %+v", st)
	}
}

// An activation that the poll stopped following (the poll was killed, the
// host rebooted) is reported at the next poll, from the generations.
func TestPollResumes(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web1")
	v1 := f.system("web1", "v1")
	l := a.Layout
	a.Activate = func(ctx context.Context, system string, meta map[string]string) (*agentapi.Result, error) {
		// The worker ran on: generation 1 failed its health check.
		os.MkdirAll(l.ProfilesDir(), 0o755)
		os.Symlink(system, filepath.Join(l.ProfilesDir(), "system-1-link"))
		g := agentapi.Generation{Number: 1, System: system, Failed: true, FailedTime: time.Now().UTC().Add(time.Second),
			FailedReason: `health check "http" failed: GET http://localhost/: status 500, want 200`}
		data, _ := json.Marshal(g)
		os.WriteFile(filepath.Join(l.ProfilesDir(), "system-1.json"), data, 0o644)
		return nil, fmt.Errorf("signal: killed")
	}
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: v1})
	f.poll(a, "rolled-back")
	if st := f.status("web1"); st.Outcome != agentapi.PullRolledBack || st.Check != "http" || st.Generation != 1 {
		t.Fatalf("status %+v", st)
	}
}

// A status write that fails is retried at the next poll.
func TestPollRetriesReport(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web1")
	v1 := f.system("web1", "v1")
	a.Status = failingWriter{}
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: v1})
	res := f.poll(a, "done")
	if res.Reported {
		t.Fatal("reported through a failing writer")
	}
	a.Status = channel.DirStore(f.chanDir)
	res = f.poll(a, "none")
	if !res.Reported || f.status("web1").Outcome != agentapi.PullDone {
		t.Fatalf("not reported at the next poll: %+v", res)
	}
}

type failingWriter struct{}

func (failingWriter) Put(context.Context, string, []byte) error { return fmt.Errorf("503 Slow Down") }
func (failingWriter) String() string                            { return "failing" }

// Someone who can write the status prefix but holds no host's key (the
// status credentials leaked, say) writes statuses for web1, the first
// wave: none of them lets web2 go, and none halts it; web1's own report
// does.
func TestPollWavesForgedStatus(t *testing.T) {
	f := newFixture(t)
	canary := f.agent("web1")
	g := newFixture(t)
	g.publisher, g.cacheKey, g.chanDir, g.keys = f.publisher, f.cacheKey, f.chanDir, f.keys
	rest := g.agent("web2")
	published := time.Now().UTC()
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: f.system("web1", "v1"), Wave: 1, Waves: 2, Published: published})
	f.publish(&agentapi.Release{Host: "web2", Serial: 1, System: g.system("web2", "v1"), Wave: 2, Waves: 2, After: []string{"web1"},
		Deadline: published.Add(time.Hour), Published: published})

	_, evil, _ := ed25519.GenerateKey(rand.Reader)
	claim := func(o agentapi.PullOutcome) *agentapi.PullStatus {
		now := time.Now().UTC()
		return &agentapi.PullStatus{Host: "web1", Channel: "prod", Serial: 1, Outcome: o, Time: now, OutcomeTime: now, Check: "http"}
	}
	for _, tt := range []struct {
		name string
		doc  func() []byte
	}{
		{"an unsigned done, as statuses used to be", func() []byte { data, _ := json.Marshal(claim(agentapi.PullDone)); return data }},
		{"a done signed by another key", func() []byte { data, _ := channel.SignStatus(claim(agentapi.PullDone), evil); return data }},
		{"web2's own done for web1", func() []byte { data, _ := channel.SignStatus(claim(agentapi.PullDone), f.key("web2")); return data }},
		{"an unsigned rolled-back", func() []byte { data, _ := json.Marshal(claim(agentapi.PullRolledBack)); return data }},
		{"a failed signed by another key", func() []byte { data, _ := channel.SignStatus(claim(agentapi.PullFailed), evil); return data }},
		{"a halted signed by another key", func() []byte { data, _ := channel.SignStatus(claim(agentapi.PullHalted), evil); return data }},
	} {
		// The fixtures fail the test itself: no subtests.
		t.Logf("web1's status: %s", tt.name)
		f.write(channel.StatusKey("web1"), tt.doc())
		g.poll(rest, "waiting")
		if st := f.status("web2"); st.Outcome != agentapi.PullWaiting || !strings.Contains(st.Message, "status of web1 not signed by its host key") {
			t.Fatalf("%s: web2's status %+v: want waiting, saying web1's status is not signed by its key", tt.name, st)
		}
		if len(g.activated) != 0 {
			t.Fatalf("%s: web2 activated %v on a forged status", tt.name, g.activated)
		}
	}
	// A forged failure stays there until web1 reports: web1's own done
	// opens the gate.
	f.poll(canary, "done")
	g.poll(rest, "done")
	if len(g.activated) != 1 {
		t.Fatalf("web2 activated %v after web1's own report", g.activated)
	}
}

// A host whose key cannot be read does not report (an unsigned report
// would count for nothing) and tries again at the next poll.
func TestPollReportNeedsHostKey(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web1")
	a.HostKey, a.Config.HostKeyFile = nil, filepath.Join(t.TempDir(), "ssh_host_ed25519_key")
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: f.system("web1", "v1")})
	if res := f.poll(a, "done"); res.Reported {
		t.Fatal("reported without a host key")
	}
	if _, err := os.Stat(filepath.Join(f.chanDir, channel.StatusKey("web1"))); err == nil {
		t.Fatal("a status was written without a host key")
	}
	block, err := ssh.MarshalPrivateKey(f.key("web1"), "")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(a.Config.HostKeyFile, pem.EncodeToMemory(block), 0o600)
	if res := f.poll(a, "none"); !res.Reported || f.status("web1").Outcome != agentapi.PullDone {
		t.Fatalf("not reported once the key is there: %+v", res)
	}
}

// losingStore is a channel whose wave reports' conditional writes lose
// (another host of the wave wrote first) while lose is set.
type losingStore struct {
	channel.DirStore
	lose bool
}

func (s *losingStore) Write(ctx context.Context, key string, data []byte, cond channel.Cond) error {
	if s.lose && strings.HasPrefix(key, "status/waves/") {
		return fmt.Errorf("PUT %s: 412 Precondition Failed: %w", key, channel.ErrConflict)
	}
	return s.DirStore.Write(ctx, key, data, cond)
}

// A host whose append to its wave's report lost to the wave's other hosts
// (its status reached status/HOST.json) adds it at the next poll: the
// later waves read the report, not each host's status, until their
// deadline. Found at 300 simulated hosts (vmtest/simhost), where 28 hosts
// of a 75-host wave lost all their attempts and the next waves waited.
func TestPollRetriesWaveReport(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web1")
	store := &losingStore{DirStore: channel.DirStore(f.chanDir), lose: true}
	a.Status = store
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: f.system("web1", "v1"), Wave: 1, Waves: 2,
		WaveSizes: []int{1, 1}, Published: time.Now().UTC()})
	res := f.poll(a, "done")
	if !res.Reported || f.status("web1").Outcome != agentapi.PullDone {
		t.Fatalf("the status did not reach the channel: %+v", res)
	}
	report := filepath.Join(f.chanDir, channel.WaveReportKey(1, 0, 1))
	if _, err := os.Stat(report); err == nil {
		t.Fatal("wave 1's report written through a losing store")
	}
	store.lose = false
	f.poll(a, "none")
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("wave 1's report after the next poll: %v", err)
	}
	wr := &agentapi.WaveReport{}
	if err := json.Unmarshal(data, wr); err != nil || wr.Reports["web1"] == nil {
		t.Fatalf("wave 1's report %s does not hold web1 (%v)", data, err)
	}
	// Once added, an idle poll writes nothing.
	before, _ := os.Stat(report)
	f.poll(a, "none")
	if after, _ := os.Stat(report); !after.ModTime().Equal(before.ModTime()) {
		t.Error("an idle poll wrote the wave's report again")
	}
}

// A release with the deployment's window: outside it the host waits and
// says when it opens; inside it, it activates.
func TestPollWindow(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web1")
	tuesday := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	a.Now = func() time.Time { return tuesday }
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: f.system("web1", "v1"), Wave: 1, Waves: 1, Window: "Mon 09:00-10:00 UTC"})
	f.poll(a, "waiting")
	if st := f.status("web1"); st.Outcome != agentapi.PullWaiting || !strings.Contains(st.Message, "waiting for the deployment's window (Mon 09:00-10:00 UTC): it opens Mon 2026-12-14 09:00 UTC") {
		t.Fatalf("status %+v", st)
	}
	if len(f.activated) != 0 {
		t.Fatalf("activated %v outside the window", f.activated)
	}
	a.Now = func() time.Time { return time.Date(2026, 12, 14, 9, 30, 0, 0, time.UTC) }
	f.poll(a, "done")
	if len(f.activated) != 1 {
		t.Fatalf("activated %v inside the window", f.activated)
	}
}

// A pull host posts its own outcome of each release to the fleet's notify
// blocks: start (activating), then done, or rollback; text form for chat;
// a webhook that fails does not fail the poll.
func TestPollNotify(t *testing.T) {
	var mu sync.Mutex
	var events, texts []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case "/json":
			var b HostNotifyBody
			if err := json.Unmarshal(data, &b); err != nil || b.Host != "web1" || b.Status == nil {
				t.Errorf("body %s: %v", data, err)
			}
			events = append(events, fmt.Sprintf("%s %d", b.Event, b.Serial))
		case "/text":
			var b map[string]string
			json.Unmarshal(data, &b)
			texts = append(texts, b["text"])
		default:
			http.Error(w, "down", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	f := newFixture(t)
	a := f.agent("web1")
	a.Config.Notify = []agentapi.NotifyTarget{
		{Name: "ops", URL: srv.URL + "/json", Format: "json", On: []string{"start", "halt", "rollback", "done"}},
		{Name: "chat", URL: srv.URL + "/text", Format: "text", On: []string{"rollback"}},
		{Name: "down", URL: srv.URL + "/down", Format: "json", On: []string{"done"}},
	}
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: f.system("web1", "v1"), Wave: 1, Waves: 1})
	f.poll(a, "done")
	f.poll(a, "none") // nothing new: nothing posted
	f.outcome, f.check = agentapi.OutcomeRolledBack, "http"
	f.publish(&agentapi.Release{Host: "web1", Serial: 2, System: f.system("web1", "v2"), Wave: 1, Waves: 1})
	f.poll(a, "rolled-back")
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"start 1", "done 1", "start 2", "rollback 2"}; !slices.Equal(events, want) {
		t.Errorf("json notifications %v, want %v", events, want)
	}
	if len(texts) != 1 || !strings.Contains(texts[0], "web1 (channel prod, serial 2): rollback") || !strings.Contains(texts[0], `(health check "http")`) {
		t.Errorf("text notifications %q", texts)
	}
}
