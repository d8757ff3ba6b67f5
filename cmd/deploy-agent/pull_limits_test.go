package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/pull/channel"
	"github.com/minio/minio-go/v7"
	"golang.org/x/crypto/ssh"
)

// limitsEnv is one host in pull mode, run as the real deploy-agent pull
// on this machine (its own state and run directories), reading a real
// MinIO through a proxy that plays the attacker: the bucket holds a
// signed release and its closure, and the proxy misbehaves on the keys it
// is told to.
type limitsEnv struct {
	t        *testing.T
	srv      *miniotest.Server
	bucket   *s3cache.Bucket
	proxy    *httptest.Server
	stateDir string
	runDir   string
	hostKey  string // the authorized-key line of the key that signs the status
	cfg      *agentapi.PullConfig
	cfgFile  string
	system   string
	paths    []string
	// hostile, when it returns true for a request's key, serves the
	// request instead of the proxy; upstream is MinIO's answer.
	mu      sync.Mutex
	hostile func(w http.ResponseWriter, r *http.Request, key string, upstream []byte) bool
}

const limitsPrefix = "fleet/"

func newLimitsEnv(t *testing.T, appSize int, message string) *limitsEnv {
	t.Helper()
	ctx := context.Background()
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "cache", true)
	env := map[string]string{}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	bucket, err := s3cache.Open("s3://cache/fleet?endpoint="+srv.Endpoint+"&region=us-east-1", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	e := &limitsEnv{t: t, srv: srv, bucket: bucket, stateDir: t.TempDir(), runDir: t.TempDir()}

	// The attacker's proxy in front of MinIO.
	up, _ := url.Parse(srv.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(up)
	e.proxy = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimPrefix(r.URL.Path, "/cache/"+limitsPrefix)
		e.mu.Lock()
		h := e.hostile
		e.mu.Unlock()
		if h != nil && r.Method == http.MethodGet {
			o, err := srv.Client.GetObject(r.Context(), "cache", limitsPrefix+key, minio.GetObjectOptions{})
			if err == nil {
				data, err := io.ReadAll(o)
				if err == nil && h(w, r, key, data) {
					return
				}
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(e.proxy.Close)

	// The publisher: a system closure (an app of appSize random bytes,
	// and the system referring to it) pushed to the cache, and a release
	// of it signed with the publisher's key.
	ck, _, _ := cache.GenerateKey("limits-cache-1")
	pub, _, _ := cache.GenerateKey("limits-ci-1")
	local, err := closure.NewLocalStore(t.TempDir(), filepath.Join(e.stateDir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	app := t.TempDir()
	content := make([]byte, appSize)
	rand.Read(content)
	os.WriteFile(filepath.Join(app, "app"), content, 0o644)
	pkg, err := local.AddTree(ctx, app, "app", nil)
	if err != nil {
		t.Fatal(err)
	}
	sys := t.TempDir()
	os.WriteFile(filepath.Join(sys, "manifest.json"), []byte(`{"uses":"`+pkg.Path+`"}`), 0o644)
	si, err := local.AddTree(ctx, sys, "system-web1", []string{pkg.Path})
	if err != nil {
		t.Fatal(err)
	}
	e.system, e.paths = si.Path, []string{pkg.Path, si.Path}
	if _, err := (&cache.Pusher{Cache: bucket, Key: ck}).Push(ctx, local, e.paths); err != nil {
		t.Fatal(err)
	}
	rel := &agentapi.Release{V: agentapi.Version, Channel: "prod", Host: "web1", Serial: 1, System: si.Path, Message: message,
		Published: time.Now().UTC(), Wave: 1, Waves: 1}
	doc, err := channel.Sign(agentapi.DocRelease, rel, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := bucket.WriteObject(ctx, channel.Root("prod")+"/"+channel.ReleaseKey("web1"), doc, "application/json", "", false); err != nil {
		t.Fatal(err)
	}

	// The host: reads through the proxy, reports to MinIO with
	// credentials that may write only the status prefix.
	creds := srv.PrefixCredentials(t, "cache", limitsPrefix+channel.Root("prod")+"/status/")
	credFile := filepath.Join(t.TempDir(), "status.env")
	os.WriteFile(credFile, fmt.Appendf(nil, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n",
		creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken), 0o600)
	cacheURL := e.proxy.URL + "/cache/fleet"
	e.cfg = &agentapi.PullConfig{V: agentapi.Version, Host: "web1", Channel: "prod", URL: channel.URL(cacheURL, "prod"),
		PublisherKeys: []string{pub.Public().String()}, CacheURL: cacheURL, CacheKeys: []string{ck.Public().String()},
		StatusURL:         channel.URL("s3://cache/fleet?endpoint="+srv.Endpoint+"&region=us-east-1", "prod"),
		StatusCredentials: credFile, StateDir: e.stateDir, IntervalMS: 60000}
	// The host's key that signs its status (its SSH host key on a host).
	_, hostKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(hostKey, "")
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.HostKeyFile = filepath.Join(t.TempDir(), "ssh_host_ed25519_key")
	if err := os.WriteFile(e.cfg.HostKeyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(hostKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	e.hostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	e.cfgFile = filepath.Join(t.TempDir(), "deploy-pull.json")
	return e
}

func (e *limitsEnv) setHostile(h func(w http.ResponseWriter, r *http.Request, key string, upstream []byte) bool) {
	e.mu.Lock()
	e.hostile = h
	e.mu.Unlock()
}

// pull runs deploy-agent pull once and returns its exit code and stderr.
func (e *limitsEnv) pull() (int, string) {
	e.t.Helper()
	data, _ := json.Marshal(e.cfg)
	if err := os.WriteFile(e.cfgFile, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(e2e.Agent(e.t), "pull", "--config", e.cfgFile, "--state-dir", e.stateDir, "--run-dir", e.runDir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	e.t.Logf("deploy-agent pull: %v\n%s", err, stderr.String())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return 0, stderr.String()
}

// status reads the host's status from MinIO.
func (e *limitsEnv) status() *agentapi.PullStatus {
	e.t.Helper()
	data, _, err := e.bucket.ReadObject(context.Background(), channel.Root("prod")+"/"+channel.StatusKey("web1"))
	if err != nil {
		e.t.Fatalf("the host's status: %v", err)
	}
	st, err := channel.VerifyStatus(data, "prod", "web1", e.hostKey)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// assertNothingActivated checks that no path of the closure is valid in
// the host's store and that no generation exists.
func (e *limitsEnv) assertNothingActivated() {
	e.t.Helper()
	store := closure.NewTargetStore(e.stateDir)
	for _, p := range e.paths {
		if ok, _ := store.Valid(p); ok {
			e.t.Errorf("%s is valid in the host's store", p)
		}
	}
	if gens, _ := filepath.Glob(filepath.Join(e.stateDir, "generations", "*")); len(gens) > 0 {
		e.t.Errorf("generations made: %v", gens)
	}
}

func isNAR(key string) bool { return strings.HasPrefix(key, "nar/") }

// A NAR file that goes on past the FileSize its narinfo claims is cut off
// as the excess arrives (the proxy's writes fail long before the 256 MiB
// it adds), refused, and reported; nothing becomes valid.
func TestPullRefusesNARLongerThanClaimed(t *testing.T) {
	e := newLimitsEnv(t, 4096, "")
	// served gets, for each NAR served, whether the agent hung up before
	// taking it all.
	served := make(chan bool, 4)
	e.setHostile(func(w http.ResponseWriter, r *http.Request, key string, upstream []byte) bool {
		if !isNAR(key) {
			return false
		}
		w.Write(upstream)
		junk := bytes.Repeat([]byte{0x5a}, 64<<10)
		hungUp := false
		for sent := 0; sent < 256<<20 && !hungUp; sent += len(junk) {
			_, err := w.Write(junk)
			hungUp = err != nil
		}
		served <- hungUp
		return true
	})
	code, stderr := e.pull()
	if code != 0 {
		t.Errorf("deploy-agent pull exited %d, want 0 (a refusal is a finished poll)", code)
	}
	if !strings.Contains(stderr, "closure refused") || !strings.Contains(stderr, "FileSize") || !strings.Contains(stderr, "cut off") {
		t.Errorf("the agent's log does not say the NAR was refused, cut off past its FileSize:\n%s", stderr)
	}
	if !<-served {
		t.Errorf("the agent read all 256 MiB added to the NAR: it was not cut off")
	}
	if st := e.status(); st.Outcome != agentapi.PullRefused || !strings.Contains(st.Message, "FileSize") {
		t.Errorf("status = %s %q, want refused naming FileSize", st.Outcome, st.Message)
	}
	e.assertNothingActivated()
}

// A path whose signed NarSize is above the pull block's max_nar_size is
// refused before its NAR is fetched, and the host says which limit to
// raise.
func TestPullRefusesNARAboveMaxNarSize(t *testing.T) {
	e := newLimitsEnv(t, 64<<10, "")
	e.cfg.MaxNarSize = 16 << 10
	var narRequests int
	var mu sync.Mutex
	e.setHostile(func(w http.ResponseWriter, r *http.Request, key string, upstream []byte) bool {
		if isNAR(key) {
			mu.Lock()
			narRequests++
			mu.Unlock()
		}
		return false
	})
	code, stderr := e.pull()
	if code != 0 {
		t.Errorf("deploy-agent pull exited %d, want 0", code)
	}
	if !strings.Contains(stderr, "max_nar_size") || !strings.Contains(stderr, "16 KiB") {
		t.Errorf("the agent's log does not name the limit (16 KiB) and max_nar_size:\n%s", stderr)
	}
	if st := e.status(); st.Outcome != agentapi.PullRefused || !strings.Contains(st.Message, "max_nar_size") {
		t.Errorf("status = %s %q, want refused naming max_nar_size", st.Outcome, st.Message)
	}
	mu.Lock()
	if narRequests > 1 {
		// The small system path may come first; the app's NAR never.
		t.Errorf("%d NARs requested, want at most the system's", narRequests)
	}
	mu.Unlock()
	e.assertNothingActivated()
}

// A release document larger than max_document_size is refused unread and
// the refusal reported; nothing is fetched or activated.
func TestPullRefusesOversizedRelease(t *testing.T) {
	e := newLimitsEnv(t, 1024, strings.Repeat("a long release message ", 400))
	e.cfg.MaxDocumentSize = 4 << 10
	code, stderr := e.pull()
	if code != 0 {
		t.Errorf("deploy-agent pull exited %d, want 0", code)
	}
	if !strings.Contains(stderr, "refused") || !strings.Contains(stderr, "max_document_size") {
		t.Errorf("the agent's log does not say the release was refused for max_document_size:\n%s", stderr)
	}
	st := e.status()
	if st.Refused == nil || !strings.Contains(st.Refused.Reason, "max_document_size") || !strings.Contains(st.Refused.Reason, "4 KiB") {
		t.Errorf("status refusal = %+v, want one naming max_document_size and 4 KiB", st.Refused)
	}
	if st.Serial != 0 || st.System != "" {
		t.Errorf("status = serial %d system %q, want no release taken", st.Serial, st.System)
	}
	e.assertNothingActivated()
}

// trickle writes data a byte every 50 ms until the client goes away.
func trickle(w http.ResponseWriter, r *http.Request, data []byte) {
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	for i := range data {
		if _, err := w.Write(data[i : i+1]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// A cache that trickles a NAR (a byte every 50 ms: the whole file would
// take seconds) is cut off at the configured deadline (fetch_timeout 1s);
// the poll fails with an error that says so, the status says it waits for
// the next poll, and nothing is activated.
func TestPullDeadlineCutsOffTricklingCache(t *testing.T) {
	e := newLimitsEnv(t, 4096, "")
	e.cfg.FetchTimeoutMS = 1000
	e.setHostile(func(w http.ResponseWriter, r *http.Request, key string, upstream []byte) bool {
		if !isNAR(key) {
			return false
		}
		trickle(w, r, upstream)
		return true
	})
	code, stderr := e.pull()
	if code != 1 {
		t.Errorf("deploy-agent pull exited %d, want 1 (the cache is not usable now)", code)
	}
	if !strings.Contains(stderr, "not fetched within its deadline of 1.") || !strings.Contains(stderr, "fetch_timeout or fetch_min_rate in the pull block") {
		t.Errorf("the agent's log does not name the NAR's deadline (1s and a little for its size) and the settings:\n%s", stderr)
	}
	if st := e.status(); st.Outcome != agentapi.PullWaiting || !strings.Contains(st.Message, "deadline") {
		t.Errorf("status = %s %q, want waiting with the deadline", st.Outcome, st.Message)
	}
	e.assertNothingActivated()
}

// A channel that trickles the release document is cut off at the
// configured deadline too: the poll fails and nothing is taken.
func TestPullDeadlineCutsOffTricklingRelease(t *testing.T) {
	e := newLimitsEnv(t, 1024, "")
	e.cfg.FetchTimeoutMS = 1000
	e.setHostile(func(w http.ResponseWriter, r *http.Request, key string, upstream []byte) bool {
		if !strings.HasSuffix(key, channel.ReleaseKey("web1")) {
			return false
		}
		trickle(w, r, upstream)
		return true
	})
	code, stderr := e.pull()
	if code != 1 {
		t.Errorf("deploy-agent pull exited %d, want 1", code)
	}
	if !strings.Contains(stderr, "reading the release") || !strings.Contains(stderr, "deadline of 1s") || !strings.Contains(stderr, "fetch_timeout") {
		t.Errorf("the agent's log does not say the release was cut off at the 1s deadline:\n%s", stderr)
	}
	e.assertNothingActivated()
}
