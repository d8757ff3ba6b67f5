package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/pull/channel"
	"github.com/declarative/deploy/secrets"
	"github.com/declarative/deploy/vmtest"
	"github.com/minio/minio-go/v7"
)

// pullEnv is a fleet of vmtest hosts in pull mode: a MinIO on the test
// network holds the cache and the channel "prod"; the hosts report with
// temporary credentials that may write only the channel's status prefix
// (an age secret); the operator holds the cache and publisher keys.
type pullEnv struct {
	tb        testing.TB
	nw        *vmtest.Network
	srv       *miniotest.Server
	fl        *e2e.Fleet
	r         *cli.Runner // with the keys and the bucket's credentials
	publisher *cache.SecretKey
	waves     string // the deployment's canary and batch_size
	// trust replaces the pull block's publisher_keys line when set (a
	// root = file(...) line).
	trust string
}

const pullPrefix = "fleet/channels/prod/"

// newPullEnv starts hosts test hosts and MinIO; the hosts' status
// credentials allow actions (default s3:PutObject and s3:GetObject) on the
// channel's status prefix.
func newPullEnv(tb testing.TB, hosts int, waves string, actions ...string) *pullEnv {
	nw := vmtest.Start(tb, hosts)
	srv := miniotest.Start(tb, miniotest.Options{
		Host: vmtest.ControllerAddr.String(),
		Command: func(name string, args ...string) *exec.Cmd {
			return nw.ControllerCommand(context.Background(), name, args...)
		},
		Dial: nw.DialContext,
	})
	srv.Bucket(tb, "cache", true)
	p := &pullEnv{tb: tb, nw: nw, srv: srv, waves: waves}
	p.fl = e2e.NewFleet(tb, nw)
	p.fl.WriteHosts(tb, "", "")
	dir := tb.TempDir()
	ck, _, _ := cache.GenerateKey("e2e-cache-1")
	p.publisher, _, _ = cache.GenerateKey("e2e-ci-1")
	os.WriteFile(filepath.Join(dir, "cache.key"), []byte(ck.String()), 0o600)
	os.WriteFile(filepath.Join(dir, "publisher.key"), []byte(p.publisher.String()), 0o600)
	p.r = cli.New(tb, nw, p.fl).With(append(srv.Env(), "DEPLOY_CACHE_KEY="+filepath.Join(dir, "cache.key"), "DEPLOY_PUBLISHER_KEY="+filepath.Join(dir, "publisher.key"))...)

	creds := srv.PrefixCredentials(tb, "cache", pullPrefix+"status/", actions...)
	var rcpts []secrets.Recipient
	for _, h := range nw.Hosts {
		rcpts = append(rcpts, secrets.Recipient{Owner: h.Name(), Key: h.HostKeyLine()})
	}
	ct, err := secrets.Encrypt(fmt.Appendf(nil, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n",
		creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken), rcpts)
	if err != nil {
		tb.Fatal(err)
	}
	p.fl.Write(tb, "secrets/pull-status.age", string(ct))
	p.fl.Write(tb, "cache.hcl", fmt.Sprintf(`cache {
  url         = "s3://cache/fleet?endpoint=%s&region=us-east-1"
  public_keys = [%q]
}
`, srv.Endpoint, ck.Public().String()))
	return p
}

// write writes the fleet's version: an app file, and a health check that
// passes only when healthy.
func (p *pullEnv) write(version string, healthy bool) {
	health := "ok"
	if !healthy {
		health = "broken"
	}
	p.fl.Write(p.tb, "fleet.hcl", fmt.Sprintf(`deployment "prod" {
  hosts        = [%s]
  %s
  wave_timeout = "10m"
}

role "app" {
  secret "pull-status" {
    source = "secrets/pull-status.age"
  }
  pull {
    channel            = "prod"
    interval           = "2s"
    jitter             = "0s"
    %s
    status_credentials = secret.pull-status.path
  }
  file "/etc/app/version" {
    content = "%s\n"
  }
  file "/etc/app/health" {
    content = "%s\n"
  }
  health_check "app" {
    command  = ["sh", "-c", "grep -qx ok /etc/app/health"]
    timeout  = "2s"
    interval = "200ms"
  }
}

defaults {
  roles = [role.app]
}
`, p.fl.Names(), p.waves, p.trustLine(), version, health))
}

