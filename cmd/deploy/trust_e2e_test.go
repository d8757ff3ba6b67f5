package main

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/pull/channel"
)

// TestTrustE2E is a channel with a root of trust, on a vmtest host with
// the real agent and a MinIO, driven through the CLI as an operator and as
// an attacker who can write the bucket and holds CI's keys:
//
//  1. deploy trust init: root key r1, publishers e2e-ci-1 and alice (two
//     must sign), timestamp key ts-1. A release signed by CI alone is not
//     acted on (the host waits for approval); deploy approve with alice's
//     key lets it go.
//  2. Freeze: nothing refreshes the host's timestamp and it expires: the
//     host reports stale, deploy status --channel shows it; a replay of an
//     older timestamp is refused; publish --refresh makes it fresh.
//  3. deploy trust rotate lowers the publisher threshold to 1: the host
//     climbs to root version 2 with no SSH, and runs what CI alone signs.
//     Mix-and-match: serial 1's release served where the timestamp names
//     serial 3 is refused.
//  4. Fast-forward: the attacker publishes with serial 2^63-1, which the
//     host runs; every honest publish is refused. deploy trust rotate
//     --remove e2e-ci-1 --remove ts-1 --reset-serial (new timestamp key)
//     brings the host back: it climbs to root 3, resets its serial and runs
//     alice's release; the attacker's release and timestamp, served again,
//     are refused, and so is a release signed by the revoked key even with
//     a valid timestamp naming it.
func TestTrustE2E(t *testing.T) {
	t.Parallel()
	p := newPullEnv(t, 1, "canary = 1")
	target := p.fl.Target("prod")
	h := p.nw.Hosts[0]
	name := h.Name()
	dir := t.TempDir()
	key := func(n string) (file, pub string) {
		sk, pk, err := cache.GenerateKey(n)
		if err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(dir, n+".key")
		if err := os.WriteFile(file, []byte(sk.String()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return file, pk.String()
	}
	r1, r1Pub := key("r1")
	alice, alicePub := key("alice")
	ts1, ts1Pub := key("ts-1")
	ts2, ts2Pub := key("ts-2")
	ts1Key, ts2Key := ts1, ts2
	r := p.r.With("DEPLOY_TIMESTAMP_KEY=" + ts1)
	version := func() string { return strings.TrimSpace(h.Succeed("cat /etc/app/version")) }

	// 1. A root that needs two publisher signatures.
	r.Run(t, "trust", "init", p.fl.Dir, "--channel", "prod", "--root", r1Pub, "--publisher", p.publisher.Public().String(),
		"--publisher", alicePub, "--publisher-threshold", "2", "--timestamp", ts1Pub, "--sign", r1).Want(t, 0)
	p.trust = `root = file("trust/prod/root.json")`
	p.write("v0", true)
	r.Text(t, "", target).Want(t, 0)
	h.WaitForUnit("deploy-pull.timer")
	p.write("v1", true)
	p.fl.Commit(t, "v1")
	r.Run(t, "publish", "--channel", "prod", target).Want(t, 0)
	p.waitStatus(name, "serial 1 waiting for approval", func(st *agentapi.PullStatus) bool {
		return st.Serial == 1 && st.Outcome == agentapi.PullWaiting && strings.Contains(st.Message, "waiting for approval: signed by 1 of the 2")
	})
	if v := version(); v != "v0" {
		t.Fatalf("the host runs %s with one of two signatures, want v0", v)
	}
	out := r.Run(t, "approve", "--channel", "prod", "--publisher-key", alice, target).Want(t, 0)
	if !strings.Contains(out.Stdout+out.Stderr, name) {
		t.Errorf("approve does not name the host:\n%s%s", out.Stdout, out.Stderr)
	}
	p.waitStatus(name, "serial 1 done", done(1))
	v1Release := p.object(pullPrefix + channel.ReleaseKey(name))
	if v := version(); v != "v1" {
		t.Fatalf("the host runs %s after the approval, want v1", v)
	}

	// 2. Freeze: a timestamp valid 5s, then nothing. The host goes stale.
	tsKey := pullPrefix + channel.TimestampKey(name)
	r.Run(t, "publish", "--refresh", "--timestamp-expiry", "5s", "--channel", "prod", target).Want(t, 0)
	old := p.object(tsKey)
	st := p.waitStatus(name, "stale", func(st *agentapi.PullStatus) bool { return st.Stale != "" })
	if !strings.Contains(st.Stale, "timestamp expired") || st.Serial != 1 {
		t.Errorf("stale status %+v", st)
	}
	out = r.Run(t, "status", "--channel", "prod", target).Want(t, 0)
	if !strings.Contains(out.Stdout, "stale") || !strings.Contains(out.Stdout, "timestamp expired") {
		t.Errorf("deploy status --channel does not show the stale host:\n%s", out.Stdout)
	}
	r.Run(t, "publish", "--refresh", "--channel", "prod", target).Want(t, 0)
	p.waitStatus(name, "fresh again", func(st *agentapi.PullStatus) bool { return st.Stale == "" })
	p.put(tsKey, old)
	st = p.waitStatus(name, "the replayed timestamp refused", func(st *agentapi.PullStatus) bool {
		return st.Refused != nil && strings.Contains(st.Refused.Reason, "a replay of an older timestamp")
	})
	if st.Stale != "" {
		t.Errorf("a replayed timestamp made the host stale: %+v", st)
	}

	// 3. Rotation reaches the host through the channel.
	r.Run(t, "trust", "rotate", p.fl.Dir, "--channel", "prod", "--publisher-threshold", "1", "--sign", r1).Want(t, 0)
	p.write("v2", true)
	r.Run(t, "publish", "--channel", "prod", target).Want(t, 0)
	st = p.waitStatus(name, "serial 2 done", done(2))
	if st.Root != 2 || version() != "v2" {
		t.Fatalf("status %+v, version %s: want root 2 and v2", st, version())
	}

	// Mix-and-match: a valid timestamp names a new release (serial 3,
	// here signed by CI's own keys), and the bucket serves serial 1's
	// release, validly signed, in its place: refused, nothing changes;
	// the release it names goes.
	doc3, err := channel.Sign(agentapi.DocRelease, &agentapi.Release{V: agentapi.Version, Channel: "prod", Host: name, Serial: 3,
		System: st.System, Published: time.Now().UTC(), Wave: 1, Waves: 1, RootVersion: 2}, p.publisher)
	if err != nil {
		t.Fatal(err)
	}
	p.put(pullPrefix+channel.ReleaseKey(name), v1Release)
	p.put(tsKey, stamp(t, ts1Key, name, doc3, 2))
	p.waitStatus(name, "the mixed release refused", func(st *agentapi.PullStatus) bool {
		return st.Refused != nil && strings.Contains(st.Refused.Reason, "does not match its timestamp")
	})
	if v := version(); v != "v2" {
		t.Fatalf("the host runs %s after a mixed release, want v2", v)
	}
	p.put(pullPrefix+channel.ReleaseKey(name), doc3)
	p.waitStatus(name, "serial 3 done", done(3))

	// 4. Fast-forward by an attacker with CI's keys.
	p.write("evil", true)
	r.Run(t, "publish", "--serial", strconv.FormatInt(math.MaxInt64, 10), "--channel", "prod", target).Want(t, 0)
	p.waitStatus(name, "the huge serial done", done(math.MaxInt64))
	evilRelease, evilStamp := p.object(pullPrefix+channel.ReleaseKey(name)), p.object(tsKey)
	p.write("v3", true)
	out = r.Run(t, "publish", "--channel", "prod", target).Want(t, ExitConfig)
	if !strings.Contains(out.Stderr, "highest serial") || !strings.Contains(out.Stderr, "--reset-serial") {
		t.Errorf("publish at the highest serial says:\n%s", out.Stderr)
	}
	r.Run(t, "trust", "rotate", p.fl.Dir, "--channel", "prod", "--remove", "e2e-ci-1", "--remove", "ts-1",
		"--timestamp", ts2Pub, "--reset-serial", "--sign", r1).Want(t, 0)
	r2 := p.r.With("DEPLOY_TIMESTAMP_KEY="+ts2, "DEPLOY_PUBLISHER_KEY="+alice)
	r2.Run(t, "publish", "--channel", "prod", target).Want(t, 0)
	st = p.waitStatus(name, "serial 1 under root 3", func(st *agentapi.PullStatus) bool {
		return st.Serial == 1 && st.Root == 3 && st.Outcome == agentapi.PullDone
	})
	if v := version(); v != "v3" {
		t.Fatalf("the host runs %s after the recovery, want v3 (status %+v)", v, st)
	}
	p.put(pullPrefix+channel.ReleaseKey(name), evilRelease)
	p.put(tsKey, evilStamp)
	p.waitStatus(name, "the attacker's release refused", func(st *agentapi.PullStatus) bool {
		return st.Refused != nil && strings.Contains(st.Refused.Reason, `timestamp refused: not signed by a trusted timestamp key: signed by "ts-1"`)
	})
	if v := version(); v != "v3" {
		t.Fatalf("the host runs %s after the replay, want v3", v)
	}

	// The revoked publisher key signs a new release, and (as if the
	// timestamp key had leaked too) a valid timestamp names it: refused
	// for its signature, never run.
	evil := &agentapi.Release{V: agentapi.Version, Channel: "prod", Host: name, Serial: 2, System: st.System, Published: time.Now().UTC(),
		Wave: 1, Waves: 1, RootVersion: 3}
	doc, err := channel.Sign(agentapi.DocRelease, evil, p.publisher)
	if err != nil {
		t.Fatal(err)
	}
	p.put(pullPrefix+channel.ReleaseKey(name), doc)
	p.put(tsKey, stamp(t, ts2Key, name, doc, 3))
	p.waitStatus(name, "the revoked key's release refused", func(st *agentapi.PullStatus) bool {
		return st.Refused != nil && strings.Contains(st.Refused.Reason, `release refused: not signed by a trusted publisher key: signed by "e2e-ci-1"; trusted: "alice"`)
	})
	if g := p.generations(h); g[len(g)-1].Meta["serial"] != "1" || version() != "v3" {
		t.Fatalf("the host runs %s (generation %+v) after the revoked key's release, want v3 from serial 1", version(), g[len(g)-1])
	}
}

// stamp signs host's timestamp naming release doc under root version
// root with the timestamp key in file, as the holder of that key would.
func stamp(t *testing.T, file, host string, doc []byte, root int64) []byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	k, err := cache.ParseSecretKey(string(data))
	if err != nil {
		t.Fatal(err)
	}
	rel := &agentapi.Release{}
	if _, err := channel.OpenThreshold(doc, agentapi.DocRelease, nil, 1, rel); rel.Serial == 0 {
		t.Fatalf("not a release: %v", err)
	}
	h, err := channel.PayloadHash(doc, agentapi.DocRelease)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	ts := &agentapi.Timestamp{V: agentapi.Version, Channel: "prod", Host: host, Version: now.UnixMilli(), Expires: now.Add(time.Hour),
		Root: root, Serial: rel.Serial, Release: h}
	out, err := channel.Sign(agentapi.DocTimestamp, ts, k)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
