package console

import (
	"context"
	"encoding/json"
	"html"
	"net"
	"net/http"
	"strings"
	"time"

	_ "embed"

	"github.com/declarative/deploy/agentapi"
)

//go:embed assets/serve.js
var serveJS string

// StatusKey is what the served page reads: the fleet's status, as JSON
// ([FleetStatus]).
const StatusKey = "status.json"

// FleetStatus is what [Server] answers at [StatusKey]: each host's state,
// read over SSH by the fleet session (deploy status) when it was asked.
type FleetStatus struct {
	Target string       `json:"target"`
	Time   time.Time    `json:"time"`
	Hosts  []HostStatus `json:"hosts"`
}

// HostStatus is one host's row: the result of asking it (ok, unreachable,
// command-failed, ...), the error when there was one, and what its agent
// answered.
type HostStatus struct {
	Host   string           `json:"host"`
	Result string           `json:"result"`
	Error  string           `json:"error,omitempty"`
	Status *agentapi.Status `json:"status,omitempty"`
}

// Server is the console of a push-mode fleet (deploy console serve): the
// page, and the fleet's status read anew at each request of it. It
// answers only requests whose Host is a loopback address (so that a
// web page elsewhere cannot read it through a DNS name it rebinds to
// 127.0.0.1) and only GET.
type Server struct {
	// Target names the fleet target (DIR#NAME) on the page.
	Target string
	// Status reads the fleet's status.
	Status func(ctx context.Context) (*FleetStatus, error)
	// Logf logs a failed read (nil: nothing).
	Logf func(format string, args ...any)

	page []byte
}

// ServeHTTP implements [http.Handler].
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !loopbackHost(r.Host) {
		http.Error(w, "this console answers only on a loopback address", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "read only", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	switch r.URL.Path {
	case "/", "/index.html":
		if s.page == nil {
			intro := "The hosts' state as the fleet session reads it over SSH (one request per host, host keys pinned), served by <code>deploy console serve</code> on this machine"
			if s.Target != "" {
				intro += " for <code>" + html.EscapeString(s.Target) + "</code>"
			}
			page, err := render("", "push fleet "+html.EscapeString(s.Target), intro+".", serveJS)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			s.page = page
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(s.page)
	case "/" + StatusKey:
		st, err := s.Status(r.Context())
		if err != nil {
			if s.Logf != nil {
				s.Logf("console: reading the fleet's status: %v", err)
			}
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	default:
		http.NotFound(w, r)
	}
}

// loopbackHost reports whether a request's Host names a loopback address
// (localhost, 127.0.0.0/8, ::1), with or without a port.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Loopback reports whether addr (HOST:PORT, as --listen takes it) is a
// loopback address: the only kind deploy console serve listens on.
func Loopback(addr string) bool {
	h, _, err := net.SplitHostPort(addr)
	return err == nil && h != "" && loopbackHost(h)
}
