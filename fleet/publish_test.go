package fleet

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/pull/channel"
	"golang.org/x/crypto/ssh"
)

// pullFleet is three hosts pulling from channel "prod" of a file:// cache,
// in a deployment with a canary: waves [a] [b c].
type pullFleet struct {
	dir, cacheDir string
	publisher     *cache.SecretKey
	cacheKey      *cache.SecretKey
	// hostKeys are the hosts' SSH ed25519 host keys, which sign their
	// statuses; the fleet names their public halves (host_key).
	hostKeys map[string]ed25519.PrivateKey
}

// newPullFleet writes the fleet; the hosts of noKey have no host_key.
func newPullFleet(t *testing.T, trusted string, noKey ...string) *pullFleet {
	t.Helper()
	f := &pullFleet{dir: t.TempDir(), cacheDir: t.TempDir(), hostKeys: map[string]ed25519.PrivateKey{}}
	f.publisher, _, _ = cache.GenerateKey("ci-1")
	f.cacheKey, _, _ = cache.GenerateKey("cache-1")
	if trusted == "" {
		trusted = f.publisher.Public().String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "cache {\n  url = \"file://%s\"\n  public_keys = [%q]\n}\n", f.cacheDir, f.cacheKey.Public().String())
	fmt.Fprintf(&b, "role \"pulled\" {\n  pull {\n    channel = \"prod\"\n    publisher_keys = [%q]\n  }\n}\n", trusted)
	for _, h := range []string{"a", "b", "c"} {
		key := ""
		if !slices.Contains(noKey, h) {
			pub, priv, _ := ed25519.GenerateKey(rand.Reader)
			f.hostKeys[h] = priv
			sp, _ := ssh.NewPublicKey(pub)
			key = fmt.Sprintf("  host_key = %q\n", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))))
		}
		fmt.Fprintf(&b, "host %q {\n  address = \"192.0.2.1\"\n%s  roles = [role.pulled]\n  file \"/etc/%s\" {\n    content = \"%s\\n\"\n  }\n}\n", h, key, h, h)
	}
	b.WriteString("deployment \"all\" {\n  hosts = [\"a\", \"b\", \"c\"]\n  batch_size = \"100%\"\n  wave_timeout = \"1h\"\n  window = \"Mon-Sun 00:00-00:00\"\n}\n")
	if err := os.WriteFile(filepath.Join(f.dir, "fleet.hcl"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *pullFleet) session(t *testing.T, target string, log *eventLog) *Session {
	t.Helper()
	s := &Session{Targets: []string{f.dir + "#" + target}, Command: "publish", Builder: testBuilder(t), Emit: log.emit,
		CacheKey: f.cacheKey, PublisherKey: f.publisher}
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// report writes host's status, signed with its host key.
func (f *pullFleet) report(t *testing.T, st *agentapi.PullStatus) {
	t.Helper()
	if err := channel.PutStatus(context.Background(), channel.DirStore(f.channelDir()), st, f.hostKeys[st.Host]); err != nil {
		t.Error(err)
	}
}

func (f *pullFleet) channelDir() string { return filepath.Join(f.cacheDir, "channels", "prod") }

func (f *pullFleet) release(t *testing.T, host string) *agentapi.Release {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.channelDir(), channel.ReleaseKey(host)))
	if err != nil {
		t.Fatal(err)
	}
	rel, err := channel.VerifyRelease(data, []*cache.PublicKey{f.publisher.Public()}, "prod", host, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

func TestPublish(t *testing.T) {
	f := newPullFleet(t, "")
	log := &eventLog{}
	s := f.session(t, "all", log)
	ctx := context.Background()
	rep, err := s.Publish(ctx, PublishOptions{Channel: "prod", Message: "first"})
	if err != nil {
		t.Fatal(err)
	}
	checkRunBrackets(t, log)
	a, b, c := f.release(t, "a"), f.release(t, "b"), f.release(t, "c")
	if a.Serial != 1 || a.Wave != 1 || a.Waves != 2 || len(a.After) != 0 || !a.Deadline.IsZero() || a.Message != "first" || a.Window != "Mon-Sun 00:00-00:00" {
		t.Errorf("a's release %+v", a)
	}
	for _, r := range []*agentapi.Release{b, c} {
		if r.Wave != 2 || !slices.Equal(r.After, []string{"a"}) || !r.Deadline.Equal(r.Published.Add(time.Hour)) {
			t.Errorf("%s's release %+v: want wave 2 after a, deadline an hour after the publish", r.Host, r)
		}
		// The key that verifies a's reports.
		if pk, err := channel.ParseHostKey(r.AfterKeys["a"]); err != nil || !pk.Equal(f.hostKeys["a"].Public()) || len(r.AfterKeys) != 1 {
			t.Errorf("%s's release names after_keys %v, want a's host key", r.Host, r.AfterKeys)
		}
	}
	for _, h := range []string{"a", "b", "c"} {
		hr := rep.Hosts[h]
		if hr.Result != ResultOK || hr.Serial != 1 || hr.System == "" {
			t.Errorf("%s: %+v", h, hr)
		}
		// The whole closure is in the cache, the system path included.
		if _, err := os.Stat(filepath.Join(f.cacheDir, cache.Key(hr.System))); err != nil {
			t.Errorf("%s's system is not in the cache: %v", h, err)
		}
	}
	if !log.has(func(e Event) bool { return e.Type == EventPublish && e.State == "done" && e.Serial == 1 }) {
		t.Error("no channel.publish done event")
	}
	// The head and the record, signed.
	for _, key := range []string{channel.HeadKey, channel.HistoryKey(0, 1)} {
		data, _ := os.ReadFile(filepath.Join(f.channelDir(), key))
		cr := &agentapi.ChannelRelease{}
		if _, err := channel.Open(data, agentapi.DocChannel, []*cache.PublicKey{f.publisher.Public()}, cr); err != nil || cr.Serial != 1 || len(cr.Waves) != 2 || len(cr.Systems) != 3 {
			t.Errorf("%s: %+v %v", key, cr, err)
		}
	}

	// The next publish takes the next serial; --serial must be above.
	s = f.session(t, "a", &eventLog{})
	if _, err := s.Publish(ctx, PublishOptions{Channel: "prod"}); err != nil {
		t.Fatal(err)
	}
	if a := f.release(t, "a"); a.Serial != 2 || a.Waves != 1 {
		t.Errorf("a's second release %+v", a)
	}
	if b := f.release(t, "b"); b.Serial != 1 {
		t.Errorf("b's release changed: %+v", b)
	}
	var ue *UsageError
	if _, err := f.session(t, "a", &eventLog{}).Publish(ctx, PublishOptions{Channel: "prod", Serial: 2}); !errors.As(err, &ue) {
		t.Errorf("--serial 2 after serial 2: %v, want a usage error", err)
	}
	if _, err := f.session(t, "a", &eventLog{}).Publish(ctx, PublishOptions{Channel: "prod", Serial: 10}); err != nil || f.release(t, "a").Serial != 10 {
		t.Errorf("--serial 10: %v, serial %d", err, f.release(t, "a").Serial)
	}

	// A head written by someone else stops the publisher.
	stranger, _, _ := cache.GenerateKey("ci-1")
	forged, _ := channel.Sign(agentapi.DocChannel, &agentapi.ChannelRelease{V: 1, Channel: "prod", Serial: 1 << 40}, stranger)
	os.WriteFile(filepath.Join(f.channelDir(), channel.HeadKey), forged, 0o644)
	if _, err := f.session(t, "a", &eventLog{}).Publish(ctx, PublishOptions{Channel: "prod"}); err == nil || !strings.Contains(err.Error(), "not signed by a publisher key") {
		t.Errorf("publish over a forged head: %v", err)
	}
}

func TestPublishRefusesHostsThatWouldNotFollow(t *testing.T) {
	other, _, _ := cache.GenerateKey("other-1")
	f := newPullFleet(t, other.Public().String())
	// Each refusal is a diagnostic at the attribute to fix, with its file
	// and line.
	refusal := func(channel, summary, detail, attrLine string) {
		t.Helper()
		var ce *ConfigError
		_, err := f.session(t, "all", &eventLog{}).Publish(context.Background(), PublishOptions{Channel: channel})
		if !errors.As(err, &ce) || len(ce.Diags) != 1 {
			t.Fatalf("publish to %s: %v, want one configuration diagnostic", channel, err)
		}
		d := ce.Diags[0]
		if d.Summary != summary || !strings.Contains(d.Detail, detail) || d.Subject == nil {
			t.Fatalf("publish to %s: %q: %q at %v, want %q saying %q at the pull block", channel, d.Summary, d.Detail, d.Subject, summary, detail)
		}
		src, _ := os.ReadFile(filepath.Join(f.dir, d.Subject.Filename))
		if line := strings.Split(string(src), "\n")[d.Subject.Start.Line-1]; !strings.Contains(line, attrLine) {
			t.Errorf("publish to %s: the diagnostic points at line %d %q, want the line of %s", channel, d.Subject.Start.Line, line, attrLine)
		}
	}
	refusal("prod", "Host does not trust the publisher key", `would refuse a release signed with publisher key "ci-1"`, "publisher_keys")
	refusal("staging", "Host pulls from another channel", `pulls from channel "prod", so it would never read the release of channel "staging"`, "channel")
	if _, err := os.Stat(filepath.Join(f.cacheDir, "channels")); err == nil {
		t.Error("something was published")
	}
}

// A host whose reports would be needed (the later waves wait for it, or
// publish --wait follows it) needs an ed25519 host_key to verify them: a
// configuration error at the host, before anything is built or published.
func TestPublishRefusesHostsWithoutHostKey(t *testing.T) {
	for _, tt := range []struct {
		name, noKey, target string
		wait                bool
		refused             string // "": published
		detail              string
	}{
		{"the canary", "a", "all", false, "a", "the hosts of the later waves wait for its status report"},
		{"the last wave", "c", "all", false, "", ""},
		{"one wave", "a", "a,b", false, "", ""},
		{"the last wave, with --wait", "c", "all", true, "c", "publish --wait follows its status report"},
		{"the canary, with --wait", "a", "all", true, "a", "the hosts of the later waves and publish --wait follow its status report"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newPullFleet(t, "", tt.noKey)
			s := f.session(t, tt.target, &eventLog{})
			_, err := s.Publish(context.Background(), PublishOptions{Channel: "prod", Wait: tt.wait, WaveTimeout: time.Millisecond, Poll: time.Millisecond})
			if tt.refused == "" {
				var ce *ConfigError
				if errors.As(err, &ce) {
					t.Fatalf("Publish = %v, want it published", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Diags) != 1 {
				t.Fatalf("Publish = %v, want one configuration diagnostic", err)
			}
			d := ce.Diags[0]
			if d.Summary != "Host has no ed25519 host key" || !strings.Contains(d.Detail, tt.detail) || !strings.Contains(d.Detail, "deploy keyscan") || d.Subject == nil {
				t.Fatalf("%q: %q at %v", d.Summary, d.Detail, d.Subject)
			}
			src, _ := os.ReadFile(filepath.Join(f.dir, d.Subject.Filename))
			if line := strings.Split(string(src), "\n")[d.Subject.Start.Line-1]; line != fmt.Sprintf("host %q {", tt.refused) {
				t.Errorf("the diagnostic points at line %d %q, want host %s's", d.Subject.Start.Line, line, tt.refused)
			}
			if _, err := os.Stat(filepath.Join(f.cacheDir, "channels")); err == nil {
				t.Error("something was published")
			}
		})
	}
}

// publish --wait reads the hosts' statuses: a rolled-back canary halts the
// second wave (known without its hosts' reports), and the exit code's
// result is the rollback.
func TestPublishWait(t *testing.T) {
	f := newPullFleet(t, "")
	ctx := context.Background()
	// A webhook: publish --wait is a run that changes hosts.
	var mu sync.Mutex
	var notified []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b NotifyBody
		json.NewDecoder(r.Body).Decode(&b)
		mu.Lock()
		notified = append(notified, b.Event)
		mu.Unlock()
	}))
	defer hook.Close()
	if err := os.WriteFile(filepath.Join(f.dir, "notify.hcl"), []byte("notify \"ops\" {\n  url = \""+hook.URL+"\"\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	go func() {
		// The canary: rolled back by its health check, as soon as its
		// release is there.
		for {
			if _, err := os.Stat(filepath.Join(f.channelDir(), channel.ReleaseKey("c"))); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		f.report(t, &agentapi.PullStatus{Host: "a", Channel: "prod", Serial: 1, Outcome: agentapi.PullRolledBack,
			Check: "http", Message: "generation 2 failed", Time: time.Now().UTC()})
	}()
	log := &eventLog{}
	rep, err := f.session(t, "all", log).Publish(ctx, PublishOptions{Channel: "prod", Wait: true, Poll: 10 * time.Millisecond})
	var re *RunError
	if !errors.As(err, &re) || rep.Worst() != ResultRolledBack {
		t.Fatalf("Publish --wait = %v, want a run error (rolled back)", err)
	}
	if hr := rep.Hosts["a"]; hr.Result != ResultRolledBack || hr.Pull == nil || hr.Pull.Check != "http" {
		t.Errorf("a: %+v", hr)
	}
	for _, h := range []string{"b", "c"} {
		if hr := rep.Hosts[h]; hr.Result != ResultSkipped || !strings.Contains(hr.Err.Error(), "halted") || !strings.Contains(hr.Err.Error(), "a (rolled-back") {
			t.Errorf("%s: %+v", h, hr)
		}
	}
	mu.Lock()
	if want := []string{"start", "rollback", "done"}; !slices.Equal(notified, want) {
		t.Errorf("the webhook heard %v, want %v", notified, want)
	}
	mu.Unlock()

	// A host that never reports is unreachable at the end of its wave's
	// time; one that refused the release document is refused.
	go func() {
		for {
			if data, err := os.ReadFile(filepath.Join(f.channelDir(), channel.HeadKey)); err == nil && strings.Contains(string(data), "payload") {
				cr := &agentapi.ChannelRelease{}
				if _, err := channel.Open(data, agentapi.DocChannel, []*cache.PublicKey{f.publisher.Public()}, cr); err == nil && cr.Serial == 2 {
					break
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		f.report(t, &agentapi.PullStatus{Host: "b", Channel: "prod", Serial: 1, Outcome: agentapi.PullHalted, Time: time.Now().UTC(),
			Refused: &agentapi.PullRefusal{Serial: 2, Reason: "release refused: not signed by a trusted publisher key", Time: time.Now().UTC()}})
	}()
	rep, _ = f.session(t, "b,c", &eventLog{}).Publish(ctx, PublishOptions{Channel: "prod", Wait: true, Poll: 10 * time.Millisecond, WaveTimeout: 300 * time.Millisecond})
	if hr := rep.Hosts["b"]; hr.Result != ResultRefused || !strings.Contains(hr.Err.Error(), "trusted publisher key") {
		t.Errorf("b: %+v", hr)
	}
	if hr := rep.Hosts["c"]; hr.Result != ResultUnreachable || !strings.Contains(hr.Err.Error(), "did not report serial 2") {
		t.Errorf("c: %+v", hr)
	}
}

// publish --wait follows the waves' reports: a canary whose rolled-back
// status reached only its wave's report (not its own status document)
// ends it and halts the later wave, and deploy status --channel then shows
// the hosts' own documents.
func TestPublishWaitWaveReports(t *testing.T) {
	f := newPullFleet(t, "")
	go f.canaryFails(t, "c")
	// Without the report, --wait would wait for the wave's hour.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := f.session(t, "all", &eventLog{}).Publish(ctx, PublishOptions{Channel: "prod", Wait: true, Poll: 10 * time.Millisecond})
	var re *RunError
	if !errors.As(err, &re) || rep.Hosts["a"].Result != ResultRolledBack {
		t.Fatalf("Publish --wait = %v (a: %+v), want a rolled back", err, rep.Hosts["a"])
	}
	for _, h := range []string{"b", "c"} {
		if hr := rep.Hosts[h]; hr.Result != ResultSkipped || !strings.Contains(hr.Err.Error(), "halted") || !strings.Contains(hr.Err.Error(), "a (rolled-back") {
			t.Errorf("%s: %+v, want halted by a", h, hr)
		}
	}
	if _, err := os.Stat(filepath.Join(f.channelDir(), channel.StatusKey("a"))); err == nil {
		t.Fatal("a's status document exists: the test proves nothing")
	}
}

// publish --wait believes only statuses signed by their host's key: a
// forged "rolled-back" of the canary (signed by another key) neither ends
// the canary nor halts the second wave; it is said once, as a warning, and
// the hosts' own reports decide.
func TestPublishWaitForgedStatus(t *testing.T) {
	f := newPullFleet(t, "")
	log := &eventLog{}
	_, evil, _ := ed25519.GenerateKey(rand.Reader)
	warned := func() bool {
		return log.has(func(e Event) bool {
			return e.Type == EventWarning && e.Host == "a" && strings.Contains(e.Message, "status of a not signed by its host key")
		})
	}
	published := make(chan struct{})
	go func() {
		defer close(published)
		for {
			if _, err := os.Stat(filepath.Join(f.channelDir(), channel.ReleaseKey("c"))); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		forged, _ := channel.SignStatus(&agentapi.PullStatus{Host: "a", Channel: "prod", Serial: 1, Outcome: agentapi.PullRolledBack,
			Check: "http", Message: "forged", Time: time.Now().UTC()}, evil)
		channel.DirStore(f.channelDir()).Put(context.Background(), channel.StatusKey("a"), forged)
		// The hosts report once publish --wait has seen the forgery (or
		// has ended, believing it).
		for !warned() && !log.has(func(e Event) bool { return e.Type == EventResult && e.Host == "a" }) {
			time.Sleep(10 * time.Millisecond)
		}
		for _, h := range []string{"a", "b", "c"} {
			f.report(t, &agentapi.PullStatus{Host: h, Channel: "prod", Serial: 1, Outcome: agentapi.PullDone, Generation: 1, Time: time.Now().UTC()})
		}
	}()
	rep, err := f.session(t, "all", log).Publish(context.Background(), PublishOptions{Channel: "prod", Wait: true, Poll: 10 * time.Millisecond})
	<-published
	if err != nil {
		t.Fatalf("Publish --wait = %v (a: %+v)", err, rep.Hosts["a"])
	}
	for _, h := range []string{"a", "b", "c"} {
		if hr := rep.Hosts[h]; hr.Result != ResultOK || hr.Pull == nil || hr.Pull.Outcome != agentapi.PullDone {
			t.Errorf("%s: %+v, want ok from its own report", h, hr)
		}
	}
	if !warned() {
		t.Error("no host.warning about a's forged status")
	}
}

// deploy status --channel shows a status that its host's key does not
// verify as such, never what it claims.
func TestChannelStatusUnverified(t *testing.T) {
	f := newPullFleet(t, "", "c")
	if _, err := f.session(t, "all", &eventLog{}).Publish(context.Background(), PublishOptions{Channel: "prod"}); err != nil {
		t.Fatal(err)
	}
	_, evil, _ := ed25519.GenerateKey(rand.Reader)
	f.report(t, &agentapi.PullStatus{Host: "a", Channel: "prod", Serial: 1, Outcome: agentapi.PullDone, Time: time.Now().UTC()})
	forged, _ := channel.SignStatus(&agentapi.PullStatus{Host: "b", Channel: "prod", Serial: 1, Outcome: agentapi.PullRolledBack, Time: time.Now().UTC()}, evil)
	os.WriteFile(filepath.Join(f.channelDir(), channel.StatusKey("b")), forged, 0o644)
	// c has no host_key: nothing verifies its status.
	f.hostKeys["c"] = evil
	f.report(t, &agentapi.PullStatus{Host: "c", Channel: "prod", Serial: 1, Outcome: agentapi.PullDone, Time: time.Now().UTC()})

	rep, head, err := f.session(t, "all", &eventLog{}).ChannelStatus(context.Background(), "prod")
	if err != nil || head == nil || head.Serial != 1 {
		t.Fatalf("ChannelStatus = %v, head %+v", err, head)
	}
	if hr := rep.Hosts["a"]; hr.Pull == nil || hr.Pull.Outcome != agentapi.PullDone || hr.Err != nil {
		t.Errorf("a: %+v, want its verified status", hr)
	}
	for h, want := range map[string]string{"b": "status of b not signed by its host key", "c": "status of c cannot be verified"} {
		var se *channel.StatusError
		if hr := rep.Hosts[h]; hr.Pull != nil || !errors.As(hr.Err, &se) || !strings.Contains(hr.Err.Error(), want) {
			t.Errorf("%s: %+v (error %v), want no status and %q", h, hr, hr.Err, want)
		}
	}
}

// canaryFails waits for host's release, then adds canary a's rolled-back
// status to its wave's report, and to nothing else.
func (f *pullFleet) canaryFails(t *testing.T, host string) {
	for {
		if _, err := os.Stat(filepath.Join(f.channelDir(), channel.ReleaseKey(host))); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	doc, _ := channel.SignStatus(&agentapi.PullStatus{Host: "a", Channel: "prod", Serial: 1, Wave: 1, Outcome: agentapi.PullRolledBack,
		Check: "http", Message: "generation 2 failed", Time: time.Now().UTC()}, f.hostKeys["a"])
	if err := channel.AppendReport(context.Background(), channel.DirStore(f.channelDir()), f.release(t, "a"), "a", doc); err != nil {
		t.Error(err)
	}
}

// heldStore holds the writes of the keys in hold until release closes.
type heldStore struct {
	channel.Store
	hold    map[string]bool
	release chan struct{}
}

func (h *heldStore) Put(ctx context.Context, key string, data []byte) error {
	if h.hold[key] {
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return h.Store.Put(ctx, key, data)
}

// TestPublishWaitWhileWriting: publish --wait follows the rollout while
// the later waves' releases are still being written, so a canary that
// fails before they are all out halts them at once, not after the last
// release of a large fleet.
func TestPublishWaitWhileWriting(t *testing.T) {
	f := newPullFleet(t, "")
	store := &heldStore{hold: map[string]bool{channel.ReleaseKey("b"): true, channel.ReleaseKey("c"): true}, release: make(chan struct{})}
	log := &eventLog{}
	halted := map[string]bool{}
	var once sync.Once
	emit := func(e Event) {
		log.emit(e)
		if e.Type == EventResult && (e.Host == "b" || e.Host == "c") && strings.Contains(e.Error, "halted") {
			halted[e.Host] = true
			if len(halted) == 2 {
				once.Do(func() { close(store.release) })
			}
		}
	}
	go f.canaryFails(t, "a")
	go func() {
		// Without the watch during the writes, nothing halts b and c
		// while their releases are held: let them go in the end, so that
		// the test fails instead of hanging.
		time.Sleep(time.Minute)
		once.Do(func() { close(store.release) })
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := f.session(t, "all", log)
	s.Emit = emit
	s.wrapChannel = func(st channel.Store) channel.Store { store.Store = st; return store }
	rep, err := s.Publish(ctx, PublishOptions{Channel: "prod", Wait: true, Poll: 10 * time.Millisecond})
	var re *RunError
	if !errors.As(err, &re) || rep.Hosts["a"].Result != ResultRolledBack {
		t.Fatalf("Publish --wait = %v (a: %+v), want a rolled back", err, rep.Hosts["a"])
	}
	// The halts came while b's and c's releases were held: the events
	// say so in their order.
	var order []string
	for _, e := range log.events {
		if (e.Host == "b" || e.Host == "c") && (e.Type == EventResult || e.Type == EventPhase && e.Phase == PhasePublish && e.State == "done") {
			order = append(order, e.Host+":"+e.Type)
		}
	}
	if len(order) != 4 || !strings.HasSuffix(order[0], ":"+EventResult) || !strings.HasSuffix(order[1], ":"+EventResult) {
		t.Fatalf("events of b and c: %v, want both halted before either release was written", order)
	}
	for _, h := range []string{"b", "c"} {
		if hr := rep.Hosts[h]; hr.Result != ResultSkipped || !strings.Contains(hr.Err.Error(), "a (rolled-back") {
			t.Errorf("%s: %+v, want halted by a", h, hr)
		}
		// And the releases were written all the same: b and c halt by
		// themselves, as the report says.
		f.release(t, h)
	}
}
