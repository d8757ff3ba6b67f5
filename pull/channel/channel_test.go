package channel_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/pull/channel"
	"github.com/minio/minio-go/v7"
	"golang.org/x/crypto/ssh"
)

func key(t *testing.T, name string) (*cache.SecretKey, *cache.PublicKey) {
	t.Helper()
	sk, pk, err := cache.GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return sk, pk
}

func release(host string, serial int64) *agentapi.Release {
	return &agentapi.Release{V: agentapi.Version, Channel: "prod", Host: host, Serial: serial,
		System: "/var/lib/deploy/store/00000000000000000000000000000000-system-" + host, Published: time.Unix(1e9, 0).UTC(), Wave: 1, Waves: 1}
}

func TestVerifyRelease(t *testing.T) {
	sk, pk := key(t, "ci-1")
	other, _ := key(t, "ci-1") // same name, another key
	evil, _ := key(t, "evil-1")
	sign := func(v any, keys ...*cache.SecretKey) []byte {
		data, err := channel.Sign(agentapi.DocRelease, v, keys...)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	good := sign(release("web1", 5), sk)
	unsigned := func() []byte {
		var doc agentapi.SignedDocument
		json.Unmarshal(good, &doc)
		doc.Signatures = nil
		data, _ := json.Marshal(doc)
		return data
	}()
	tampered := func() []byte {
		var doc agentapi.SignedDocument
		json.Unmarshal(good, &doc)
		r := release("web1", 5)
		r.System = strings.Replace(r.System, "system-web1", "system-evil", 1)
		payload, _ := json.Marshal(r)
		doc.Payload = base64.StdEncoding.EncodeToString(payload)
		data, _ := json.Marshal(doc)
		return data
	}()
	asChannel, _ := channel.Sign(agentapi.DocChannel, release("web1", 5), sk)
	// A narinfo signature by the same key is no release signature.
	narinfoSig := func() []byte {
		var doc agentapi.SignedDocument
		json.Unmarshal(good, &doc)
		payload, _ := base64.StdEncoding.DecodeString(doc.Payload)
		pi := &closure.PathInfo{Path: string(payload)}
		s := sk.Sign(pi)
		_, b64, _ := strings.Cut(s, ":")
		doc.Signatures = []agentapi.Signature{{Key: "ci-1", Sig: b64}}
		data, _ := json.Marshal(doc)
		return data
	}()
	newer := release("web1", 5)
	newer.V = agentapi.Version + 1

	for _, tt := range []struct {
		name    string
		data    []byte
		host    string
		current int64
		want    error
		serial  int64
	}{
		{"good", good, "web1", 4, nil, 5},
		{"first release", good, "web1", 0, nil, 5},
		{"also signed by an unknown key", sign(release("web1", 5), evil, sk), "web1", 0, nil, 5},
		{"unsigned", unsigned, "web1", 0, channel.ErrUnsigned, 5},
		{"unknown key", sign(release("web1", 5), evil), "web1", 0, channel.ErrUntrusted, 5},
		{"a trusted name, another key", sign(release("web1", 5), other), "web1", 0, channel.ErrUntrusted, 5},
		{"tampered payload", tampered, "web1", 0, channel.ErrUntrusted, 5},
		{"another host's", good, "web2", 0, channel.ErrOtherHost, 5},
		{"another channel's", sign(func() *agentapi.Release { r := release("web1", 5); r.Channel = "staging"; return r }(), sk), "web1", 0, channel.ErrOtherChannel, 5},
		{"replay of an older serial", good, "web1", 7, channel.ErrNotNewer, 5},
		{"the same serial again", good, "web1", 5, channel.ErrNotNewer, 5},
		{"a channel document", asChannel, "web1", 0, channel.ErrMalformed, 0},
		{"a narinfo-style signature", narinfoSig, "web1", 0, channel.ErrUntrusted, 5},
		{"not JSON", []byte("<html>"), "web1", 0, channel.ErrMalformed, 0},
		{"a newer version", sign(newer, sk), "web1", 0, channel.ErrNewerVersion, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rel, err := channel.VerifyRelease(tt.data, []*cache.PublicKey{pk}, "prod", tt.host, tt.current)
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyRelease = %v, want %v", err, tt.want)
			}
			if tt.want == nil {
				if rel.Serial != tt.serial || rel.Host != "web1" {
					t.Errorf("release %+v", rel)
				}
				return
			}
			var re *channel.RefusedError
			if !errors.As(err, &re) || re.Serial != tt.serial {
				t.Errorf("refusal %#v: want a *RefusedError claiming serial %d", err, tt.serial)
			}
		})
	}
}

