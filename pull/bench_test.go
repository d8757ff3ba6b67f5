package pull

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/pull/channel"
	"github.com/minio/minio-go/v7"
)

// countingConn counts the bytes a connection carries, both ways.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// idleHost makes a host state in which the channel's release is the one
// the host runs: every poll after the first is an idle one.
func idleHost(b *testing.B, url string, tlsConfig *tls.Config) (newAgent func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Agent) {
	stateDir := b.TempDir()
	l := activation.Layout{StateDir: stateDir, RunDir: filepath.Join(stateDir, "run")}
	pk, _, _ := cache.GenerateKey("ci-1")
	ck, _, _ := cache.GenerateKey("cache-1")
	cfg := &agentapi.PullConfig{V: 1, Host: "web1", Channel: "prod", URL: url,
		PublisherKeys: []string{pk.Public().String()}, CacheURL: "file://" + b.TempDir(), CacheKeys: []string{ck.Public().String()}, StateDir: stateDir}
	_, hostKey, _ := ed25519.GenerateKey(nil)
	return func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Agent {
		// A new process per poll, as the timer runs it: a new client, a
		// new connection.
		client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: dial, TLSClientConfig: tlsConfig}}
		return &Agent{Config: cfg, Layout: l, Client: client, Status: channel.DirStore(b.TempDir()), HostKey: hostKey}
	}
}

