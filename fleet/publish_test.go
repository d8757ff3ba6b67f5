package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/pull/channel"
)

// pullFleet is three hosts pulling from channel "prod" of a file:// cache,
// in a deployment with a canary: waves [a] [b c].
type pullFleet struct {
	dir, cacheDir string
	publisher     *cache.SecretKey
	cacheKey      *cache.SecretKey
}

func newPullFleet(t *testing.T, trusted string) *pullFleet {
	t.Helper()
	f := &pullFleet{dir: t.TempDir(), cacheDir: t.TempDir()}
	f.publisher, _, _ = cache.GenerateKey("ci-1")
	f.cacheKey, _, _ = cache.GenerateKey("cache-1")
	if trusted == "" {
		trusted = f.publisher.Public().String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "cache {\n  url = \"file://%s\"\n  public_keys = [%q]\n}\n", f.cacheDir, f.cacheKey.Public().String())
	fmt.Fprintf(&b, "role \"pulled\" {\n  pull {\n    channel = \"prod\"\n    publisher_keys = [%q]\n  }\n}\n", trusted)
	for _, h := range []string{"a", "b", "c"} {
		fmt.Fprintf(&b, "host %q {\n  address = \"192.0.2.1\"\n  roles = [role.pulled]\n  file \"/etc/%s\" {\n    content = \"%s\\n\"\n  }\n}\n", h, h, h)
	}
	b.WriteString("deployment \"all\" {\n  hosts = [\"a\", \"b\", \"c\"]\n  batch_size = \"100%\"\n  wave_timeout = \"1h\"\n}\n")
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
	if a.Serial != 1 || a.Wave != 1 || a.Waves != 2 || len(a.After) != 0 || !a.Deadline.IsZero() || a.Message != "first" {
		t.Errorf("a's release %+v", a)
	}
	for _, r := range []*agentapi.Release{b, c} {
		if r.Wave != 2 || !slices.Equal(r.After, []string{"a"}) || !r.Deadline.Equal(r.Published.Add(time.Hour)) {
			t.Errorf("%s's release %+v: want wave 2 after a, deadline an hour after the publish", r.Host, r)
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

// publish --wait reads the hosts' statuses: a rolled-back canary halts the
// second wave (known without its hosts' reports), and the exit code's
// result is the rollback.
func TestPublishWait(t *testing.T) {
	f := newPullFleet(t, "")
	ctx := context.Background()
	store := channel.DirStore(f.channelDir())
	go func() {
		// The canary: rolled back by its health check, as soon as its
		// release is there.
		for {
			if _, err := os.Stat(filepath.Join(f.channelDir(), channel.ReleaseKey("c"))); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		channel.PutStatus(ctx, store, &agentapi.PullStatus{Host: "a", Channel: "prod", Serial: 1, Outcome: agentapi.PullRolledBack,
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
		channel.PutStatus(ctx, store, &agentapi.PullStatus{Host: "b", Channel: "prod", Serial: 1, Outcome: agentapi.PullHalted, Time: time.Now().UTC(),
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