// hostKey is a host's SSH ed25519 key pair: the private key, and the
// authorized_keys line a fleet's host_key holds.
func hostKey(t *testing.T) (ed25519.PrivateKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return priv, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}

func signStatus(t *testing.T, st *agentapi.PullStatus, key ed25519.PrivateKey) []byte {
	t.Helper()
	data, err := channel.SignStatus(st, key)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestGate(t *testing.T) {
	published := time.Unix(1e9, 0).UTC()
	k1, line1 := hostKey(t)
	k2, line2 := hostKey(t)
	keys := map[string]ed25519.PrivateKey{"web1": k1, "web2": k2}
	rel := release("web3", 9)
	rel.Wave, rel.Waves, rel.After, rel.Deadline = 2, 2, []string{"web1", "web2"}, published.Add(time.Hour)
	rel.AfterKeys = map[string]string{"web1": line1, "web2": line2}
	status := func(host string, serial int64, o agentapi.PullOutcome, at time.Duration) *agentapi.PullStatus {
		return &agentapi.PullStatus{Host: host, Channel: "prod", Serial: serial, Outcome: o, Time: published.Add(at), Check: map[bool]string{true: "http"}[o == agentapi.PullRolledBack]}
	}
	// st is host's status, signed by its own key.
	st := func(host string, serial int64, o agentapi.PullOutcome, at time.Duration) []byte {
		return signStatus(t, status(host, serial, o, at), keys[host])
	}
	// Forgeries: what someone who can write the status prefix, but holds
	// no host's key, can put there.
	evil, _ := hostKey(t)
	forged := func(host string, o agentapi.PullOutcome) []byte {
		return signStatus(t, status(host, 9, o, time.Minute), evil)
	}
	unsigned := func(host string, o agentapi.PullOutcome) []byte {
		data, _ := json.Marshal(status(host, 9, o, time.Minute))
		return data
	}
	stripped := func(host string, o agentapi.PullOutcome) []byte {
		var doc agentapi.SignedDocument
		json.Unmarshal(st(host, 9, o, time.Minute), &doc)
		doc.Signatures = nil
		data, _ := json.Marshal(doc)
		return data
	}
	otherChannel := func() []byte {
		s := status("web1", 9, agentapi.PullDone, time.Minute)
		s.Channel = "staging"
		return signStatus(t, s, k1)
	}()
	before, after := published.Add(time.Minute), published.Add(2*time.Hour)
	done2 := st("web2", 9, agentapi.PullDone, time.Minute)
	for _, tt := range []struct {
		name     string
		statuses map[string][]byte
		now      time.Time
		max      int
		noKeys   bool
		want     channel.Decision
		reads    int
		reason   string
	}{
		{"all healthy", map[string][]byte{"web1": st("web1", 9, agentapi.PullDone, time.Minute), "web2": done2}, before, 0, false, channel.Go, 2, ""},
		{"one still activating", map[string][]byte{"web1": st("web1", 9, agentapi.PullActivating, time.Minute), "web2": done2}, before, 0, false, channel.Wait, 1, "waiting for web1"},
		{"one on the previous serial", map[string][]byte{"web1": st("web1", 8, agentapi.PullDone, time.Minute), "web2": done2}, before, 0, false, channel.Wait, 1, "waiting for web1"},
		{"never reported", map[string][]byte{"web2": done2}, before, 0, false, channel.Wait, 1, "waiting for web1"},
		{"one rolled back", map[string][]byte{"web1": st("web1", 9, agentapi.PullRolledBack, time.Minute), "web2": done2}, before, 0, false, channel.Halt, 1, `web1 (rolled-back, health check "http") failed (max_failures 0)`},
		{"one rolled back, one may fail", map[string][]byte{"web1": st("web1", 9, agentapi.PullRolledBack, time.Minute), "web2": done2}, before, 1, false, channel.Go, 2, ""},
		{"refused counts as failed", map[string][]byte{"web1": st("web1", 9, agentapi.PullRefused, time.Minute)}, before, 0, false, channel.Halt, 1, "web1 (refused) failed"},
		{"an earlier wave halted", map[string][]byte{"web1": st("web1", 9, agentapi.PullHalted, time.Minute)}, before, 5, false, channel.Halt, 1, "web1 halted"},
		{"silent past the deadline", map[string][]byte{"web2": done2}, after, 0, false, channel.Halt, 2, "web1 did not report by"},
		{"reported late", map[string][]byte{"web1": st("web1", 9, agentapi.PullDone, 90*time.Minute), "web2": done2}, after, 0, false, channel.Halt, 2, "web1 did not report by"},
		{"written late, done in time", map[string][]byte{"web1": func() []byte {
			s := status("web1", 9, agentapi.PullDone, 90*time.Minute)
			s.OutcomeTime = published.Add(time.Minute)
			return signStatus(t, s, k1)
		}(), "web2": done2}, after, 0, false, channel.Go, 2, ""},
		{"late report, looked before the deadline", map[string][]byte{"web1": st("web1", 9, agentapi.PullDone, 90*time.Minute), "web2": done2}, before, 0, false, channel.Wait, 1, "waiting for web1"},

		// Forged statuses are silence: they neither open the gate nor
		// halt it, and the reason says which status did not verify.
		{"forged done", map[string][]byte{"web1": forged("web1", agentapi.PullDone), "web2": done2}, before, 0, false, channel.Wait, 1, "waiting for web1 (wave before 2) to report serial 9: status of web1 not signed by its host key"},
		{"unsigned done (as statuses were)", map[string][]byte{"web1": unsigned("web1", agentapi.PullDone), "web2": done2}, before, 0, false, channel.Wait, 1, "status of web1 not signed by its host key"},
		{"done with its signature stripped", map[string][]byte{"web1": stripped("web1", agentapi.PullDone), "web2": done2}, before, 0, false, channel.Wait, 1, "status of web1 not signed by its host key (unsigned)"},
		{"web2's done copied to web1", map[string][]byte{"web1": done2, "web2": done2}, before, 0, false, channel.Wait, 1, "status of web1 not signed by its host key"},
		{"web1's done in another channel", map[string][]byte{"web1": otherChannel, "web2": done2}, before, 0, false, channel.Wait, 1, `status of web1 refused: for another channel (channel "staging", not "prod")`},
		{"a release naming no host keys", map[string][]byte{"web1": st("web1", 9, agentapi.PullDone, time.Minute), "web2": done2}, before, 0, true, channel.Wait, 1, "status of web1 cannot be verified: no host key"},
		{"forged rolled back", map[string][]byte{"web1": forged("web1", agentapi.PullRolledBack), "web2": done2}, before, 0, false, channel.Wait, 1, "status of web1 not signed by its host key"},
		{"forged failed, unsigned", map[string][]byte{"web1": unsigned("web1", agentapi.PullFailed), "web2": done2}, before, 0, false, channel.Wait, 1, "status of web1 not signed by its host key"},
		{"forged halted", map[string][]byte{"web1": forged("web1", agentapi.PullHalted), "web2": done2}, before, 0, false, channel.Wait, 1, "status of web1 not signed by its host key"},
		{"forged done past the deadline", map[string][]byte{"web1": forged("web1", agentapi.PullDone), "web2": done2}, after, 0, false, channel.Halt, 2, "web1 did not report by 2001-09-09T02:46:40Z; status of web1 not signed by its host key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := *rel
			r.MaxFailures = tt.max
			if tt.noKeys {
				r.AfterKeys = nil
			}
			reads := 0
			got, reason, err := channel.Gate(context.Background(), &r, tt.now, func(_ context.Context, h string) ([]byte, error) {
				reads++
				return tt.statuses[h], nil
			})
			if err != nil || got != tt.want || reads != tt.reads || !strings.Contains(reason, tt.reason) {
				t.Errorf("Gate = %v %q %v after %d reads, want %v containing %q after %d reads", got, reason, err, reads, tt.want, tt.reason, tt.reads)
			}
			// GateWaves decides the same from a wave report holding the
			// same documents (and the hosts' own past the deadline).
			r.WaveSizes = []int{2}
			wr := &agentapi.WaveReport{V: agentapi.Version, Channel: "prod", Serial: 9, Wave: 1, Reports: map[string]json.RawMessage{}}
			for h, doc := range tt.statuses {
				wr.Reports[h] = doc
			}
			report, _ := json.Marshal(wr)
			var c channel.GateCache
			wgot, wreason, err := channel.GateWaves(context.Background(), &r, tt.now, &c, channel.GateSource{
				Get: func(_ context.Context, key, _ string) ([]byte, string, error) {
					if key != channel.WaveReportKey(9, 0, 1) {
						t.Errorf("GateWaves read %s", key)
					}
					return report, `"1"`, nil
				},
				Status: func(_ context.Context, h string) ([]byte, error) { return tt.statuses[h], nil },
			})
			if err != nil || wgot != got || wreason != reason {
				t.Errorf("GateWaves = %v %q %v, want Gate's %v %q", wgot, wreason, err, got, reason)
			}
		})
	}
	// The first wave has nothing to wait for.
	if got, _, _ := channel.Gate(context.Background(), release("web1", 9), time.Now(), nil); got != channel.Go {
		t.Errorf("Gate(wave 1) = %v, want go", got)
	}
}