func (p *pullEnv) trustLine() string {
	if p.trust != "" {
		return p.trust
	}
	return fmt.Sprintf("publisher_keys     = [%q]", p.publisher.Public().String())
}

// object reads a key of the bucket; nil when missing.
func (p *pullEnv) object(key string) []byte {
	o, err := p.srv.Client.GetObject(context.Background(), "cache", key, minio.GetObjectOptions{})
	if err != nil {
		p.tb.Fatal(err)
	}
	defer o.Close()
	data, err := io.ReadAll(o)
	if err != nil {
		return nil
	}
	return data
}

func (p *pullEnv) put(key string, data []byte) {
	if _, err := p.srv.Client.PutObject(context.Background(), "cache", key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		p.tb.Fatal(err)
	}
}

// status reads host's status, verified with its host key; nil when it
// has none, or none that its key signed.
func (p *pullEnv) status(host string) *agentapi.PullStatus {
	data := p.object(pullPrefix + channel.StatusKey(host))
	if data == nil {
		return nil
	}
	st, err := channel.VerifyStatus(data, "prod", host, p.host(host).HostKeyLine())
	if err != nil {
		return nil
	}
	return st
}

// waitStatus polls host's status until ok holds. The limit only keeps a
// broken build from hanging the suite; nothing is measured by it.
func (p *pullEnv) waitStatus(host, what string, ok func(*agentapi.PullStatus) bool) *agentapi.PullStatus {
	p.tb.Helper()
	limit := time.Now().Add(5 * time.Minute)
	for {
		st := p.status(host)
		if st != nil && ok(st) {
			return st
		}
		if time.Now().After(limit) {
			h := p.host(host)
			p.tb.Fatalf("%s: no status with %s; last %+v\n%s", host, what, st, h.Succeed("journalctl -u deploy-pull.service --no-pager | tail -40"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (p *pullEnv) host(name string) *vmtest.Host {
	for _, h := range p.nw.Hosts {
		if h.Name() == name {
			return h
		}
	}
	p.tb.Fatalf("no host %s", name)
	return nil
}

func (p *pullEnv) generations(h *vmtest.Host) []*agentapi.Generation {
	p.tb.Helper()
	gens, err := agentapi.DecodeGenerations([]byte(h.Succeed("/run/deploy/current-system/agent/bin/deploy-agent generations --json")))
	if err != nil {
		p.tb.Fatal(err)
	}
	return gens
}

func (p *pullEnv) head() *agentapi.ChannelRelease {
	cr := &agentapi.ChannelRelease{}
	if _, err := channel.Open(p.object(pullPrefix+channel.HeadKey), agentapi.DocChannel, []*cache.PublicKey{p.publisher.Public()}, cr); err != nil {
		p.tb.Fatal(err)
	}
	return cr
}

func done(serial int64) func(*agentapi.PullStatus) bool {
	return func(st *agentapi.PullStatus) bool { return st.Serial == serial && st.Outcome == agentapi.PullDone }
}

// TestPullE2E is pull mode on four hosts (waves: the canary h1, then h2
// and h3, then h4) with a MinIO holding the cache and the channel:
//
//  1. v1 is published; every host fetches, activates and reports it,
//     and publish --wait exits 0.
//  2. v2's health check fails: the canary rolls back by itself and
//     reports the check, the later waves halt without changing anything,
//     deploy status --channel shows it, publish --wait exits 3.
//  3. v3 (fixed) converges in wave order.
//  4. h2 refuses a replay of its v1 release, a release signed by an
//     unknown key, h3's release, and a tampered closure: each reported,
//     nothing activated.
//  5. h4 is off while v5 and v6 are published; booted, it goes to v6
//     directly. publish --wait for it, meanwhile, ends at its deadline
//     with exit 4.
//  6. deploy rollback --channel publishes v5's systems as a new serial.
func TestPullE2E(t *testing.T) {
	t.Parallel()
	p := newPullEnv(t, 4, `canary       = 1
  batch_size   = "50%"`)
	target := p.fl.Target("prod")

	// 0. The hosts join pull mode by one push deploy (or an image).
	p.write("v0", true)
	p.r.Text(t, "", target).Want(t, 0)
	for _, h := range p.nw.Hosts {
		h.WaitForUnit("deploy-pull.timer")
	}

	// 1. v1: everyone converges.
	p.write("v1", true)
	p.fl.Commit(t, "v1")
	res := p.r.Run(t, "publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", target).Want(t, 0)
	for _, h := range p.nw.Hosts {
		if r := res.Results()[h.Name()]; r.Result != fleet.ResultOK || r.Serial != 1 || r.PullStatus == nil || r.PullStatus.Outcome != agentapi.PullDone {
			t.Errorf("%s: %+v", h.Name(), r)
		}
		if got := h.Succeed("cat /etc/app/version"); got != "v1\n" {
			t.Errorf("%s runs %q, want v1", h.Name(), got)
		}
		gens := p.generations(h)
		if last := gens[len(gens)-1]; !last.Current || last.Meta["serial"] != "1" || last.Meta["channel"] != "prod" || last.GitRev == "" {
			t.Errorf("%s: generation %+v, want the current one from serial 1 with its commit", h.Name(), last)
		}
	}
	v1h2 := p.object(pullPrefix + channel.ReleaseKey("h2"))
	before := map[string]string{}
	for _, h := range p.nw.Hosts {
		before[h.Name()] = h.Succeed("readlink /run/deploy/current-system")
	}

	// 2. v2 fails its health check on the canary.
	p.write("v2", false)
	r := p.r.Run(t, "publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", target).Want(t, ExitRolledBack).Results()
	if r["h1"].Result != fleet.ResultRolledBack || r["h1"].PullStatus == nil || r["h1"].PullStatus.Check != "app" {
		t.Errorf("h1: %+v, want rolled back by the health check \"app\"", r["h1"])
	}
	for _, h := range p.nw.Hosts {
		if got := h.Succeed("readlink /run/deploy/current-system"); got != before[h.Name()] {
			t.Errorf("%s runs %s after v2, want %s", h.Name(), got, before[h.Name()])
		}
		if got := h.Succeed("cat /etc/app/version"); got != "v1\n" {
			t.Errorf("%s has version %q after v2, want v1", h.Name(), got)
		}
		if h.Name() != "h1" && (r[h.Name()].Result != fleet.ResultSkipped || !strings.Contains(r[h.Name()].Error, "halted")) {
			t.Errorf("%s: %+v, want skipped (halted)", h.Name(), r[h.Name()])
		}
	}
	if st := p.waitStatus("h1", "serial 2 rolled back", func(st *agentapi.PullStatus) bool {
		return st.Serial == 2 && st.Outcome == agentapi.PullRolledBack
	}); st.Check != "app" || !strings.Contains(st.Message, "rolled back") {
		t.Errorf("h1's status %+v", st)
	}
	for _, h := range []string{"h2", "h3", "h4"} {
		st := p.waitStatus(h, "serial 2 halted", func(st *agentapi.PullStatus) bool { return st.Serial == 2 && st.Outcome == agentapi.PullHalted })
		if !strings.Contains(st.Message, "h1 (rolled-back") && !strings.Contains(st.Message, "halted") {
			t.Errorf("%s's status %+v does not say why", h, st)
		}
	}
	out := p.r.Run(t, "status", "--channel", "prod", target).Want(t, 0).Stdout
	if pullDebug {
		t.Logf("deploy status --channel prod:\n%s", out)
	}
	for _, want := range []string{"channel prod: serial 2", "h1", "rolled-back", "app", "halted"} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy status --channel lacks %q:\n%s", want, out)
		}
	}

	// 3. v3 converges, wave after wave.
	p.write("v3", true)
	p.r.Run(t, "publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", target).Want(t, 0)
	head := p.head()
	var confirmedBy []time.Time // per wave: when its last host was confirmed
	var startedAt [][]time.Time
	for _, wave := range head.Waves {
		var last time.Time
		var starts []time.Time
		for _, name := range wave {
			h := p.host(name)
			if got := h.Succeed("cat /etc/app/version"); got != "v3\n" {
				t.Errorf("%s has %q after v3", name, got)
			}
			gens := p.generations(h)
			g := gens[len(gens)-1]
			if g.Meta["serial"] != "3" || g.Confirmed.IsZero() {
				t.Fatalf("%s: generation %+v, want serial 3 confirmed", name, g)
			}
			starts = append(starts, g.Time)
			if g.Confirmed.After(last) {
				last = g.Confirmed
			}
		}
		confirmedBy = append(confirmedBy, last)
		startedAt = append(startedAt, starts)
	}
	for i := 1; i < len(head.Waves); i++ {
		for j, start := range startedAt[i] {
			if start.Before(confirmedBy[i-1]) {
				t.Errorf("wave %d's %s started at %s, before wave %d was confirmed (%s)", i+1, head.Waves[i][j], start, i, confirmedBy[i-1])
			}
		}
	}
	for i, c := range confirmedBy {
		t.Logf("v3: wave %d %v converged %v after the publish", i+1, head.Waves[i], c.Sub(head.Published).Round(10*time.Millisecond))
	}

	// 4. What h2 refuses.
	h2 := p.host("h2")
	cur, ngen := h2.Succeed("readlink /run/deploy/current-system"), len(p.generations(h2))
	stranger, _, _ := cache.GenerateKey("stranger-1")
	forged := &agentapi.Release{V: agentapi.Version, Channel: "prod", Host: "h2", Serial: 99, System: head.Systems["h1"], Published: time.Now().UTC(), Wave: 1, Waves: 1}
	forgedDoc, _ := channel.Sign(agentapi.DocRelease, forged, stranger)
	for _, tt := range []struct {
		name, reason string
		doc          []byte
	}{
		{"a replay of serial 1", "serial not above the current one", v1h2},
		{"a release signed by an unknown key", `not signed by a trusted publisher key: signed by "stranger-1"`, forgedDoc},
		{"h3's release", `for another host: host "h3", this is "h2"`, p.object(pullPrefix + channel.ReleaseKey("h3"))},
	} {
		at := time.Now().UTC().Add(-time.Second)
		p.put(pullPrefix+channel.ReleaseKey("h2"), tt.doc)
		st := p.waitStatus("h2", "a refusal: "+tt.name, func(st *agentapi.PullStatus) bool {
			return st.Refused != nil && st.Refused.Time.After(at) && strings.Contains(st.Refused.Reason, tt.reason)
		})
		if st.Serial != 3 || st.Outcome != agentapi.PullDone {
			t.Errorf("%s: h2's status %+v: the refusal changed its release", tt.name, st)
		}
		if got, n := h2.Succeed("readlink /run/deploy/current-system"), len(p.generations(h2)); got != cur || n != ngen {
			t.Errorf("%s: h2 runs %s with %d generations, want %s with %d", tt.name, got, n, cur, ngen)
		}
	}
	// A tampered closure: the new version's NARs are flipped in the
	// bucket before it is released to h2.
	p.write("v4", true)
	old := map[string]bool{}
	for obj := range p.srv.Client.ListObjects(context.Background(), "cache", minio.ListObjectsOptions{Prefix: "fleet/nar/", Recursive: true}) {
		old[obj.Key] = true
	}
	p.r.Run(t, "cache", "push", p.fl.Target("h2")).Want(t, 0)
	tampered := 0
	for obj := range p.srv.Client.ListObjects(context.Background(), "cache", minio.ListObjectsOptions{Prefix: "fleet/nar/", Recursive: true}) {
		if old[obj.Key] {
			continue
		}
		data := p.object(obj.Key)
		data[len(data)/2] ^= 0x55
		p.put(obj.Key, data)
		tampered++
	}
	if tampered == 0 {
		t.Fatal("the push uploaded no new NAR to tamper with")
	}
	res = p.r.Run(t, "publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", p.fl.Target("h2"))
	if code, stderr, r := res.Code, res.Stderr, res.Results()["h2"]; code != ExitRefused || r.Result != fleet.ResultRefused || !strings.Contains(r.Error, "closure refused") {
		t.Fatalf("publish v4 to h2 --wait: exit %d (want %d), %+v\n%s", code, ExitRefused, r, stderr)
	}
	st := p.status("h2")
	if st.Serial != 4 || st.Outcome != agentapi.PullRefused || !strings.Contains(st.Message, "closure refused") {
		t.Errorf("h2's status %+v", st)
	}
	if got, n := h2.Succeed("readlink /run/deploy/current-system"), len(p.generations(h2)); got != cur || n != ngen {
		t.Errorf("tampered closure: h2 runs %s with %d generations, want %s with %d", got, n, cur, ngen)
	}
	h2.Succeed("/run/deploy/current-system/agent/bin/deploy-agent verify")

	// 5. h4 is off for two releases, then comes back.
	h4 := p.host("h4")
	h4.Crash()
	var v5 string
	for _, v := range []string{"v5", "v6"} {
		p.write(v, true)
		p.r.Run(t, "publish", "--channel", "prod", target).Want(t, 0)
		serial := p.head().Serial
		if v == "v5" {
			v5 = p.head().Systems["h4"]
		}
		for _, h := range []string{"h1", "h2", "h3"} {
			p.waitStatus(h, fmt.Sprintf("serial %d done", serial), done(serial))
		}
	}
	// Waiting for a host that is off ends at its wave's deadline, naming it.
	res = p.r.Run(t, "publish", "--json", "--wait", "--poll", "500ms", "--wave-timeout", "3s", "--channel", "prod", p.fl.Target("h4"))
	if code, stderr, r := res.Code, res.Stderr, res.Results()["h4"]; code != ExitUnreachable || r.Result != fleet.ResultUnreachable || !strings.Contains(r.Error, "did not report serial") {
		t.Fatalf("publish --wait to h4, which is off: exit %d (want %d), %+v\n%s", code, ExitUnreachable, r, stderr)
	}
	h4.Boot()
	last := p.head()
	p.waitStatus("h4", fmt.Sprintf("serial %d done", last.Serial), done(last.Serial))
	if got := h4.Succeed("cat /etc/app/version"); got != "v6\n" {
		t.Errorf("h4 has %q, want v6", got)
	}
	for _, g := range p.generations(h4) {
		if g.System == v5 {
			t.Errorf("h4 activated v5 (generation %d) on its way to v6", g.Number)
		}
	}
	if !slices.ContainsFunc(p.generations(h4), func(g *agentapi.Generation) bool { return g.Current && g.System == last.Systems["h4"] }) {
		t.Errorf("h4 does not run v6's system")
	}

	// 6. A rollback through the channel: v5's systems again, as a new serial.
	p.r.Run(t, "rollback", "--json", "--channel", "prod", "--to-serial", "5", "--wait", target).Want(t, 0)
	if rb := p.head(); rb.RollbackTo != 5 || rb.Serial != last.Serial+1 {
		t.Errorf("the rollback's head: serial %d rolling back to %d, want %d and 5", rb.Serial, rb.RollbackTo, last.Serial+1)
	}
	for _, h := range p.nw.Hosts {
		if got := h.Succeed("cat /etc/app/version"); got != "v5\n" {
			t.Errorf("%s has %q after the rollback to serial 5, want v5", h.Name(), got)
		}
	}
	if pullDebug {
		for _, h := range []string{"h1", "h2", "h4"} {
			t.Logf("%s:\n%s", h, p.host(h).Succeed("journalctl -u deploy-pull.service --no-pager | grep -v 'pull prod: none' | tail -60"))
		}
	}
}

// TestPullForgedStatusE2E plays someone who can write the channel's
// status prefix (the hosts' status credentials leaked) but holds no host's
// key, on two hosts in two waves (h1, then h2):
//
//  1. h1 does not poll; a status claiming h1 is done with the release,
//     unsigned and then signed by another key, is put into the bucket, as
//     h1's status document and as its entry in wave 1's report: h2 keeps
//     waiting, saying why, and deploy status --channel shows the status as
//     unverified.
//  2. a forged "failed" for h1 does not halt h2 either; once h1 polls,
//     activates and reports (signed with its host key, replacing the
//     forged entry of the wave's report), h2 goes.
//
// The hosts' status credentials may only write (as before wave reports):
// h1 reads its wave's report as it reads the channel, and h2 goes on h1's
// report, not at the wave's deadline (30 minutes).
func TestPullForgedStatusE2E(t *testing.T) {
	t.Parallel()
	p := newPullEnv(t, 2, `canary       = 1
  batch_size   = "100%"`, "s3:PutObject")
	target := p.fl.Target("prod")
	h1, h2 := p.host("h1"), p.host("h2")
	p.write("v0", true)
	p.r.Text(t, "", target).Want(t, 0)
	for _, h := range p.nw.Hosts {
		h.WaitForUnit("deploy-pull.timer")
	}
	// h1 stops polling: it will report only when the test lets it.
	h1.Succeed("systemctl stop deploy-pull.timer && while systemctl is-active -q deploy-pull.service; do sleep 0.1; done")

	p.write("v1", true)
	p.r.Run(t, "publish", "--channel", "prod", target).Want(t, 0)
	head := p.head()
	if !slices.Equal(head.Waves[0], []string{"h1"}) {
		t.Fatalf("waves %v, want h1 first", head.Waves)
	}
	p.waitStatus("h2", "waiting for h1", func(st *agentapi.PullStatus) bool {
		return st.Serial == head.Serial && st.Outcome == agentapi.PullWaiting
	})

	now := time.Now().UTC()
	claim := func(o agentapi.PullOutcome) *agentapi.PullStatus {
		return &agentapi.PullStatus{V: agentapi.Version, Host: "h1", Channel: "prod", Serial: head.Serial, System: head.Systems["h1"],
			Wave: 1, Outcome: o, Generation: 9, Time: now, OutcomeTime: now, Check: "app", Message: "forged"}
	}
	_, evil, _ := ed25519.GenerateKey(rand.Reader)
	unsignedDone, _ := json.Marshal(claim(agentapi.PullDone))
	evilDone, _ := channel.SignStatus(claim(agentapi.PullDone), evil)
	strippedFailed := func() []byte {
		var doc agentapi.SignedDocument
		data, _ := channel.SignStatus(claim(agentapi.PullFailed), evil)
		json.Unmarshal(data, &doc)
		doc.Signatures = nil
		data, _ = json.Marshal(doc)
		return data
	}()
	// forge puts doc where h1's status goes: its status document and its
	// entry in wave 1's report, which the gate of h2 reads.
	forge := func(doc []byte) {
		p.put(pullPrefix+channel.StatusKey("h1"), doc)
		wr, _ := json.Marshal(&agentapi.WaveReport{V: agentapi.Version, Channel: "prod", Serial: head.Serial, Wave: 1,
			Reports: map[string]json.RawMessage{"h1": doc}})
		p.put(pullPrefix+channel.WaveReportKey(head.Serial, head.RootVersion, 1), wr)
	}
	for _, tt := range []struct {
		name, detail string
		doc          []byte
	}{
		{"an unsigned done", "bytes that are not a signed document", unsignedDone},
		{"a done signed by another key", "signed by another key", evilDone},
	} {
		forge(tt.doc)
		st := p.waitStatus("h2", "waiting, saying h1's status is not signed", func(st *agentapi.PullStatus) bool {
			return st.Serial == head.Serial && (st.Outcome.Final() ||
				strings.Contains(st.Message, "status of h1 not signed by its host key") && strings.Contains(st.Message, tt.detail))
		})
		if st.Outcome != agentapi.PullWaiting {
			t.Fatalf("%s: h2's status %+v, want waiting", tt.name, st)
		}
		if got := h2.Succeed("cat /etc/app/version"); got != "v0\n" {
			t.Fatalf("%s: h2 runs %q, want v0: a forged status opened the gate", tt.name, got)
		}
	}
	out := p.r.Run(t, "status", "--channel", "prod", target).Want(t, 0).Stdout
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "h1 ") {
			line = l
		}
	}
	if !strings.Contains(line, "unverified") || !strings.Contains(line, "status of h1 not signed by its host key") || strings.Contains(line, "done") || strings.Contains(line, "forged") {
		t.Errorf("deploy status --channel shows h1 as %q, want unverified:\n%s", line, out)
	}

	// 2. A forged failure: h2 does not halt; h1's own report decides.
	forge(strippedFailed)
	if st := p.waitStatus("h2", "a verdict on h1's forged failure", func(st *agentapi.PullStatus) bool {
		return st.Serial == head.Serial && (st.Outcome.Final() || strings.Contains(st.Message, "status of h1 not signed by its host key (unsigned)"))
	}); st.Outcome != agentapi.PullWaiting {
		t.Fatalf("h2's status %+v after a forged failure of h1, want waiting", st)
	}
	h1.Succeed("systemctl start deploy-pull.timer")
	p.waitStatus("h1", "serial done", done(head.Serial))
	st := p.waitStatus("h2", "serial done", func(st *agentapi.PullStatus) bool {
		return st.Serial == head.Serial && st.Outcome.Final()
	})
	if st.Outcome != agentapi.PullDone {
		t.Fatalf("h2's status %+v, want done after h1's own report", st)
	}
	for _, h := range p.nw.Hosts {
		if got := h.Succeed("cat /etc/app/version"); got != "v1\n" {
			t.Errorf("%s runs %q, want v1", h.Name(), got)
		}
	}
	if pullDebug {
		t.Logf("h2:\n%s", h2.Succeed("journalctl -u deploy-pull.service --no-pager | grep -v 'pull prod: none' | tail -40"))
	}
}

func init() { pullDebug = os.Getenv("PULL_DEBUG") != "" }

var pullDebug bool
