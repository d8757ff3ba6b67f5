package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
)

func TestLoopback(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:8080", true},
		{"127.0.0.2:0", true},
		{"[::1]:8080", true},
		{"localhost:8080", true},
		{"0.0.0.0:8080", false},
		{":8080", false},
		{"[::]:8080", false},
		{"192.0.2.1:8080", false},
		{"example.com:8080", false},
		{"127.0.0.1", false}, // no port
	} {
		if got := Loopback(tt.addr); got != tt.want {
			t.Errorf("Loopback(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// The push console answers GET of its page and of status.json, on a
// loopback Host only.
func TestServer(t *testing.T) {
	calls := 0
	s := &Server{Target: "fleet#<prod>", Status: func(context.Context) (*FleetStatus, error) {
		calls++
		if calls > 1 {
			return nil, errors.New("the fleet could not be read")
		}
		return &FleetStatus{Target: "fleet#prod", Hosts: []HostStatus{{Host: "web1", Result: "ok", Status: &agentapi.Status{Current: 3}}}}, nil
	}}
	do := func(method, host, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		r.Host = host
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	if w := do("GET", "127.0.0.1:8080", "/"); w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") ||
		!strings.Contains(w.Body.String(), "fleet#&lt;prod&gt;") || strings.Contains(w.Body.String(), "fleet#<prod>") {
		t.Errorf("GET /: %d %q, want the page with the target escaped", w.Code, w.Header().Get("Content-Type"))
	}
	w := do("GET", "localhost:8080", "/status.json")
	var fs FleetStatus
	if err := json.Unmarshal(w.Body.Bytes(), &fs); w.Code != 200 || err != nil || len(fs.Hosts) != 1 || fs.Hosts[0].Status.Current != 3 {
		t.Errorf("GET /status.json: %d %s", w.Code, w.Body)
	}
	if w := do("GET", "[::1]:8080", "/status.json"); w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), "could not be read") {
		t.Errorf("GET /status.json when the fleet cannot be read: %d %s, want 502 and why", w.Code, w.Body)
	}
	for _, tt := range []struct {
		method, host, path string
		want               int
	}{
		{"GET", "console.example.com", "/status.json", http.StatusForbidden},
		{"GET", "192.0.2.1:8080", "/", http.StatusForbidden},
		{"POST", "127.0.0.1:8080", "/status.json", http.StatusMethodNotAllowed},
		{"GET", "127.0.0.1:8080", "/channel.json", http.StatusNotFound},
	} {
		if w := do(tt.method, tt.host, tt.path); w.Code != tt.want {
			t.Errorf("%s %s (Host %s) = %d, want %d", tt.method, tt.path, tt.host, w.Code, tt.want)
		}
	}
	if calls != 2 {
		t.Errorf("the fleet was read %d times, want 2 (once per GET of status.json that was answered)", calls)
	}
}