func TestVerifyStatus(t *testing.T) {
	k1, line1 := hostKey(t)
	k2, _ := hostKey(t)
	st := func() *agentapi.PullStatus {
		return &agentapi.PullStatus{Host: "web1", Channel: "prod", Serial: 3, Outcome: agentapi.PullDone, Time: time.Unix(1e9, 0).UTC()}
	}
	good := signStatus(t, st(), k1)
	tampered := func() []byte {
		var doc agentapi.SignedDocument
		json.Unmarshal(signStatus(t, &agentapi.PullStatus{Host: "web1", Channel: "prod", Serial: 3, Outcome: agentapi.PullRolledBack}, k1), &doc)
		var gd agentapi.SignedDocument
		json.Unmarshal(good, &gd)
		doc.Signatures = gd.Signatures
		data, _ := json.Marshal(doc)
		return data
	}()
	renamed := func() []byte {
		// web2's own signed status, with its signature renamed web1.
		s := st()
		s.Host = "web2"
		var doc agentapi.SignedDocument
		json.Unmarshal(signStatus(t, s, k2), &doc)
		doc.Signatures[0].Key = "web1"
		data, _ := json.Marshal(doc)
		return data
	}()
	otherHost := func() []byte {
		// Signed by web1's key, but about web2 (two hosts cloned with one
		// key, say), the signature renamed web1.
		s := st()
		s.Host = "web2"
		var doc agentapi.SignedDocument
		json.Unmarshal(signStatus(t, s, k1), &doc)
		doc.Signatures[0].Key = "web1"
		data, _ := json.Marshal(doc)
		return data
	}()
	asRelease, _ := channel.Sign(agentapi.DocRelease, st(), &cache.SecretKey{Name: "web1", Key: k1})
	newer := st()
	newer.V = agentapi.Version + 1
	newerDoc, _ := channel.Sign(agentapi.DocStatus, newer, &cache.SecretKey{Name: "web1", Key: k1})
	rsa := "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDH1p3W1mJ7d0v2y5b0oV2hR2z1Y0x7T3c0mX8m6m2V5y0h7q3lK1g2m0n8b9y8k5v3f4c2n1p0q9w8e7r6t5y4u3i2o1p0a9s8d7f6g5h4j3k2l1z0x9c8v7b6n5m4q3w2e1r0t9y8u7i6o5p4a3s2d1f0g9h8j7k6l5z4x3c2v1b0n9m8q7w6e5r4t3y2u1i0o9p8a7s6d5f4g3h2j1k0l9z8x7c6v5b4n3m2q1w0e9r8t7y6u5i4o3p2a1s0d9f8g7h6j5k4l3z2x1c0v9b8n7m6q5w4e3r2t1y0u9i8o7p6a5s4d3f2g1h0j9k8l7z6x5c4v3b2n1m0=="
	for _, tt := range []struct {
		name    string
		data    []byte
		host    string
		key     string
		want    error
		message string
	}{
		{"good", good, "web1", line1, nil, ""},
		{"the plain JSON statuses were", func() []byte { data, _ := json.Marshal(st()); return data }(), "web1", line1, channel.ErrMalformed, "status of web1 not signed by its host key"},
		{"another key", signStatus(t, st(), k2), "web1", line1, channel.ErrUntrusted, "status of web1 not signed by its host key (signed by another key)"},
		{"tampered payload", tampered, "web1", line1, channel.ErrUntrusted, "not signed by its host key"},
		{"another host's, renamed", renamed, "web1", line1, channel.ErrUntrusted, "not signed by its host key"},
		{"about another host", otherHost, "web1", line1, channel.ErrOtherHost, `status of web1 refused: for another host (host "web2")`},
		{"another channel's", func() []byte { s := st(); s.Channel = "staging"; return signStatus(t, s, k1) }(), "web1", line1, channel.ErrOtherChannel, "for another channel"},
		{"a release signature by the same key", asRelease, "web1", line1, channel.ErrMalformed, "not signed by its host key"},
		{"a newer version", newerDoc, "web1", line1, channel.ErrNewerVersion, "newer deploy"},
		{"no key", good, "web1", "", channel.ErrNoHostKey, "status of web1 cannot be verified: no host key to verify it with"},
		{"not an ed25519 key", good, "web1", rsa, channel.ErrNoHostKey, "cannot be verified"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := channel.VerifyStatus(tt.data, "prod", tt.host, tt.key)
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyStatus = %+v, %v; want %v", got, err, tt.want)
			}
			if tt.want == nil {
				if got.Serial != 3 || got.Outcome != agentapi.PullDone || got.Host != "web1" {
					t.Errorf("VerifyStatus = %+v", got)
				}
				return
			}
			var se *channel.StatusError
			if !errors.As(err, &se) || got != nil || !strings.Contains(err.Error(), tt.message) {
				t.Errorf("VerifyStatus = %+v, %v; want a *StatusError saying %q and no status", got, err, tt.message)
			}
		})
	}
}

