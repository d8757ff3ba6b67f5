package pull

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/pull/channel"
)

// trusted is a fixture whose channel has a root: two root keys (both must
// sign), publisher keys ci-1 and alice (threshold given), a timestamp key,
// and a clock the test moves.
type trusted struct {
	*fixture
	rootKeys  []*cache.SecretKey
	alice, ts *cache.SecretKey
	root      *agentapi.Root
	rootDoc   []byte
	now       time.Time
	tsVersion int64
}

func newTrusted(t *testing.T, publisherThreshold int) *trusted {
	f := &trusted{fixture: newFixture(t), now: time.Now().UTC()}
	for _, n := range []string{"root-1", "root-2"} {
		k, _, _ := cache.GenerateKey(n)
		f.rootKeys = append(f.rootKeys, k)
	}
	f.alice, _, _ = cache.GenerateKey("alice")
	f.ts, _, _ = cache.GenerateKey("ts-1")
	f.root = &agentapi.Root{V: 1, Channel: "prod", Version: 1, Expires: f.now.Add(365 * 24 * time.Hour),
		Roles: map[string]agentapi.Role{
			agentapi.RoleRoot:      {Keys: pubs(f.rootKeys...), Threshold: 2},
			agentapi.RolePublisher: {Keys: pubs(f.publisher, f.alice), Threshold: publisherThreshold},
			agentapi.RoleTimestamp: {Keys: pubs(f.ts), Threshold: 1},
		}}
	f.rootDoc = f.signRoot(f.root, f.rootKeys...)
	return f
}

func pubs(keys ...*cache.SecretKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Public().String())
	}
	return out
}

func (f *trusted) signRoot(r *agentapi.Root, keys ...*cache.SecretKey) []byte {
	data, err := channel.Sign(agentapi.DocRoot, r, keys...)
	if err != nil {
		f.t.Fatal(err)
	}
	return data
}

func (f *trusted) agent(host string) *Agent {
	a := f.fixture.agent(host)
	a.Config.PublisherKeys, a.Config.Root = nil, f.rootDoc
	a.Now = func() time.Time { return f.now }
	return a
}