// signedRelease is a release for web1 signed by a fresh key (the agent
// refuses it the first time and ignores it after: an idle poll either
// way, since a document is handled once).
func signedRelease(b *testing.B) []byte {
	sk, _, _ := cache.GenerateKey("ci-1")
	rel := &agentapi.Release{V: 1, Channel: "prod", Host: "web1", Serial: 1, System: "/var/lib/deploy/store/00000000000000000000000000000000-system-web1",
		Published: time.Now().UTC(), Wave: 3, Waves: 3, After: []string{"web2", "web3", "web4"}, Deadline: time.Now().Add(time.Hour),
		GitRev: "0123456789abcdef0123456789abcdef01234567", Publisher: "ci", Message: "merge #1234"}
	data, err := channel.Sign(agentapi.DocRelease, rel, sk)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// trustedDocs is a root (one key per role), web1's release signed by its
// publisher key and web1's timestamp naming it, valid for a day.
func trustedDocs(b *testing.B) (root, rel, ts []byte) {
	rk, _, _ := cache.GenerateKey("root-1")
	pk, _, _ := cache.GenerateKey("ci-1")
	tk, _, _ := cache.GenerateKey("ts-1")
	now := time.Now().UTC()
	r := &agentapi.Root{V: 1, Channel: "prod", Version: 1, Expires: now.Add(365 * 24 * time.Hour), Roles: map[string]agentapi.Role{
		agentapi.RoleRoot:      {Keys: []string{rk.Public().String()}, Threshold: 1},
		agentapi.RolePublisher: {Keys: []string{pk.Public().String()}, Threshold: 1},
		agentapi.RoleTimestamp: {Keys: []string{tk.Public().String()}, Threshold: 1},
	}}
	var err error
	if root, err = channel.Sign(agentapi.DocRoot, r, rk); err != nil {
		b.Fatal(err)
	}
	release := &agentapi.Release{V: 1, Channel: "prod", Host: "web1", Serial: 1, System: "/var/lib/deploy/store/00000000000000000000000000000000-system-web1",
		Published: now, Wave: 3, Waves: 3, After: []string{"web2", "web3", "web4"}, Deadline: now.Add(time.Hour),
		GitRev: "0123456789abcdef0123456789abcdef01234567", Publisher: "ci", Message: "merge #1234", RootVersion: 1}
	if rel, err = channel.Sign(agentapi.DocRelease, release, pk); err != nil {
		b.Fatal(err)
	}
	h, err := channel.PayloadHash(rel, agentapi.DocRelease)
	if err != nil {
		b.Fatal(err)
	}
	stamp := &agentapi.Timestamp{V: 1, Channel: "prod", Host: "web1", Version: now.UnixMilli(), Expires: now.Add(24 * time.Hour), Root: 1, Serial: 1, Release: h}
	if ts, err = channel.Sign(agentapi.DocTimestamp, stamp, tk); err != nil {
		b.Fatal(err)
	}
	return root, rel, ts
}

// BenchmarkIdlePoll measures what a poll costs when nothing changed: one
// conditional GET of the host's release answered 304, on a new connection
// (each poll is a new process). It reports requests, connections and bytes
// on the wire (both ways, TCP payload) per poll, and per host per hour at
// the default interval of one minute. "minio" is a real MinIO over plain
// HTTP (what a host behind it sees); "tls" is a Go HTTPS server with a
// self-signed certificate (its handshake is what TLS adds; a CA-signed
// chain adds its certificates' size, commonly 3-5 KB).
//
//	go test ./pull -run '^$' -bench IdlePoll -benchtime 200x
func BenchmarkIdlePoll(b *testing.B) {
	doc := signedRelease(b)
	b.Run("server=minio", func(b *testing.B) {
		srv := miniotest.Start(b, miniotest.Options{})
		srv.Bucket(b, "cache", true)
		if _, err := srv.Client.PutObject(context.Background(), "cache", "fleet/channels/prod/"+channel.ReleaseKey("web1"), bytes.NewReader(doc), int64(len(doc)), minio.PutObjectOptions{ContentType: "application/json"}); err != nil {
			b.Fatal(err)
		}
		benchIdle(b, idleHost(b, srv.Endpoint+"/cache/fleet/channels/prod", nil))
	})
	// With a root: the idle poll's conditional GET is of the host's
	// timestamp, which names the release already handled.
	b.Run("server=minio,root", func(b *testing.B) {
		srv := miniotest.Start(b, miniotest.Options{})
		srv.Bucket(b, "cache", true)
		root, rel, ts := trustedDocs(b)
		put := func(key string, data []byte) {
			if _, err := srv.Client.PutObject(context.Background(), "cache", "fleet/channels/prod/"+key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{ContentType: "application/json"}); err != nil {
				b.Fatal(err)
			}
		}
		put(channel.ReleaseKey("web1"), rel)
		put(channel.TimestampKey("web1"), ts)
		newAgent := idleHost(b, srv.Endpoint+"/cache/fleet/channels/prod", nil)
		benchIdle(b, func(dial func(context.Context, string, string) (net.Conn, error)) *Agent {
			a := newAgent(dial)
			a.Config.PublisherKeys, a.Config.Root = nil, root
			return a
		})
		b.ReportMetric(float64(len(ts)), "timestamp-bytes")
	})
	b.Run("server=go-tls", func(b *testing.B) {
		var requests atomic.Int64
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			w.Header().Set("ETag", `"d41d8cd98f00b204e9800998ecf8427e"`)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
			if r.Header.Get("If-None-Match") == `"d41d8cd98f00b204e9800998ecf8427e"` {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Write(doc)
		}))
		defer srv.Close()
		benchIdle(b, idleHost(b, srv.URL+"/cache/fleet/channels/prod", srv.Client().Transport.(*http.Transport).TLSClientConfig))
	})
}

func benchIdle(b *testing.B, newAgent func(func(context.Context, string, string) (net.Conn, error)) *Agent) {
	var n, conns atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conns.Add(1)
		return countingConn{c, &n}, nil
	}
	ctx := context.Background()
	// The first poll reads the document and handles it.
	if _, err := newAgent(dial).Poll(ctx); err != nil {
		b.Fatal(err)
	}
	n.Store(0)
	conns.Store(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a := newAgent(dial)
		res, err := a.Poll(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if res.Action != "none" {
			b.Fatalf("an idle poll did %q", res.Action)
		}
		a.Client.CloseIdleConnections()
	}
	b.StopTimer()
	perPoll := float64(n.Load()) / float64(b.N)
	b.ReportMetric(float64(conns.Load())/float64(b.N), "conns/poll")
	b.ReportMetric(perPoll, "bytes/poll")
	b.ReportMetric(60, "polls/h@1m")
	b.ReportMetric(perPoll*60/1024, "KiB/h@1m")
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "%s: %.0f bytes per idle poll, %.1f KiB per host per hour at 1m\n", b.Name(), perPoll, perPoll*60/1024)
	}
}