// LoadHostKey reads an OpenSSH private key file as sshd writes it; the
// public half is what ParseHostKey reads from an authorized_keys line.
func TestHostKeyFiles(t *testing.T) {
	priv, line := hostKey(t)
	block, err := ssh.MarshalPrivateKey(priv, "root@web1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "ssh_host_ed25519_key")
	os.WriteFile(file, pem.EncodeToMemory(block), 0o600)
	got, err := channel.LoadHostKey(file)
	if err != nil || !got.Equal(priv) {
		t.Fatalf("LoadHostKey = %v", err)
	}
	pub, err := channel.ParseHostKey(line + " root@web1")
	if err != nil || !pub.Equal(priv.Public()) {
		t.Fatalf("ParseHostKey(%q) = %v", line, err)
	}
	enc, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(file, pem.EncodeToMemory(enc), 0o600)
	if _, err := channel.LoadHostKey(file); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("LoadHostKey(protected) = %v", err)
	}
	os.WriteFile(file, []byte("not a key"), 0o600)
	if _, err := channel.LoadHostKey(file); err == nil || strings.Contains(err.Error(), "not a key\"") {
		t.Errorf("LoadHostKey(garbage) = %v", err)
	}
	if _, err := channel.LoadHostKey(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadHostKey(missing) = %v", err)
	}
}