// stamp writes host's timestamp naming doc (its release), valid for ttl,
// signed by keys (the timestamp key when none).
func (f *trusted) stamp(host string, doc []byte, ttl time.Duration, keys ...*cache.SecretKey) []byte {
	f.t.Helper()
	if len(keys) == 0 {
		keys = []*cache.SecretKey{f.ts}
	}
	f.tsVersion++
	ts := &agentapi.Timestamp{V: 1, Channel: "prod", Host: host, Version: f.tsVersion, Expires: f.now.Add(ttl), Root: f.root.Version}
	if doc != nil {
		rel := &agentapi.Release{}
		channel.OpenThreshold(doc, agentapi.DocRelease, nil, 1, rel)
		h, err := channel.PayloadHash(doc, agentapi.DocRelease)
		if err != nil {
			f.t.Fatal(err)
		}
		ts.Serial, ts.Release = rel.Serial, h
	}
	data, err := channel.Sign(agentapi.DocTimestamp, ts, keys...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.write(channel.TimestampKey(host), data)
	return data
}

// release publishes host's release under the current root and stamps it.
func (f *trusted) release(rel *agentapi.Release, keys ...*cache.SecretKey) []byte {
	rel.RootVersion = f.root.Version
	doc := f.publish(rel, keys...)
	f.stamp(rel.Host, doc, time.Hour)
	return doc
}

func wantRefusal(t *testing.T, st *agentapi.PullStatus, want string) {
	t.Helper()
	if st.Refused == nil || !strings.Contains(st.Refused.Reason, want) {
		t.Fatalf("refusal %+v, want one saying %q", st.Refused, want)
	}
}

// TestTrustFreeze: a channel that keeps serving the last valid timestamp
// (or answers 304 forever) makes its hosts stale once it expires: they
// report it and act on nothing, even on a release signed by the
// publisher; a refreshed timestamp makes them fresh again.
func TestTrustFreeze(t *testing.T) {
	f := newTrusted(t, 1)
	a := f.agent("web1")
	f.poll(a, "no-release")
	v1 := f.system("web1", "v1")
	f.release(&agentapi.Release{Host: "web1", Serial: 1, System: v1})
	f.poll(a, "done")
	f.poll(a, "none")

	// The bucket serves a newer release but the old timestamp, which then
	// expires: nothing is activated, the host says it is stale.
	v2 := f.system("web1", "v2")
	rel2 := &agentapi.Release{Host: "web1", Serial: 2, System: v2, RootVersion: 1}
	doc2 := f.publish(rel2)
	f.now = f.now.Add(2 * time.Hour)
	f.poll(a, "stale")
	st := f.status("web1")
	if !strings.Contains(st.Stale, "timestamp expired") || st.StaleSince.IsZero() {
		t.Fatalf("status %+v: want stale since now", st)
	}
	f.poll(a, "stale")
	if len(f.activated) != 1 {
		t.Fatalf("activated %v while stale", f.activated)
	}
	if prom, err := os.ReadFile(a.layout().MetricsFile()); err != nil || !strings.Contains(string(prom), `deploy_pull_stale{channel="prod"} 1`) ||
		!strings.Contains(string(prom), `deploy_pull_stale_since_timestamp_seconds{channel="prod"}`) {
		t.Fatalf("metrics %v:\n%s\nwant the channel stale", err, prom)
	}

	// A fresh timestamp naming serial 2: activated, no longer stale.
	f.stamp("web1", doc2, time.Hour)
	f.poll(a, "done")
	if st := f.status("web1"); st.Stale != "" || st.Serial != 2 {
		t.Fatalf("status %+v: want fresh at serial 2", st)
	}
	if prom, _ := os.ReadFile(a.layout().MetricsFile()); !strings.Contains(string(prom), `deploy_pull_stale{channel="prod"} 0`) ||
		!strings.Contains(string(prom), `deploy_pull_timestamp_expiry_seconds{channel="prod"}`) {
		t.Fatalf("metrics:\n%s\nwant the channel fresh, with the timestamp's expiry", prom)
	}

	// An expired root is stale too, whatever the timestamp says.
	f.now = f.root.Expires.Add(time.Minute)
	f.stamp("web1", doc2, time.Hour)
	f.poll(a, "stale")
	if st := f.status("web1"); !strings.Contains(st.Stale, "root version 1 expired") {
		t.Fatalf("status %+v: want stale for the root", st)
	}
}

// TestTrustReplayAndMixAndMatch: an older timestamp, a timestamp of
// another host or channel, a timestamp not signed by the timestamp role,
// and a release that is not the one the timestamp names are refused; the
// host keeps what it had.
func TestTrustReplayAndMixAndMatch(t *testing.T) {
	f := newTrusted(t, 1)
	a := f.agent("web1")
	v1 := f.system("web1", "v1")
	doc1 := f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: v1, RootVersion: 1})
	old := f.stamp("web1", doc1, time.Hour)
	f.poll(a, "done")
	f.stamp("web1", doc1, time.Hour)
	f.poll(a, "none")

	// A replayed older timestamp.
	f.write(channel.TimestampKey("web1"), old)
	f.poll(a, "none")
	wantRefusal(t, f.status("web1"), "timestamp refused: serial not above the current one: version")

	// Timestamps of another channel, and not signed by the timestamp key.
	evil, _, _ := cache.GenerateKey("ts-1")
	f.tsVersion += 10
	ts := &agentapi.Timestamp{V: 1, Channel: "staging", Host: "web1", Version: f.tsVersion, Expires: f.now.Add(time.Hour), Root: 1}
	data, _ := channel.Sign(agentapi.DocTimestamp, ts, f.ts)
	f.write(channel.TimestampKey("web1"), data)
	f.poll(a, "none")
	wantRefusal(t, f.status("web1"), `timestamp refused: for another channel: channel "staging"`)
	f.stamp("web1", doc1, time.Hour, evil)
	f.poll(a, "none")
	wantRefusal(t, f.status("web1"), "timestamp refused: not signed by a trusted timestamp key")
	// Another host's release behind this host's timestamp (hash bound).
	v2 := f.system("web1", "v2")
	web2 := f.publish(&agentapi.Release{Host: "web2", Serial: 2, System: f.system("web2", "v1"), RootVersion: 1})
	f.stamp("web1", web2, time.Hour)
	doc := f.publish(&agentapi.Release{Host: "web1", Serial: 2, System: v2, RootVersion: 1})
	f.write(channel.ReleaseKey("web1"), web2)
	f.poll(a, "refused")
	if st := f.status("web1"); st.Refused == nil || !strings.Contains(st.Refused.Reason, "another host") {
		t.Fatalf("status %+v: want the other host's release refused", st)
	}
	// This host's release of serial 2 with a timestamp naming another
	// document of it.
	f.write(channel.ReleaseKey("web1"), doc)
	f.stamp("web1", f.publish(&agentapi.Release{Host: "web1", Serial: 2, System: v2, RootVersion: 1, Message: "other"}), time.Hour)
	f.write(channel.ReleaseKey("web1"), doc)
	f.poll(a, "waiting")
	wantRefusal(t, f.status("web1"), "does not match its timestamp")

	if len(f.activated) != 1 {
		t.Fatalf("activated %v", f.activated)
	}

	// The real timestamp: serial 2 goes.
	f.stamp("web1", doc, time.Hour)
	f.poll(a, "done")
}

