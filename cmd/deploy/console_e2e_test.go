package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/internal/chromiumtest"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/pull/channel"
	"github.com/declarative/deploy/vmtest"
	"github.com/minio/minio-go/v7"
	"golang.org/x/crypto/ssh"
)

// consoleFleet is a fleet of hosts in pull mode whose cache and channel
// "prod" live in a real MinIO on loopback (a public-read bucket, as
// hosts read it). The operator's side is the real CLI (runMain: deploy
// publish, deploy console publish). The hosts are not machines: each is
// an ed25519 key standing in for its SSH host key (the fleet pins its
// public half as host_key), and reports as deploy-agent pull does, with
// the same code: channel.VerifyRelease, channel.Gate, channel.SignStatus,
// PutStatus and AddToWave (the wave's entries and its gatherers' report),
// through channel.OpenWriter with temporary credentials that may write
// only the status prefix.
type consoleFleet struct {
	tb       testing.TB
	srv      *miniotest.Server
	dir      string
	names    []string
	hostKeys map[string]ed25519.PrivateKey
	env      map[string]string
	agent    string
	cacheDir string
	pub      *cache.SecretKey
	hosts    channel.Writer // the hosts' view of the channel
	canary   int
	batch    string
	// trust replaces the pull block's publisher_keys line when set.
	trust string
}

const consolePrefix = "fleet/channels/prod/"

func newConsoleFleet(tb testing.TB, names []string, canary int, batch string) *consoleFleet {
	chromiumtest.Binary(tb)
	srv := miniotest.Start(tb, miniotest.Options{})
	srv.Bucket(tb, "cache", true)
	f := &consoleFleet{tb: tb, srv: srv, dir: tb.TempDir(), names: names, hostKeys: map[string]ed25519.PrivateKey{},
		env: map[string]string{}, cacheDir: tb.TempDir(), canary: canary, batch: batch}
	keys := tb.TempDir()
	ck, _, _ := cache.GenerateKey("console-cache-1")
	f.pub, _, _ = cache.GenerateKey("console-ci-1")
	os.WriteFile(filepath.Join(keys, "cache.key"), []byte(ck.String()), 0o600)
	os.WriteFile(filepath.Join(keys, "publisher.key"), []byte(f.pub.String()), 0o600)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		f.env[k] = v
	}
	f.env["DEPLOY_CACHE_KEY"] = filepath.Join(keys, "cache.key")
	f.env["DEPLOY_PUBLISHER_KEY"] = filepath.Join(keys, "publisher.key")
	f.env["XDG_CACHE_HOME"] = f.cacheDir
	f.agent = filepath.Join(keys, "deploy-agent")
	os.WriteFile(f.agent, []byte("#!/bin/sh\necho stand-in deploy-agent\n"), 0o755)
	creds := srv.PrefixCredentials(tb, "cache", consolePrefix+"status/")
	credFile := filepath.Join(keys, "status.env")
	os.WriteFile(credFile, fmt.Appendf(nil, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n",
		creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken), 0o600)
	w, err := channel.OpenWriter("s3://cache/"+strings.TrimSuffix(consolePrefix, "/")+"?endpoint="+srv.Endpoint, credFile, nil)
	if err != nil {
		tb.Fatal(err)
	}
	f.hosts = w
	for _, h := range names {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		f.hostKeys[h] = priv
	}
	return f
}

