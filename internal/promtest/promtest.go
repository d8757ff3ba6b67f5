// Package promtest runs a real Prometheus server for tests: Debian's
// prometheus binary, which the project's set-up unpacks (make deps, without
// installing the package or starting its daemon), on a loopback or
// test-network address, with its own storage directory, scraping the
// targets a test gives every second, and stopped when the test ends.
package promtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/internal/testenv"
)

// Binary finds the Prometheus server: $DEPLOY_PROMETHEUS, else the one make
// deps unpacked under /var/cache/deploy-tools. Without one the test skips
// (fails under CI=true).
func Binary(t testing.TB) string {
	t.Helper()
	return testenv.CachedTool(t, "DEPLOY_PROMETHEUS", "prometheus-*/prometheus", "the Prometheus server (Debian's, unpacked)")
}

// Options say where the server runs and what it scrapes.
type Options struct {
	// Host is the address to listen on (default 127.0.0.1).
	Host string
	// Command makes the server's command (default exec.Command): for
	// running it inside a test network's namespace.
	Command func(name string, args ...string) *exec.Cmd
	// Dial reaches the server from the test (default a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Targets are the host:port addresses scraped (path /metrics) every
	// second, as job "app".
	Targets []string
}

// Server is a running Prometheus.
type Server struct {
	// URL is "http://HOST:PORT", the base of its HTTP API.
	URL string

	client *http.Client
}

// Start starts a server with a fresh storage directory.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := Binary(t)
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Command == nil {
		opts.Command = exec.Command
	}
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{}).DialContext
	}
	dir := t.TempDir()
	targets, _ := json.Marshal(append([]string{}, opts.Targets...))
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: app
    static_configs:
      - targets: %s
`, targets), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Server{client: &http.Client{Transport: &http.Transport{DialContext: opts.Dial}, Timeout: 5 * time.Second}}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		addr := net.JoinHostPort(opts.Host, strconv.Itoa(20000+rand.IntN(40000)))
		data := filepath.Join(dir, fmt.Sprintf("data-%d", attempt))
		cmd := opts.Command(bin, "--config.file="+config, "--storage.tsdb.path="+data, "--web.listen-address="+addr,
			"--storage.tsdb.retention.time=1h", "--log.level=warn")
		logFile, _ := os.Create(filepath.Join(dir, fmt.Sprintf("prometheus-%d.log", attempt)))
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatalf("promtest: starting %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		s.URL = "http://" + addr
		if err := s.waitReady(exited); err != nil {
			cmd.Process.Kill()
			<-exited
			log, _ := os.ReadFile(logFile.Name())
			lastErr = fmt.Errorf("%v\n%s", err, log)
			continue
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		return s
	}
	t.Fatalf("promtest: the server did not start: %v", lastErr)
	return nil
}

func (s *Server) waitReady(exited chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("prometheus exited: %v", err)
		default:
		}
		resp, err := s.client.Get(s.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("prometheus at %s not ready within 60s", s.URL)
}

// Query returns the values of an instant query's vector or scalar (as
// Prometheus writes them), by series labels.
func (s *Server) Query(t testing.TB, query string) map[string]string {
	t.Helper()
	resp, err := s.client.Get(s.URL + "/api/v1/query?" + url.Values{"query": {query}}.Encode())
	if err != nil {
		t.Fatalf("promtest: query %q: %v", query, err)
	}
	defer resp.Body.Close()
	var ans struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil || ans.Status != "success" {
		t.Fatalf("promtest: query %q: %v %s", query, err, ans.Error)
	}
	out := map[string]string{}
	switch ans.Data.ResultType {
	case "scalar":
		var v [2]any
		json.Unmarshal(ans.Data.Result, &v)
		out[""] = fmt.Sprint(v[1])
	case "vector":
		var vec []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		json.Unmarshal(ans.Data.Result, &vec)
		for _, e := range vec {
			var labels []string
			for k, v := range e.Metric {
				labels = append(labels, k+"="+v)
			}
			out[strings.Join(labels, ",")] = fmt.Sprint(e.Value[1])
		}
	}
	return out
}

// WaitUp waits until every target is scraped successfully (up == 1). The
// limit only keeps a broken set-up from hanging the suite.
func (s *Server) WaitUp(t testing.TB, targets ...string) {
	t.Helper()
	s.waitTargets(t, "up", targets, func(v string) bool { return v == "1" })
}

// WaitScraped waits until Prometheus has tried to scrape every target at
// least once (up has a sample, 0 or 1): from then on a query of up for
// the target is never empty. A Prometheus that has just started, on a
// loaded machine, may take seconds to get there.
func (s *Server) WaitScraped(t testing.TB, targets ...string) {
	t.Helper()
	s.waitTargets(t, "scraped", targets, func(string) bool { return true })
}

func (s *Server) waitTargets(t testing.TB, what string, targets []string, ok func(up string) bool) {
	t.Helper()
	limit := time.Now().Add(2 * time.Minute)
	for {
		n := 0
		for _, target := range targets {
			if v := s.Query(t, fmt.Sprintf("up{instance=%q}", target)); len(v) == 1 {
				for _, val := range v {
					if ok(val) {
						n++
					}
				}
			}
		}
		if n == len(targets) {
			return
		}
		if time.Now().After(limit) {
			t.Fatalf("promtest: %d of the targets %v %s after 2 minutes", n, targets, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