// TestTrustThreshold: a channel whose root needs two publisher
// signatures: a release signed by one waits (for approval), never runs;
// the second signature (added to the same payload) lets it go.
func TestTrustThreshold(t *testing.T) {
	f := newTrusted(t, 2)
	a := f.agent("web1")
	v1 := f.system("web1", "v1")
	doc := f.release(&agentapi.Release{Host: "web1", Serial: 1, System: v1})
	f.poll(a, "waiting")
	f.poll(a, "waiting")
	if st := f.status("web1"); st.Outcome != agentapi.PullWaiting || !strings.Contains(st.Message, "waiting for approval: signed by 1 of the 2") {
		t.Fatalf("status %+v", st)
	}
	// Two signatures by the same key are one.
	twice, _ := channel.AddSignatures(doc, agentapi.DocRelease, f.publisher)
	f.write(channel.ReleaseKey("web1"), twice)
	f.poll(a, "waiting")
	if len(f.activated) != 0 {
		t.Fatalf("activated %v below the threshold", f.activated)
	}
	approved, err := channel.AddSignatures(doc, agentapi.DocRelease, f.alice)
	if err != nil {
		t.Fatal(err)
	}
	f.write(channel.ReleaseKey("web1"), approved)
	f.poll(a, "done")
}

// TestTrustRotation: a root version 2 (signed by version 1's root keys)
// revokes publisher key ci-1: a host that reads a timestamp naming root 2
// climbs to it and refuses ci-1's releases from then on. A root version
// not signed by the previous root's threshold is refused.
func TestTrustRotation(t *testing.T) {
	f := newTrusted(t, 1)
	a := f.agent("web1")
	v1 := f.system("web1", "v1")
	f.release(&agentapi.Release{Host: "web1", Serial: 1, System: v1})
	f.poll(a, "done")

	// A forged root 2 (signed by its own new root key only).
	forger, _, _ := cache.GenerateKey("root-3")
	forged := *f.root
	forged.Version = 2
	forged.Roles = map[string]agentapi.Role{
		agentapi.RoleRoot:      {Keys: pubs(forger), Threshold: 1},
		agentapi.RolePublisher: {Keys: pubs(forger), Threshold: 1},
		agentapi.RoleTimestamp: {Keys: pubs(f.ts), Threshold: 1},
	}
	f.write(channel.RootKey(2), f.signRoot(&forged, forger))
	f.root.Version = 2
	f.stamp("web1", f.publish(&agentapi.Release{Host: "web1", Serial: 2, System: f.system("web1", "v2"), RootVersion: 2}, forger), time.Hour)
	f.poll(a, "none")
	wantRefusal(t, f.status("web1"), `root version 2, by the root keys of root version 1: signed by "root-3"`)
	if st := f.status("web1"); st.Root != 1 || len(f.activated) != 1 {
		t.Fatalf("status %+v, activated %v: want root 1 and nothing new", st, f.activated)
	}

	// The real root 2: ci-1 revoked, alice stays.
	r2 := *f.root
	r2.Version = 2
	r2.Roles = map[string]agentapi.Role{
		agentapi.RoleRoot:      f.root.Roles[agentapi.RoleRoot],
		agentapi.RolePublisher: {Keys: pubs(f.alice), Threshold: 1},
		agentapi.RoleTimestamp: f.root.Roles[agentapi.RoleTimestamp],
	}
	f.write(channel.RootKey(2), f.signRoot(&r2, f.rootKeys...))
	f.release(&agentapi.Release{Host: "web1", Serial: 2, System: f.system("web1", "v2")})
	f.poll(a, "refused")
	wantRefusal(t, f.status("web1"), `signed by "ci-1"; trusted: "alice"`)
	if st := f.status("web1"); st.Root != 2 {
		t.Fatalf("status root %d, want 2", st.Root)
	}
	f.release(&agentapi.Release{Host: "web1", Serial: 3, System: f.system("web1", "v3")}, f.alice)
	f.poll(a, "done")
}