// write writes the fleet with version as every host's /etc/version and
// commits it.
func (f *consoleFleet) write(version string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cache {\n  url = \"s3://cache/fleet?endpoint=%s\"\n  public_keys = [%q]\n}\n", f.srv.Endpoint, mustPublic(f.env["DEPLOY_CACHE_KEY"]))
	trust := fmt.Sprintf("publisher_keys = [%q]", f.pub.Public().String())
	if f.trust != "" {
		trust = f.trust
	}
	fmt.Fprintf(&b, "role \"pulled\" {\n  pull {\n    channel = \"prod\"\n    %s\n    status_credentials = \"/etc/deploy/status.env\"\n  }\n  file \"/etc/version\" {\n    content = %q\n  }\n}\n", trust, version+"\n")
	for _, h := range f.names {
		sp, _ := ssh.NewPublicKey(f.hostKeys[h].Public())
		fmt.Fprintf(&b, "host %q {\n  address = \"192.0.2.1\"\n  host_key = %q\n  roles = [role.pulled]\n}\n", h, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))))
	}
	fmt.Fprintf(&b, "deployment \"prod\" {\n  hosts = [%s]\n  canary = %d\n  batch_size = %q\n  wave_timeout = \"1h\"\n}\n", quoted(f.names), f.canary, f.batch)
	if err := os.WriteFile(filepath.Join(f.dir, "fleet.hcl"), []byte(b.String()), 0o644); err != nil {
		f.tb.Fatal(err)
	}
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", f.dir}, args...)...).CombinedOutput()
		if err != nil {
			f.tb.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(filepath.Join(f.dir, ".git")); err != nil {
		git("init", "-q")
	}
	git("add", "-A")
	git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", version)
	return git("rev-parse", "HEAD")
}

func mustPublic(keyFile string) string {
	data, _ := os.ReadFile(keyFile)
	sk, err := cache.ParseSecretKey(strings.TrimSpace(string(data)))
	if err != nil {
		panic(err)
	}
	return sk.Public().String()
}