func TestHTTPSourceConditional(t *testing.T) {
	doc := []byte(`{"v":1}`)
	var requests []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests = append(requests, r.URL.Path+" "+r.Header.Get("If-None-Match"))
		switch r.URL.Path {
		case "/ch/hosts/web1.json":
			if r.Header.Get("If-None-Match") == `"abc"` {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Header().Set("ETag", `"abc"`)
			w.Write(doc)
		case "/ch/broken":
			w.WriteHeader(http.StatusBadGateway)
		default:
			w.WriteHeader(http.StatusForbidden)
		}
	}))
	defer srv.Close()
	src, err := channel.OpenSource(srv.URL+"/ch/", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data, etag, err := src.Get(ctx, channel.ReleaseKey("web1"), "")
	if err != nil || string(data) != string(doc) || etag != `"abc"` {
		t.Fatalf("Get = %q %q %v", data, etag, err)
	}
	if _, _, err := src.Get(ctx, channel.ReleaseKey("web1"), etag); !errors.Is(err, channel.ErrNotModified) {
		t.Fatalf("conditional Get = %v, want not modified", err)
	}
	if _, _, err := src.Get(ctx, channel.ReleaseKey("web2"), ""); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Get of a missing document (403) = %v, want not exist", err)
	}
	var ue *cache.UnavailableError
	if _, _, err := src.Get(ctx, "broken", ""); !errors.As(err, &ue) {
		t.Fatalf("Get from a failing server = %v, want unavailable", err)
	}
	if len(requests) != 4 {
		t.Errorf("requests %q", requests)
	}
}

