package channel_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/pull/channel"
	"github.com/minio/minio-go/v7"
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

func TestGate(t *testing.T) {
	published := time.Unix(1e9, 0).UTC()
	rel := release("web3", 9)
	rel.Wave, rel.Waves, rel.After, rel.Deadline = 2, 2, []string{"web1", "web2"}, published.Add(time.Hour)
	st := func(serial int64, o agentapi.PullOutcome, at time.Duration) *agentapi.PullStatus {
		return &agentapi.PullStatus{Serial: serial, Outcome: o, Time: published.Add(at), Check: map[bool]string{true: "http"}[o == agentapi.PullRolledBack]}
	}
	before, after := published.Add(time.Minute), published.Add(2*time.Hour)
	for _, tt := range []struct {
		name     string
		statuses map[string]*agentapi.PullStatus
		now      time.Time
		max      int
		want     channel.Decision
		reads    int
		reason   string
	}{
		{"all healthy", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullDone, time.Minute), "web2": st(9, agentapi.PullDone, time.Minute)}, before, 0, channel.Go, 2, ""},
		{"one still activating", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullActivating, time.Minute), "web2": st(9, agentapi.PullDone, time.Minute)}, before, 0, channel.Wait, 1, "waiting for web1"},
		{"one on the previous serial", map[string]*agentapi.PullStatus{"web1": st(8, agentapi.PullDone, time.Minute), "web2": st(9, agentapi.PullDone, time.Minute)}, before, 0, channel.Wait, 1, "waiting for web1"},
		{"never reported", map[string]*agentapi.PullStatus{"web2": st(9, agentapi.PullDone, time.Minute)}, before, 0, channel.Wait, 1, "waiting for web1"},
		{"one rolled back", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullRolledBack, time.Minute), "web2": st(9, agentapi.PullDone, time.Minute)}, before, 0, channel.Halt, 1, `web1 (rolled-back, health check "http") failed (max_failures 0)`},
		{"one rolled back, one may fail", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullRolledBack, time.Minute), "web2": st(9, agentapi.PullDone, time.Minute)}, before, 1, channel.Go, 2, ""},
		{"refused counts as failed", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullRefused, time.Minute)}, before, 0, channel.Halt, 1, "web1 (refused) failed"},
		{"an earlier wave halted", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullHalted, time.Minute)}, before, 5, channel.Halt, 1, "web1 halted"},
		{"silent past the deadline", map[string]*agentapi.PullStatus{"web2": st(9, agentapi.PullDone, time.Minute)}, after, 0, channel.Halt, 2, "web1 did not report by"},
		{"reported late", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullDone, 90*time.Minute), "web2": st(9, agentapi.PullDone, time.Minute)}, after, 0, channel.Halt, 2, "web1 did not report by"},
		{"written late, done in time", map[string]*agentapi.PullStatus{"web1": func() *agentapi.PullStatus {
			s := st(9, agentapi.PullDone, 90*time.Minute)
			s.OutcomeTime = published.Add(time.Minute)
			return s
		}(), "web2": st(9, agentapi.PullDone, time.Minute)}, after, 0, channel.Go, 2, ""},
		{"late report, looked before the deadline", map[string]*agentapi.PullStatus{"web1": st(9, agentapi.PullDone, 90*time.Minute), "web2": st(9, agentapi.PullDone, time.Minute)}, before, 0, channel.Wait, 1, "waiting for web1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := *rel
			r.MaxFailures = tt.max
			reads := 0
			got, reason, err := channel.Gate(context.Background(), &r, tt.now, func(_ context.Context, h string) (*agentapi.PullStatus, error) {
				reads++
				return tt.statuses[h], nil
			})
			if err != nil || got != tt.want || reads != tt.reads || !strings.Contains(reason, tt.reason) {
				t.Errorf("Gate = %v %q %v after %d reads, want %v containing %q after %d reads", got, reason, err, reads, tt.want, tt.reason, tt.reads)
			}
		})
	}
	// The first wave has nothing to wait for.
	if got, _, _ := channel.Gate(context.Background(), release("web1", 9), time.Now(), nil); got != channel.Go {
		t.Errorf("Gate(wave 1) = %v, want go", got)
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
	if err := channel.PutStatus(ctx, w, st); err != nil {
		t.Fatal(err)
	}
	// Anyone reads it back over plain HTTP (the bucket is public).
	src, _ := channel.OpenSource(srv.Endpoint+"/cache/fleet/channels/prod", nil)
	data, _, err := src.Get(ctx, channel.StatusKey("web1"), "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := channel.DecodeStatus(data)
	if err != nil || got.Serial != 3 || got.Outcome != agentapi.PullDone {
		t.Fatalf("status read back: %+v, %v", got, err)
	}
	if err := w.Put(ctx, channel.ReleaseKey("web1"), []byte("{}")); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("writing a release with status credentials: %v, want 403", err)
	}
	if _, err := srv.Client.StatObject(ctx, "cache", "fleet/channels/prod/hosts/web1.json", minio.StatObjectOptions{}); err == nil {
		t.Fatal("the release was written")
	}
}