func quoted(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// deploy runs the CLI in-process with the fleet's environment and wants
// exit code want; it returns stdout.
func (f *consoleFleet) deploy(want int, args ...string) string {
	f.tb.Helper()
	var stdout, stderr bytes.Buffer
	getenv := func(k string) string {
		if v, ok := f.env[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
	code := runMain(context.Background(), &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: getenv}, args)
	if code != want {
		f.tb.Fatalf("deploy %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, want, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String()
}

// release is host's release as the host reads and verifies it.
func (f *consoleFleet) release(host string) *agentapi.Release {
	f.tb.Helper()
	data, err := f.read(channel.ReleaseKey(host))
	if err != nil || data == nil {
		f.tb.Fatalf("reading %s's release: %v", host, err)
	}
	rel, err := channel.VerifyRelease(data, []*cache.PublicKey{f.pub.Public()}, "prod", host, 0)
	if err != nil {
		f.tb.Fatal(err)
	}
	return rel
}

// read reads a document of the channel as hosts do, over plain HTTP from
// the public bucket; nil when there is none.
func (f *consoleFleet) read(key string) ([]byte, error) {
	resp, err := http.Get(f.srv.Endpoint + "/cache/" + consolePrefix + key)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", key, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// report is what deploy-agent pull does once host reached a final
// outcome of rel: its signed status, then its entry in its wave.
func (f *consoleFleet) report(rel *agentapi.Release, st *agentapi.PullStatus) {
	f.tb.Helper()
	ctx := context.Background()
	st.Host, st.Channel, st.Serial, st.Wave, st.System = rel.Host, rel.Channel, rel.Serial, rel.Wave, rel.System
	if st.Time.IsZero() {
		st.Time = time.Now().UTC()
		st.OutcomeTime = st.Time
	}
	key := f.hostKeys[rel.Host]
	if err := channel.PutStatus(ctx, f.hosts, st, key); err != nil {
		f.tb.Fatal(err)
	}
	doc, err := channel.SignStatus(channel.WaveEntry(st), key)
	if err != nil {
		f.tb.Fatal(err)
	}
	if _, err := channel.AddToWave(ctx, f.hosts.(channel.Store), rel, rel.Host, doc); err != nil {
		f.tb.Fatal(err)
	}
}

// gate is a host's wave gate on its release, reading the earlier hosts'
// status documents.
func (f *consoleFleet) gate(rel *agentapi.Release) (channel.Decision, string) {
	f.tb.Helper()
	d, why, err := channel.Gate(context.Background(), rel, time.Now(), func(ctx context.Context, h string) ([]byte, error) {
		return f.read(channel.StatusKey(h))
	})
	if err != nil {
		f.tb.Fatal(err)
	}
	return d, why
}

// TestConsoleE2E is the console's acceptance: a channel made by the real
// deploy publish (two publishes, so there is a history and a change)
// into MinIO, hosts reporting as deploy-agent pull does (canary1 rolls
// back on its "http" health check, so wave 2 halts: web1 and web2 report
// halted by the real gate, web1 stale too, web3 never reports), then
// someone with the
// status credentials rewrites web2's status document to claim "done".
// deploy console publish writes the page; headless Chromium loads it from
// MinIO, and the DOM after its scripts ran must show wave 2 halted, the
// failing check, web2's document as unverified (never as done), the
// history with its publisher, commit and message, and the change of
// system. Then, with the bucket's own credentials, canary1's entry in
// wave 1's report is rewritten (the page reads its own document instead,
// and says why), and the head (the page shows only that it does not
// verify). The screenshot and the DOM are kept: mkdir -p DIR; go test
// ./cmd/deploy -run TestConsoleE2E -artifacts -outputdir DIR keeps them
// as DIR/_artifacts/*/console.png and console.html (without -artifacts,
// in a temporary directory removed after the test).
func TestConsoleE2E(t *testing.T) {
	f := newConsoleFleet(t, []string{"canary1", "web1", "web2", "web3"}, 1, "100%")
	target := f.dir + "#prod"
	build := []string{"--agent", f.agent, "--cache-dir", filepath.Join(f.cacheDir, "deploy")}
	f.write("v1")
	f.deploy(0, append([]string{"publish", "--channel", "prod", "--message", "first release"}, append(build, target)...)...)
	rev := f.write("v2")
	f.deploy(0, append([]string{"publish", "--channel", "prod", "--message", "roll out v2"}, append(build, target)...)...)

	canary := f.release("canary1")
	if canary.Serial != 2 || canary.Wave != 1 || canary.Waves != 2 {
		t.Fatalf("canary1's release: serial %d wave %d of %d, want serial 2, wave 1 of 2", canary.Serial, canary.Wave, canary.Waves)
	}
	f.report(canary, &agentapi.PullStatus{Outcome: agentapi.PullRolledBack, Generation: 3, Check: "http",
		Message: `health check "http": GET http://localhost:8080/healthz: connection refused; rolled back to generation 2`})
	for _, h := range []string{"web1", "web2"} {
		rel := f.release(h)
		d, why := f.gate(rel)
		if d != channel.Halt {
			t.Fatalf("%s's gate: %s (%s), want halt", h, d, why)
		}
		st := &agentapi.PullStatus{Outcome: agentapi.PullHalted, Message: why}
		if h == "web1" {
			// web1 has lost its timestamp since: stale.
			st.Stale, st.StaleSince = "the timestamp expired at 2026-12-07T00:00:00Z", time.Now().UTC()
		}
		f.report(rel, st)
	}
	// Tamper: web2's status now claims done, its signature kept.
	ctx := context.Background()
	store := f.hosts.(channel.Store)
	doc, _, err := store.Read(ctx, channel.StatusKey("web2"))
	if err != nil {
		t.Fatal(err)
	}
	var sd agentapi.SignedDocument
	json.Unmarshal(doc, &sd)
	payload, _ := base64.StdEncoding.DecodeString(sd.Payload)
	forged := strings.Replace(string(payload), `"outcome":"halted"`, `"outcome":"done"`, 1)
	if forged == string(payload) {
		t.Fatalf("web2's status %s: nothing to tamper", payload)
	}
	sd.Payload = base64.StdEncoding.EncodeToString([]byte(forged))
	tampered, _ := json.Marshal(&sd)
	if err := store.Put(ctx, channel.StatusKey("web2"), tampered); err != nil {
		t.Fatal(err)
	}

	out := f.deploy(0, "console", "publish", "--channel", "prod", "--cache-dir", filepath.Join(f.cacheDir, "deploy"), target)
	url := strings.TrimSpace(out)
	if want := f.srv.Endpoint + "/cache/" + consolePrefix + "index.html"; url != want {
		t.Fatalf("console publish printed %q, want %q", url, want)
	}
	page := fetchPage(t, url)
	if len(page) > 200<<10 {
		t.Errorf("the page weighs %d bytes, want under 200 KiB", len(page))
	}

	shot := filepath.Join(t.ArtifactDir(), "console.png")
	chromiumtest.Screenshot(t, url+"#norefresh", shot, chromiumtest.Options{Width: 1400, Height: 1100})
	t.Logf("screenshot: %s", shot)
	dom := chromiumtest.DumpDOM(t, url+"#norefresh", chromiumtest.Options{})
	os.WriteFile(filepath.Join(t.ArtifactDir(), "console.html"), []byte(dom), 0o644)

	for _, want := range []struct{ what, re string }{
		{"the page finished", `<body[^>]* data-state="loaded"`},
		{"the head verified, serial 2", `id="head" data-verified="true" data-serial="2"`},
		{"wave 1 failed", `data-wave="1" data-state="failed"`},
		{"wave 2 halted", `data-wave="2" data-state="halted"`},
		{"why wave 2 halted", `stopped before wave 2: canary1 \(rolled-back, health check "http"\) failed \(max_failures 0\)`},
		{"canary1 rolled back on check http", `<tr data-host="canary1" data-outcome="rolled-back" data-verified="true" data-check="http">`},
		{"the failing check in its cell", `<td class="check">http</td>`},
		{"web1 halted", `<tr data-host="web1" data-outcome="halted" data-verified="true"`},
		{"web1 stale", `<li data-host="web1"><b>web1</b>: <span class="stale" data-stale="true">stale since [^<]*: the timestamp expired`},
		{"web2 unverified", `<tr data-host="web2" data-outcome="unverified" data-verified="false"`},
		{"why web2 is unverified", `status of web2 not signed by its host key \(signed by another key\)`},
		{"web3 has no report", `<tr data-host="web3" data-outcome="none"`},
		{"serial 2 in the history", `<tr data-serial="2" data-verified="true"><td>2</td><td>[^<]+</td><td>[^<]+</td><td>console-ci-1</td><td class="mono">` + rev[:12] + `</td><td>roll out v2</td>`},
		{"serial 1 in the history", `<tr data-serial="1" data-verified="true">.*first release`},
		{"what serial 2 changed for web1", `<li data-host="web1" data-change="changed">web1: [a-z0-9]+-system-web1 → [a-z0-9]+-system-web1</li>`},
	} {
		if !regexp.MustCompile(want.re).MatchString(dom) {
			t.Errorf("the console does not show %s (%s)", want.what, want.re)
		}
	}
	// What the forged document claims is nowhere.
	if regexp.MustCompile(`data-host="web2" data-outcome="done"`).MatchString(dom) {
		t.Error("web2's tampered status is shown as done")
	}
	if t.Failed() {
		t.Logf("the DOM:\n%s", dom)
	}

	// With the bucket's own credentials: canary1's entry in wave 1's
	// report rewritten (the page falls back to its own status document,
	// and says why), then the head itself (the page shows nothing else).
	admin := func(key string, edit func(string) string) {
		t.Helper()
		obj := "fleet/channels/prod/" + key
		r, err := f.srv.Client.GetObject(ctx, "cache", obj, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		out := edit(string(data))
		if out == string(data) {
			t.Fatalf("%s: nothing to tamper", key)
		}
		if _, err := f.srv.Client.PutObject(ctx, "cache", obj, strings.NewReader(out), int64(len(out)), minio.PutObjectOptions{ContentType: "application/json"}); err != nil {
			t.Fatal(err)
		}
	}
	admin(channel.WaveReportKey(2, 0, 1), func(s string) string {
		var wr agentapi.WaveReport
		json.Unmarshal([]byte(s), &wr)
		var d agentapi.SignedDocument
		json.Unmarshal(wr.Reports["canary1"], &d)
		p, _ := base64.StdEncoding.DecodeString(d.Payload)
		d.Payload = base64.StdEncoding.EncodeToString([]byte(strings.Replace(string(p), `"rolled-back"`, `"done"`, 1)))
		wr.Reports["canary1"], _ = json.Marshal(&d)
		out, _ := json.Marshal(&wr)
		return string(out)
	})
	dom = chromiumtest.DumpDOM(t, url+"#norefresh", chromiumtest.Options{})
	for _, want := range []struct{ what, re string }{
		{"canary1 from its own document", `<tr data-host="canary1" data-outcome="rolled-back" data-verified="true" data-check="http">(<td[^>]*>.*?</td>){6}<td class="muted">status/canary1.json</td>`},
		{"its entry unverified", `<li data-host="canary1">.*its entry in wave 1's report: status of canary1 not signed by its host key`},
		{"wave 2 still halted", `data-wave="2" data-state="halted"`},
	} {
		if !regexp.MustCompile(want.re).MatchString(dom) {
			t.Errorf("with canary1's entry tampered, the console does not show %s (%s)", want.what, want.re)
		}
	}
	admin(channel.HeadKey, func(s string) string {
		var d agentapi.SignedDocument
		json.Unmarshal([]byte(s), &d)
		p, _ := base64.StdEncoding.DecodeString(d.Payload)
		d.Payload = base64.StdEncoding.EncodeToString([]byte(strings.Replace(string(p), `"roll out v2"`, `"nothing to see"`, 1)))
		out, _ := json.Marshal(&d)
		return string(out)
	})
	dom = chromiumtest.DumpDOM(t, url+"#norefresh", chromiumtest.Options{})
	if !regexp.MustCompile(`<p class="banner bad" id="head" data-verified="false">channel.json unverified: not signed by a trusted publisher key`).MatchString(dom) ||
		strings.Contains(dom, "nothing to see") || strings.Contains(dom, `data-wave=`) {
		t.Errorf("with channel.json tampered, the console shows more than that it does not verify:\n%s", dom)
	}
}

func fetchPage(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET %s: %s, Content-Type %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	return data
}

// BenchmarkConsole loads the console of a channel of 1,000 hosts in five
// waves (10 canaries, then 25% at a time), every host reported done, in
// headless Chromium from MinIO on loopback: the channel made by deploy
// publish, the reports by the hosts' code (as in TestConsoleE2E). Each
// iteration is one whole Chromium run (start, load the page, read and
// verify every document, render, dump the DOM): s/load. browser-s is the
// same run on an empty page, what the browser's start and exit cost;
// requests is how many documents the page read (console.json among
// them); page-KiB what the page weighs, keys-KiB its console.json with
// the 1,000 hosts' keys. The sub-benchmark
// every-status reads each host's own status too (--read-all-statuses):
// the cost of 1,000 requests that the waves' reports save.
//
//	go test ./cmd/deploy -run '^$' -bench Console -benchtime 5x
func BenchmarkConsole(b *testing.B) {
	const n = 1000
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("host%04d", i+1)
	}
	f := newConsoleFleet(b, names, 10, "25%")
	f.write("v1")
	cacheDir := filepath.Join(f.cacheDir, "deploy")
	f.deploy(0, "publish", "--channel", "prod", "--message", "bench", "--agent", f.agent, "--cache-dir", cacheDir, f.dir+"#prod")
	rels := map[int][]*agentapi.Release{}
	for _, h := range names {
		rel := f.release(h)
		rels[rel.Wave] = append(rels[rel.Wave], rel)
	}
	for w := 1; w <= len(rels); w++ {
		// The gatherers last, so that the first of them finds the whole
		// wave and writes its report.
		wave := rels[w]
		for _, last := range []bool{false, true} {
			for _, rel := range wave {
				if rel.Gatherer == last {
					f.report(rel, &agentapi.PullStatus{Outcome: agentapi.PullDone, Generation: 2})
				}
			}
		}
		if data, _ := f.read(channel.WaveReportKey(1, 0, w)); data == nil {
			b.Fatalf("wave %d of %d has no report", w, len(rels))
		}
	}
	blank := filepath.Join(b.TempDir(), "blank.html")
	os.WriteFile(blank, []byte("<!DOCTYPE html><title>blank</title>"), 0o644)
	for _, every := range []bool{false, true} {
		name := "reports"
		args := []string{"console", "publish", "--channel", "prod", "--cache-dir", cacheDir}
		if every {
			name = "every-status"
			args = append(args, "--read-all-statuses")
		}
		url := strings.TrimSpace(f.deploy(0, append(args, f.dir+"#prod")...))
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		conf, err := f.read("console.json")
		if err != nil || conf == nil {
			b.Fatalf("console.json: %v", err)
		}
		b.Run(name, func(b *testing.B) {
			var load, browser time.Duration
			var requests string
			for b.Loop() {
				start := time.Now()
				dom := chromiumtest.DumpDOM(b, url+"#norefresh", chromiumtest.Options{Budget: 120 * time.Second})
				load += time.Since(start)
				body := regexp.MustCompile(`<body[^>]*>`).FindString(dom)
				attr := func(name string) string {
					m := regexp.MustCompile(` ` + name + `="([^"]*)"`).FindStringSubmatch(body)
					if m == nil {
						return ""
					}
					return m[1]
				}
				if attr("data-state") != "loaded" || attr("data-hosts") != "1000" || attr("data-verified") != "1000" {
					b.Fatalf("the console did not show 1,000 verified hosts: %s", body)
				}
				requests = attr("data-requests")
				b.StopTimer()
				start = time.Now()
				chromiumtest.DumpDOM(b, "file://"+blank, chromiumtest.Options{})
				browser += time.Since(start)
				b.StartTimer()
			}
			b.ReportMetric(load.Seconds()/float64(b.N), "s/load")
			b.ReportMetric(browser.Seconds()/float64(b.N), "browser-s")
			var r float64
			fmt.Sscan(requests, &r)
			b.ReportMetric(r, "requests")
			b.ReportMetric(float64(len(page))/1024, "page-KiB")
			b.ReportMetric(float64(len(conf))/1024, "keys-KiB")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// syncBuffer is a bytes.Buffer for one writer and a reader in another
// goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConsoleServe: deploy console serve serves a push fleet's console on
// loopback only; the page, in headless Chromium, shows what the fleet
// session read of each host (here: hosts whose SSH port refuses, so
// each is unreachable, with the error); a request naming another Host
// (a DNS name rebound to 127.0.0.1) is refused; an interrupt ends it
// with exit 0. A real host's row is TestConsoleServeE2E's.
func TestConsoleServe(t *testing.T) {
	chromiumtest.Binary(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	var b strings.Builder
	for _, h := range []string{"web1", "web2"} {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		sp, _ := ssh.NewPublicKey(priv.Public())
		fmt.Fprintf(&b, "host %q {\n  address = \"127.0.0.1\"\n  port = %d\n  host_key = %q\n}\n", h, closed, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))))
	}
	b.WriteString("deployment \"all\" {\n  hosts = [\"web1\", \"web2\"]\n}\n")
	os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(b.String()), 0o644)

	url := serveConsole(t, "--ssh-config", "none", dir+"#all")
	dom := chromiumtest.DumpDOM(t, url, chromiumtest.Options{})
	for _, h := range []string{"web1", "web2"} {
		re := `<tr data-host="` + h + `" data-result="unreachable"[^>]*><td>` + h + `</td>.*connection refused`
		if !regexp.MustCompile(re).MatchString(dom) {
			t.Errorf("the console does not show %s unreachable (%s):\n%s", h, re, dom)
		}
	}
	req, _ := http.NewRequest("GET", url+"status.json", nil)
	req.Host = "console.example.com"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET status.json with Host %s: %s, want 403", req.Host, resp.Status)
	}
}

// serveConsole starts deploy console serve with args on a free loopback
// port and returns its URL; the test's end interrupts it and wants exit 0.
func serveConsole(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	code := make(chan int, 1)
	go func() {
		code <- runMain(ctx, &env{stdin: strings.NewReader(""), stdout: stdout, stderr: stderr, getenv: os.Getenv},
			append([]string{"console", "serve", "--listen", "127.0.0.1:0"}, args...))
	}()
	t.Cleanup(func() {
		cancel()
		if c := <-code; c != 0 {
			t.Errorf("console serve ended with exit %d after the interrupt, want 0\n%s", c, stderr.String())
		}
	})
	for {
		select {
		case c := <-code:
			code <- 0 // for the cleanup
			t.Fatalf("console serve ended with exit %d\n%s", c, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if out := stdout.String(); strings.HasSuffix(out, "\n") {
			return strings.TrimSpace(out)
		}
	}
}

// TestConsoleServeE2E: the console of a push fleet of one real test host
// (vmtest: systemd, OpenSSH), deployed with the real deploy; deploy
// console serve and headless Chromium run in the test network's
// controller namespace, and the page shows the host as the fleet session
// read it over SSH: reachable, running generation 1, booting it.
func TestConsoleServeE2E(t *testing.T) {
	chromiumtest.Binary(t)
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "  file \"/etc/console-test\" {\n    content = \"1\\n\"\n  }\n", "")
	r := cli.New(t, nw, fl)
	sshArgs := []string{"--identity", fl.Key, "--ssh-config", "none"}
	r.Run(t, append(append([]string{}, sshArgs...), "--agent", e2e.Agent(t), fl.Target(h.Name()))...).Want(t, 0)

	cmd := r.Command(t, append(append([]string{"console", "serve"}, sshArgs...), "--listen", "127.0.0.1:0", fl.Target(h.Name()))...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("console serve: %v\n%s", err, stderr.String())
	}
	url := strings.TrimSpace(line)
	dom := chromiumtest.DumpDOM(t, url, chromiumtest.Options{Command: nw.ControllerCommand})
	chromiumtest.Screenshot(t, url, filepath.Join(t.ArtifactDir(), "console-serve.png"), chromiumtest.Options{Command: nw.ControllerCommand, Width: 1200, Height: 400})
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("console serve after an interrupt: %v, want exit 0\n%s", err, stderr.String())
	}
	re := `<tr data-host="` + h.Name() + `" data-result="ok" data-generation="1"><td>` + h.Name() + `</td><td><span class="pill done">ok</span></td><td>1</td>.*<td>same</td>`
	if !regexp.MustCompile(re).MatchString(dom) {
		t.Errorf("the console does not show %s at generation 1 (%s):\n%s", h.Name(), re, dom)
	}
}

// TestConsoleSilent: a canary that never reports is silent once its
// wave's time is over (published with --wave-timeout 1s), and the console
// shows it so, and the next wave halted for it, as the wave gate decides.
func TestConsoleSilent(t *testing.T) {
	f := newConsoleFleet(t, []string{"canary1", "web1"}, 1, "100%")
	target := f.dir + "#prod"
	cacheDir := filepath.Join(f.cacheDir, "deploy")
	f.write("v1")
	f.deploy(0, "publish", "--channel", "prod", "--wave-timeout", "1s", "--agent", f.agent, "--cache-dir", cacheDir, target)
	rel := f.release("web1")
	for time.Now().Before(rel.Deadline.Add(10 * time.Millisecond)) {
		time.Sleep(time.Until(rel.Deadline) + 10*time.Millisecond)
	}
	if d, why := f.gate(rel); d != channel.Halt {
		t.Fatalf("web1's gate: %s (%s), want halt", d, why)
	}
	var res struct {
		Key, URL     string
		Size         int
		ConfigSize   int `json:"config_size"`
		Hosts        int
		Unverifiable []string
	}
	out := f.deploy(0, "console", "publish", "--json", "--channel", "prod", "--cache-dir", cacheDir, target)
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Key != "channels/prod/index.html" || res.Hosts != 2 || res.Size == 0 || res.ConfigSize == 0 || len(res.Unverifiable) != 0 {
		t.Fatalf("console publish --json: %s (%v)", out, err)
	}
	url := res.URL
	dom := chromiumtest.DumpDOM(t, url+"#norefresh", chromiumtest.Options{})
	for _, want := range []struct{ what, re string }{
		{"canary1 silent", `<tr data-host="canary1" data-outcome="none"><td>canary1</td><td><span class="pill none">silent</span>`},
		{"canary1 among the silent", `<li data-host="canary1"><b>canary1</b>: <span class="silent" data-silent="true">silent: no report of serial 1 by its wave's deadline`},
		{"wave 2 halted for it", `data-wave="2" data-state="halted".*stopped before wave 2: canary1 did not report by`},
	} {
		if !regexp.MustCompile(want.re).MatchString(dom) {
			t.Errorf("the console does not show %s (%s)", want.what, want.re)
		}
	}
	if t.Failed() {
		t.Logf("the DOM:\n%s", dom)
	}
}

// TestConsoleRoot: a channel with a root of trust (deploy trust init) whose
// releases need two publisher signatures. The console says that the head
// waits for approval, then, after deploy approve, who signed it; and
// after a refresh whose timestamps expire (--timestamp-expiry 1s), that
// the channel's timestamps expired (its hosts act on nothing).
func TestConsoleRoot(t *testing.T) {
	f := newConsoleFleet(t, []string{"web1"}, 0, "100%")
	keys := t.TempDir()
	key := func(n string) (file, pub string) {
		sk, pk, _ := cache.GenerateKey(n)
		file = filepath.Join(keys, n+".key")
		os.WriteFile(file, []byte(sk.String()+"\n"), 0o600)
		return file, pk.String()
	}
	r1, r1Pub := key("r1")
	alice, alicePub := key("alice")
	ts1, ts1Pub := key("ts-1")
	f.env["DEPLOY_TIMESTAMP_KEY"] = ts1
	target := f.dir + "#prod"
	cacheDir := filepath.Join(f.cacheDir, "deploy")
	f.deploy(0, "trust", "init", f.dir, "--channel", "prod", "--root", r1Pub, "--publisher", f.pub.Public().String(),
		"--publisher", alicePub, "--publisher-threshold", "2", "--timestamp", ts1Pub, "--sign", r1)
	f.trust = `root = file("trust/prod/root.json")`
	f.write("v1")
	f.deploy(0, "publish", "--channel", "prod", "--agent", f.agent, "--cache-dir", cacheDir, target)
	url := strings.TrimSpace(f.deploy(0, "console", "publish", "--channel", "prod", "--cache-dir", cacheDir, target))
	check := func(when string, wants ...string) {
		t.Helper()
		dom := chromiumtest.DumpDOM(t, url+"#norefresh", chromiumtest.Options{})
		for _, re := range wants {
			if !regexp.MustCompile(re).MatchString(dom) {
				t.Errorf("%s: the console does not show %s", when, re)
			}
		}
		if t.Failed() {
			t.Logf("the DOM:\n%s", dom)
		}
	}
	check("before the approval",
		`<dt>approval</dt><dd class="bad">waiting for approval: 1 of the 2 signatures needed \(by console-ci-1\)</dd>`,
		`<dd id="timestamps" data-timestamps="fresh" class="">web1: until [^,]+, root 1, serial 1</dd>`)
	f.deploy(0, "approve", "--channel", "prod", "--publisher-key", alice, target)
	check("after the approval", `<dd id="signers">alice, console-ci-1 \(verified\)</dd>`)
	f.deploy(0, "publish", "--refresh", "--timestamp-expiry", "1s", "--channel", "prod", "--cache-dir", cacheDir, target)
	data, err := f.read(channel.TimestampKey("web1"))
	if err != nil || data == nil {
		t.Fatalf("web1's timestamp: %v", err)
	}
	var sd agentapi.SignedDocument
	var ts agentapi.Timestamp
	json.Unmarshal(data, &sd)
	p, _ := base64.StdEncoding.DecodeString(sd.Payload)
	json.Unmarshal(p, &ts)
	for time.Now().Before(ts.Expires.Add(10 * time.Millisecond)) {
		time.Sleep(time.Until(ts.Expires) + 10*time.Millisecond)
	}
	check("after the timestamps expired", `<dd id="timestamps" data-timestamps="expired" class="bad">web1: expired at [^(]+\(the hosts act on nothing: run deploy publish --refresh\)</dd>`)
}
