package console

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"html"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/chromiumtest"
	"github.com/declarative/deploy/pull/channel"
	"golang.org/x/crypto/ssh"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

// vectors are documents signed by package channel's own code, with the
// verdict that pull/channel gives each: the page's verifier must give the
// same (TestVerifyJSVectors).
type vectors struct {
	Channel       string   `json:"channel"`
	PublisherKeys []Key    `json:"publisher_keys"`
	TimestampKeys []Key    `json:"timestamp_keys"`
	HostKeys      []Key    `json:"host_keys"`
	Cases         []vector `json:"cases"`
}

type vector struct {
	Name string `json:"name"`
	Type string `json:"type"` // status, release, channel, timestamp
	Host string `json:"host,omitempty"`
	Doc  string `json:"doc"` // the document's bytes
	OK   bool   `json:"ok"`
	// Reason is Go's error for a status that does not verify.
	Reason string `json:"reason,omitempty"`
}

func seedKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("deploy console test vector " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

// tamper rewrites a signed document's payload through edit, keeping its
// signatures.
func tamper(t *testing.T, doc []byte, edit func(string) string) []byte {
	t.Helper()
	var d agentapi.SignedDocument
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	p, _ := base64.StdEncoding.DecodeString(d.Payload)
	q := edit(string(p))
	if q == string(p) {
		t.Fatalf("tamper changed nothing in %s", p)
	}
	d.Payload = base64.StdEncoding.EncodeToString([]byte(q))
	out, _ := json.MarshalIndent(&d, "", "  ")
	return out
}

func makeVectors(t *testing.T) *vectors {
	t.Helper()
	host := seedKey("host web1")
	other := seedKey("another host")
	pub := &cache.SecretKey{Name: "ci-1", Key: seedKey("publisher ci-1")}
	when := time.Date(2026, 12, 8, 1, 0, 0, 0, time.UTC)
	v := &vectors{Channel: "prod",
		PublisherKeys: []Key{{Name: "ci-1", Key: base64.StdEncoding.EncodeToString(pub.Key.Public().(ed25519.PublicKey))}},
		HostKeys:      []Key{{Name: "web1", Key: base64.StdEncoding.EncodeToString(host.Public().(ed25519.PublicKey))}}}
	add := func(name, typ, h string, doc []byte) {
		v.Cases = append(v.Cases, vector{Name: name, Type: typ, Host: h, Doc: string(doc)})
	}
	st := &agentapi.PullStatus{Host: "web1", Channel: "prod", Time: when, OutcomeTime: when, Serial: 3, Wave: 1,
		Outcome: agentapi.PullRolledBack, Generation: 7, Check: "http", Message: "health check \"http\": connection refused ✗ <b>",
		System: "/var/lib/deploy/store/aaaa-system-web1"}
	doc, err := channel.SignStatus(st, host)
	if err != nil {
		t.Fatal(err)
	}
	add("status signed by its host key", "status", "web1", doc)
	entry, _ := channel.SignStatus(channel.WaveEntry(st), host)
	add("wave report entry signed by its host key", "status", "web1", entry)
	add("status with its payload rewritten (rolled-back to done)", "status", "web1",
		tamper(t, doc, func(p string) string { return strings.Replace(p, `"rolled-back"`, `"done"`, 1) }))
	forged, _ := channel.SignStatus(&agentapi.PullStatus{Host: "web1", Channel: "prod", Time: when, Serial: 3, Outcome: agentapi.PullDone}, other)
	add("status signed by another key", "status", "web1", forged)
	stripped := tamper(t, doc, func(p string) string { return p + " " })
	var d agentapi.SignedDocument
	json.Unmarshal(stripped, &d)
	d.Signatures = nil
	stripped, _ = json.Marshal(&d)
	add("status without signatures", "status", "web1", stripped)
	web2, _ := channel.SignStatus(&agentapi.PullStatus{Host: "web2", Channel: "prod", Time: when, Serial: 3, Outcome: agentapi.PullDone}, host)
	add("status by web1's key about web2", "status", "web1", web2)
	staging, _ := channel.SignStatus(&agentapi.PullStatus{Host: "web1", Channel: "staging", Time: when, Serial: 3, Outcome: agentapi.PullDone}, host)
	add("status about another channel", "status", "web1", staging)
	add("status of a host without a key", "status", "db1", doc)

	rel := &agentapi.Release{V: 1, Channel: "prod", Host: "web1", Serial: 3, System: "/var/lib/deploy/store/aaaa-system-web1",
		GitRev: "0123456789abcdef", Publisher: "ci", Message: "fix ✓", Published: when, Wave: 1, Waves: 2}
	rdoc, _ := channel.Sign(agentapi.DocRelease, rel, pub)
	add("release signed by the publisher", "release", "web1", rdoc)
	add("release with another system", "release", "web1",
		tamper(t, rdoc, func(p string) string { return strings.Replace(p, "aaaa-system", "evil-system", 1) }))
	cr := &agentapi.ChannelRelease{V: 1, Channel: "prod", Serial: 3, GitRev: "0123456789abcdef", Publisher: "ci", Published: when,
		Systems: map[string]string{"web1": rel.System}, Waves: [][]string{{"web1"}}, WaveTimeoutMS: 1800000}
	cdoc, _ := channel.Sign(agentapi.DocChannel, cr, pub)
	add("channel record signed by the publisher", "channel", "", cdoc)
	add("channel record with another message", "channel", "", tamper(t, cdoc, func(p string) string {
		return strings.Replace(p, `"publisher":"ci"`, `"publisher":"ci","message":"nothing to see"`, 1)
	}))
	tsKey := &cache.SecretKey{Name: "ts-1", Key: seedKey("timestamp ts-1")}
	v.TimestampKeys = []Key{{Name: "ts-1", Key: base64.StdEncoding.EncodeToString(tsKey.Key.Public().(ed25519.PublicKey))}}
	ts := &agentapi.Timestamp{V: 1, Channel: "prod", Host: "web1", Version: when.UnixMilli(), Expires: when.Add(24 * time.Hour), Root: 1, Serial: 3,
		Release: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
	tdoc, _ := channel.Sign(agentapi.DocTimestamp, ts, tsKey)
	add("timestamp signed by the timestamp key", "timestamp", "web1", tdoc)
	add("timestamp with a later expiry", "timestamp", "web1", tamper(t, tdoc, func(p string) string { return strings.Replace(p, "2026-12-09", "2027-12-09", 1) }))
	tpub, _ := channel.Sign(agentapi.DocTimestamp, ts, pub)
	add("timestamp signed by a publisher key", "timestamp", "web1", tpub)
	// A release's signature does not make a channel record.
	var rd agentapi.SignedDocument
	json.Unmarshal(rdoc, &rd)
	rd.Type = agentapi.DocChannel
	confused, _ := json.Marshal(&rd)
	add("release signature presented as a channel record", "channel", "", confused)
	return v
}

// goVerdict is pull/channel's verdict on a vector.
func goVerdict(v *vectors, c vector) (bool, string) {
	hostLine := map[string]string{}
	for _, k := range v.HostKeys {
		raw, _ := base64.StdEncoding.DecodeString(k.Key)
		sp, _ := ssh.NewPublicKey(ed25519.PublicKey(raw))
		hostLine[k.Name] = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
	}
	var pubs []*cache.PublicKey
	for _, k := range v.PublisherKeys {
		pk, _ := cache.ParsePublicKey(k.Name + ":" + k.Key)
		pubs = append(pubs, pk)
	}
	var tkeys []*cache.PublicKey
	for _, k := range v.TimestampKeys {
		pk, _ := cache.ParsePublicKey(k.Name + ":" + k.Key)
		tkeys = append(tkeys, pk)
	}
	var err error
	switch c.Type {
	case "timestamp":
		// Trust.VerifyTimestamp's checks, for a reader without a version
		// of its own.
		var ts agentapi.Timestamp
		if _, err = channel.OpenThreshold([]byte(c.Doc), agentapi.DocTimestamp, tkeys, 1, &ts); err == nil && (ts.Channel != v.Channel || ts.Host != c.Host || ts.Expires.IsZero()) {
			return false, ""
		}
	case "status":
		_, err = channel.VerifyStatus([]byte(c.Doc), v.Channel, c.Host, hostLine[c.Host])
		if err != nil {
			return false, err.Error()
		}
	case "release":
		_, _, err = channel.ReleaseCheck{Keys: pubs, Threshold: 1, Channel: v.Channel, Host: c.Host}.Verify([]byte(c.Doc))
	case "channel":
		var cr agentapi.ChannelRelease
		_, err = channel.Open([]byte(c.Doc), agentapi.DocChannel, pubs, &cr)
	}
	return err == nil, ""
}

// TestVectors: testdata/vectors.json is what package channel signs today
// (ed25519 signatures are deterministic), with pull/channel's verdicts.
// go test ./console -run TestVectors -update rewrites it.
func TestVectors(t *testing.T) {
	v := makeVectors(t)
	for i, c := range v.Cases {
		v.Cases[i].OK, v.Cases[i].Reason = goVerdict(v, c)
	}
	for _, c := range v.Cases {
		if want := strings.HasPrefix(c.Name, "release signed") || strings.HasPrefix(c.Name, "channel record signed") || strings.Contains(c.Name, "signed by its host key") || c.Name == "timestamp signed by the timestamp key"; c.OK != want {
			t.Errorf("pull/channel on %q: ok = %v, want %v (%s)", c.Name, c.OK, want, c.Reason)
		}
	}
	got, _ := json.MarshalIndent(v, "", "  ")
	got = append(got, '\n')
	file := filepath.Join("testdata", "vectors.json")
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (go test ./console -run TestVectors -update writes it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from what package channel signs now: if the signed format changed on purpose, rerun with -update and check that TestVerifyJSVectors passes", file)
	}
}

// TestVerifyJSVectors runs the page's verifier (assets/verify.js, the
// bytes the page inlines) in headless Chromium on testdata/vectors.json:
// it must accept what pull/channel accepts and refuse what it refuses,
// a status with Go's reason word for word.
func TestVerifyJSVectors(t *testing.T) {
	chromiumtest.Binary(t)
	data, err := os.ReadFile(filepath.Join("testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	harness := `<!DOCTYPE html><html><body><pre id="out">running</pre><script>` + VerifyJS() + `
const V = ` + string(data) + `;
(async () => {
  const pub = [];
  for (const k of V.publisher_keys) pub.push({ name: k.name, key: await importKey(k.key) });
  const tkeys = [];
  for (const k of V.timestamp_keys) tkeys.push({ name: k.name, key: await importKey(k.key) });
  const hosts = new Map();
  for (const k of V.host_keys) hosts.set(k.name, await importKey(k.key));
  const out = [];
  for (const c of V.cases) {
    const bytes = new TextEncoder().encode(c.doc);
    let r;
    if (c.type === "status") r = await verifyStatus(bytes, V.channel, c.host, hosts.get(c.host) || null);
    else if (c.type === "release") r = await verifyRelease(bytes, V.channel, c.host, pub, 1);
    else if (c.type === "timestamp") r = await verifyTimestamp(bytes, V.channel, c.host, tkeys, 1);
    else r = await verifyRecord(bytes, V.channel, pub);
    out.push({ name: c.name, ok: r.ok, reason: r.reason || "" });
  }
  document.getElementById("out").textContent = "RESULT" + JSON.stringify(out) + "END";
})().catch((e) => { document.getElementById("out").textContent = "ERROR " + e; });
</script></body></html>`
	file := filepath.Join(t.TempDir(), "vectors.html")
	if err := os.WriteFile(file, []byte(harness), 0o644); err != nil {
		t.Fatal(err)
	}
	dom := chromiumtest.DumpDOM(t, "file://"+file, chromiumtest.Options{})
	m := regexp.MustCompile(`(?s)<pre id="out">RESULT(.*?)END</pre>`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the verifier did not finish; the DOM:\n%s", dom)
	}
	var got []struct {
		Name, Reason string
		OK           bool
	}
	if err := json.Unmarshal([]byte(html.UnescapeString(m[1])), &got); err != nil || len(got) != len(v.Cases) {
		t.Fatalf("results %s: %v, want %d", m[1], err, len(v.Cases))
	}
	for i, c := range v.Cases {
		g := got[i]
		if g.OK != c.OK {
			t.Errorf("verify.js on %q: ok = %v (%s), want %v like pull/channel", c.Name, g.OK, g.Reason, c.OK)
		}
		if c.Type == "status" && g.Reason != c.Reason {
			t.Errorf("verify.js on %q: reason %q, want pull/channel's %q", c.Name, g.Reason, c.Reason)
		}
	}
}