// TestTrustFastForward: a leaked publisher key signs a release with a huge
// serial, which the host accepts; every honest release after it is
// refused. A root that revokes the key (and the timestamp key: the host
// climbs to it on the word of a timestamp it cannot verify yet) and
// resets serials brings the host back: the attacker's old releases stay refused, the honest one runs.
func TestTrustFastForward(t *testing.T) {
	f := newTrusted(t, 1)
	a := f.agent("web1")
	f.release(&agentapi.Release{Host: "web1", Serial: 1, System: f.system("web1", "v1")})
	f.poll(a, "done")
	evil := f.release(&agentapi.Release{Host: "web1", Serial: 1 << 62, System: f.system("web1", "evil")})
	f.poll(a, "done")
	honest := f.release(&agentapi.Release{Host: "web1", Serial: 2, System: f.system("web1", "v2")}, f.alice)
	f.poll(a, "refused")
	wantRefusal(t, f.status("web1"), "serial 2, this host is at 4611686018427387904")

	// CI leaked: the timestamp key goes too.
	ts2, _, _ := cache.GenerateKey("ts-2")
	r2 := *f.root
	r2.Version, r2.ResetSerial = 2, true
	r2.Roles = map[string]agentapi.Role{
		agentapi.RoleRoot:      f.root.Roles[agentapi.RoleRoot],
		agentapi.RolePublisher: {Keys: pubs(f.alice), Threshold: 1},
		agentapi.RoleTimestamp: {Keys: pubs(ts2), Threshold: 1},
	}
	f.write(channel.RootKey(2), f.signRoot(&r2, f.rootKeys...))
	f.root.Version, f.ts = 2, ts2
	// The attacker's release again, under the new root's timestamp.
	f.write(channel.ReleaseKey("web1"), evil)
	f.stamp("web1", evil, time.Hour)
	f.poll(a, "refused")
	wantRefusal(t, f.status("web1"), `signed by "ci-1"; trusted: "alice"`)
	// An honest release of the old root, replayed: its serial is above
	// the reset one, but it was signed before the reset.
	f.write(channel.ReleaseKey("web1"), honest)
	f.stamp("web1", honest, time.Hour)
	f.poll(a, "refused")
	wantRefusal(t, f.status("web1"), "signed under root version 1; this host reset its serial at root version 2")
	v3 := f.system("web1", "v3")
	f.release(&agentapi.Release{Host: "web1", Serial: 1, System: v3}, f.alice)
	f.poll(a, "done")
	if got := f.activated[len(f.activated)-1]; got != v3 {
		t.Fatalf("activated %s, want %s", got, v3)
	}
}