func TestDirStore(t *testing.T) {
	dir := t.TempDir()
	st := channel.DirStore(dir)
	ctx := context.Background()
	if err := st.Write(ctx, channel.HeadKey, []byte("1"), channel.Cond{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	if err := st.Write(ctx, channel.HeadKey, []byte("2"), channel.Cond{IfAbsent: true}); !errors.Is(err, channel.ErrConflict) {
		t.Fatalf("second create = %v, want a conflict", err)
	}
	_, etag, err := st.Read(ctx, channel.HeadKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Write(ctx, channel.HeadKey, []byte("2"), channel.Cond{IfMatch: etag}); err != nil {
		t.Fatal(err)
	}
	if err := st.Write(ctx, channel.HeadKey, []byte("3"), channel.Cond{IfMatch: etag}); !errors.Is(err, channel.ErrConflict) {
		t.Fatalf("write with a stale ETag = %v, want a conflict", err)
	}
	src := channel.DirSource(dir)
	data, tag, err := src.Get(ctx, channel.HeadKey, "")
	if err != nil || string(data) != "2" {
		t.Fatalf("DirSource.Get = %q %v", data, err)
	}
	if _, _, err := src.Get(ctx, channel.HeadKey, tag); !errors.Is(err, channel.ErrNotModified) {
		t.Fatalf("conditional DirSource.Get = %v", err)
	}
	if _, _, err := src.Get(ctx, "../x", ""); err == nil {
		t.Fatal("a key outside the directory was read")
	}
}

func TestParseCredentials(t *testing.T) {
	for _, tt := range []struct {
		in       string
		id, tok  string
		wantFail bool
	}{
		{"AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY=SK\n", "AK", "", false},
		{"export AWS_ACCESS_KEY_ID=\"AK\"\nexport AWS_SECRET_ACCESS_KEY='SK'\nAWS_SESSION_TOKEN=T\n", "AK", "T", false},
		{"[default]\n# comment\naws_access_key_id = AK\naws_secret_access_key = SK\n", "AK", "", false},
		{"AWS_ACCESS_KEY_ID=AK\n", "", "", true},
		{"hunter2", "", "", true},
	} {
		c, err := channel.ParseCredentials([]byte(tt.in))
		if (err != nil) != tt.wantFail || (!tt.wantFail && (c.AccessKeyID != tt.id || c.SessionToken != tt.tok || c.SecretAccessKey != "SK")) {
			t.Errorf("ParseCredentials(%q) = %+v, %v", tt.in, c, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error shows the file's content: %v", err)
		}
	}
}

// TestS3Writer writes a status into MinIO with credentials limited to the
// channel's status prefix, and is refused elsewhere.
func TestS3Writer(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "cache", true)
	creds := srv.PrefixCredentials(t, "cache", "fleet/channels/prod/status/")
	credFile := filepath.Join(t.TempDir(), "creds")
	os.WriteFile(credFile, fmt.Appendf(nil, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n", creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken), 0o600)
	w, err := channel.OpenWriter("s3://cache/fleet/channels/prod?endpoint="+srv.Endpoint+"&region=us-east-1", credFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st := &agentapi.PullStatus{Host: "web1", Channel: "prod", Serial: 3, Outcome: agentapi.PullDone, Time: time.Now().UTC()}
	key, line := hostKey(t)
	if err := channel.PutStatus(ctx, w, st, key); err != nil {
		t.Fatal(err)
	}
	// Anyone reads it back over plain HTTP (the bucket is public).
	src, _ := channel.OpenSource(srv.Endpoint+"/cache/fleet/channels/prod", nil)
	data, _, err := src.Get(ctx, channel.StatusKey("web1"), "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := channel.VerifyStatus(data, "prod", "web1", line)
	if err != nil || got.Serial != 3 || got.Outcome != agentapi.PullDone {
		t.Fatalf("status read back: %+v, %v", got, err)
	}
	if err := w.Put(ctx, channel.ReleaseKey("web1"), []byte("{}")); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("writing a release with status credentials: %v, want 403", err)
	}
	if _, err := srv.Client.StatObject(ctx, "cache", "fleet/channels/prod/hosts/web1.json", minio.StatObjectOptions{}); err == nil {
		t.Fatal("the release was written")
	}
	// The wave report: read, then written only while unchanged.
	ws := w.(channel.Store)
	rkey := channel.WaveReportKey(3, 0, 1)
	if _, _, err := ws.Read(ctx, rkey); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reading a missing report: %v", err)
	}
	if err := ws.Write(ctx, rkey, []byte("1"), channel.Cond{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	_, etag, err := ws.Read(ctx, rkey)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(ctx, rkey, []byte("2"), channel.Cond{IfAbsent: true}); !errors.Is(err, channel.ErrConflict) {
		t.Fatalf("creating an existing report: %v, want a conflict", err)
	}
	if err := ws.Write(ctx, rkey, []byte("2"), channel.Cond{IfMatch: etag}); err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(ctx, rkey, []byte("3"), channel.Cond{IfMatch: etag}); !errors.Is(err, channel.ErrConflict) {
		t.Fatalf("writing with a stale ETag: %v, want a conflict", err)
	}
	if data, _, err := ws.Read(ctx, rkey); err != nil || string(data) != "2" {
		t.Fatalf("the report: %q %v, want 2", data, err)
	}
	// The wave's entries, listed page by page (two keys a page here), and
	// gathered by the last of the wave's hosts.
	w.(*channel.S3Writer).ListPage = 2
	wrel := release("web1", 3)
	wrel.Wave, wrel.WaveSize, wrel.Gatherer = 2, 3, true
	for i, h := range []string{"web3", "web1", "web2"} {
		if done, err := channel.AddToWave(ctx, ws, wrel, h, fmt.Appendf(nil, `{"host":%q}`, h)); err != nil || done != (i == 2) {
			t.Fatalf("AddToWave of %s, gatherer %d of 3 = %v, %v", h, i+1, done, err)
		}
	}
	keys, err := ws.(channel.Lister).List(ctx, channel.WaveEntryPrefix(3, 0, 2), 0)
	if want := []string{channel.WaveEntryKey(3, 0, 2, "web1"), channel.WaveEntryKey(3, 0, 2, "web2"), channel.WaveEntryKey(3, 0, 2, "web3")}; err != nil || !slices.Equal(keys, want) {
		t.Fatalf("List = %q %v, want %q", keys, err, want)
	}
	if keys, err := ws.(channel.Lister).List(ctx, channel.WaveEntryPrefix(3, 0, 2), 1); err != nil || len(keys) != 1 {
		t.Fatalf("List of at most 1 = %q %v", keys, err)
	}
	data, _, err = ws.Read(ctx, channel.WaveReportKey(3, 0, 2))
	if wr := channel.DecodeWaveReport(data, "prod", 3, 2); err != nil || wr == nil || len(wr.Reports) != 3 || string(wr.Reports["web3"]) != `{"host":"web3"}` {
		t.Fatalf("wave 2's report: %s %v, want the 3 entries", data, err)
	}
	// Credentials without s3:ListBucket are denied the list, with the
	// permission named.
	rwcreds := srv.PrefixCredentials(t, "cache", "fleet/channels/prod/status/", "s3:PutObject", "s3:GetObject")
	os.WriteFile(credFile, fmt.Appendf(nil, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n", rwcreds.AccessKeyID, rwcreds.SecretAccessKey, rwcreds.SessionToken), 0o600)
	if _, err := ws.(channel.Lister).List(ctx, channel.WaveEntryPrefix(3, 0, 2), 1); !errors.Is(err, channel.ErrDenied) || !strings.Contains(err.Error(), "s3:ListBucket") {
		t.Fatalf("listing without s3:ListBucket: %v, want denied, naming it", err)
	}
	// Credentials that may only write (from before wave reports) are
	// denied reads, with the permission named.
	wcreds := srv.PrefixCredentials(t, "cache", "fleet/channels/prod/status/", "s3:PutObject")
	os.WriteFile(credFile, fmt.Appendf(nil, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n", wcreds.AccessKeyID, wcreds.SecretAccessKey, wcreds.SessionToken), 0o600)
	if _, _, err := ws.Read(ctx, rkey); !errors.Is(err, channel.ErrDenied) || !strings.Contains(err.Error(), "s3:GetObject") {
		t.Fatalf("reading with write-only credentials: %v, want denied, naming s3:GetObject", err)
	}
}

func TestCheckName(t *testing.T) {
	long := strings.Repeat("a", 128)
	for name, ok := range map[string]bool{
		"web1": true, "Web-1.prod_eu": true, "9": true, long: true,
		"": false, long + "a": false, ".hidden": false, "-x": false, "_x": false, "a/b": false, "a b": false, "é": false, "a\x00": false,
	} {
		if err := channel.CheckName("host", name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}
