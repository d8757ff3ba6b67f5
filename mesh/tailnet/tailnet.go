// Package tailnet reaches hosts through a Tailscale tailnet: it embeds a
// tsnet node in the operator's process and dials hosts by their tailnet name
// or address, so SSH (package mesh) runs over the tailnet unchanged, host
// keys still verified.
//
//	tn := &tailnet.Transport{Logf: logf}       // TS_AUTHKEY, Tailscale's control server
//	if err := tn.Start(ctx); err != nil { ... } // joins the tailnet
//	defer tn.Close()
//	cfg := &mesh.Config{Dialer: tn}
//	cl, err := cfg.Connect(ctx, mesh.Target{Name: "web1", Address: "web1", HostKey: "ssh-ed25519 AAAA..."})
//
// # The node
//
// A [Transport] is one tsnet node. Its state (node key, tsnet's files) lives
// in Transport.Dir, by default <user config dir>/deploy/tailnet/<profile>
// (~/.config/deploy/tailnet/default on Linux), created 0700. The node is
// ephemeral unless Transport.Persistent is set: the control server removes
// it some time after it goes offline, so CI runs do not pile up machines.
// The auth key comes from Transport.AuthKey, else the file
// Transport.AuthKeyFile, else $TS_AUTHKEY; a node whose state is already
// logged in needs none. Without a key and without state, Start waits for an
// interactive login whose URL it reports through Transport.Logf. The control
// server is Transport.ControlURL, else $TS_CONTROL_URL, else Tailscale's;
// any coordination server that speaks Tailscale's protocol (Headscale, say)
// works.
//
// # Logs
//
// Nothing is uploaded to Tailscale's log service unless Transport.LogUpload
// is set. tsnet has no per-node switch for that: without LogUpload, Start
// calls tailscale's process-wide logtail.Disable, which drops every log
// entry before it is buffered (no environment variable is changed). Once
// disabled, uploads stay off for the rest of the process, also for a later
// Transport with LogUpload set. tsnet's own diagnostics go to
// Transport.DebugLogf (verbose; nil discards them); what an operator must
// see (login URLs, redials) goes to Transport.Logf.
//
// # Dialing
//
// [Transport.DialContext] satisfies mesh.Dialer. A dial that fails (the
// peer's node is restarting, the path is being set up, the name is not yet
// in the node's network map) is retried with backoff until ctx is done, so
// the caller's deadline (mesh.Config.DialTimeout, or the confirmation
// window) bounds how long a tailnet hiccup is ridden out. Use
// mesh.Config.ConnectRetry to ride out a hiccup that also breaks the SSH
// handshake.
package tailnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"tailscale.com/logtail"
	"tailscale.com/tsnet"
)

// DefaultProfile is the profile used when Transport.Profile is empty.
const DefaultProfile = "default"

// Transport is an embedded tailnet node that dials hosts on the tailnet. Its
// zero value joins Tailscale's tailnet with $TS_AUTHKEY as an ephemeral node
// named "deploy-<hostname>". Fields must not change after Start.
type Transport struct {
	// Profile names the node's state directory under the user's config
	// directory, so one operator can be on several tailnets; "" means
	// [DefaultProfile]. Ignored when Dir is set.
	Profile string
	// Dir is the node's state directory; "" means
	// <user config dir>/deploy/tailnet/<Profile>.
	Dir string
	// Hostname is the node's name on the tailnet; "" means
	// "deploy-" + the machine's host name.
	Hostname string
	// ControlURL is the coordination server; "" means $TS_CONTROL_URL,
	// else Tailscale's.
	ControlURL string
	// AuthKey authenticates a new node. "" means the contents of
	// AuthKeyFile, else $TS_AUTHKEY. It is never logged.
	AuthKey string
	// AuthKeyFile is a file holding the auth key (surrounding white space
	// ignored).
	AuthKeyFile string
	// Persistent registers a regular node instead of an ephemeral one.
	Persistent bool
	// LogUpload allows tsnet to upload its logs to Tailscale's log
	// service. See the package documentation.
	LogUpload bool
	// Getenv reads TS_AUTHKEY, TS_CONTROL_URL, XDG_CONFIG_HOME and HOME;
	// nil means [os.Getenv].
	Getenv func(string) string
	// Logf receives what the operator should see: login URLs, redials.
	// nil discards it.
	Logf func(format string, args ...any)
	// DebugLogf receives tsnet's verbose backend logs; nil discards them.
	DebugLogf func(format string, args ...any)

	mu  sync.Mutex
	srv *tsnet.Server
	up  bool
}

func (t *Transport) getenv(k string) string {
	if t.Getenv != nil {
		return t.Getenv(k)
	}
	return os.Getenv(k)
}

func (t *Transport) logf(format string, args ...any) {
	if t.Logf != nil {
		t.Logf(format, args...)
	}
}

// StateDir returns the node's state directory.
func (t *Transport) StateDir() (string, error) {
	if t.Dir != "" {
		return t.Dir, nil
	}
	p := t.Profile
	if p == "" {
		p = DefaultProfile
	}
	if p == "." || p == ".." || strings.ContainsAny(p, `/\`) {
		return "", fmt.Errorf("tailnet profile %q: not a plain name", p)
	}
	var base string
	if t.Getenv == nil {
		d, err := os.UserConfigDir()
		if err != nil {
			return "", fmt.Errorf("tailnet state directory: %w", err)
		}
		base = d
	} else if x := t.getenv("XDG_CONFIG_HOME"); filepath.IsAbs(x) {
		base = x
	} else if h := t.getenv("HOME"); h != "" {
		base = filepath.Join(h, ".config")
	} else {
		return "", errors.New("tailnet state directory: neither $XDG_CONFIG_HOME nor $HOME is set")
	}
	return filepath.Join(base, "deploy", "tailnet", p), nil
}

func (t *Transport) authKey() (string, error) {
	if t.AuthKey != "" {
		return t.AuthKey, nil
	}
	if t.AuthKeyFile != "" {
		b, err := os.ReadFile(t.AuthKeyFile)
		if err != nil {
			// The error of ReadFile names the file, never its contents.
			return "", fmt.Errorf("read tailnet auth key: %w", err)
		}
		k := strings.TrimSpace(string(b))
		if k == "" {
			return "", fmt.Errorf("read tailnet auth key %q: the file is empty", t.AuthKeyFile)
		}
		return k, nil
	}
	return t.getenv("TS_AUTHKEY"), nil
}

func (t *Transport) hostname() string {
	if t.Hostname != "" {
		return t.Hostname
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "deploy"
	}
	h, _, _ = strings.Cut(h, ".")
	return "deploy-" + h
}

// Start brings the node up and waits until it is connected to the tailnet,
// bounded by ctx. Calling it again after success does nothing; after a
// failure, it tries again with a fresh node.
func (t *Transport) Start(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.up {
		return nil
	}
	if t.srv != nil {
		t.srv.Close()
		t.srv = nil
	}
	dir, err := t.StateDir()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tailnet state directory: %w", err)
	}
	key, err := t.authKey()
	if err != nil {
		return err
	}
	control := t.ControlURL
	if control == "" {
		control = t.getenv("TS_CONTROL_URL")
	}
	if !t.LogUpload {
		logtail.Disable()
	}
	debugf := t.DebugLogf
	if debugf == nil {
		debugf = func(string, ...any) {}
	}
	srv := &tsnet.Server{
		Dir:        dir,
		Hostname:   t.hostname(),
		ControlURL: control,
		AuthKey:    key,
		Ephemeral:  !t.Persistent,
		Logf:       debugf,
		UserLogf:   func(format string, args ...any) { t.logf("tailnet: "+format, args...) },
	}
	t.srv = srv
	if _, err := srv.Up(ctx); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		where := control
		if where == "" {
			where = "Tailscale's control server"
		}
		return fmt.Errorf("join tailnet as %q via %q: %w", srv.Hostname, where, err)
	}
	t.up = true
	return nil
}

func (t *Transport) server(ctx context.Context) (*tsnet.Server, error) {
	if err := t.Start(ctx); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.srv == nil {
		return nil, errors.New("tailnet: transport closed")
	}
	return t.srv, nil
}

// Addrs returns the node's own tailnet addresses (IPv4, IPv6); they are
// invalid before Start.
func (t *Transport) Addrs() (ip4, ip6 netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.up {
		return netip.Addr{}, netip.Addr{}
	}
	return t.srv.TailscaleIPs()
}

// Close takes the node off the tailnet. An ephemeral node is removed by
// the control server once it has been offline for a while.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.srv == nil {
		return nil
	}
	err := t.srv.Close()
	t.srv, t.up = nil, false
	return err
}

// Retry pacing of DialContext.
const (
	firstBackoff  = 100 * time.Millisecond
	maxBackoff    = 2 * time.Second
	attemptBudget = 5 * time.Second
)

// DialContext connects to addr ("host:port", host a tailnet name such as
// "web1" or "web1.example.ts.net", or a tailnet address) over the tailnet,
// starting the node first if needed. Failed attempts are retried with
// backoff until ctx is done; the error then names the last cause. network
// must be "tcp", "tcp4" or "tcp6".
func (t *Transport) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("tailnet dial %q: network %q not supported", addr, network)
	}
	srv, err := t.server(ctx)
	if err != nil {
		return nil, fmt.Errorf("tailnet dial %q: %w", addr, err)
	}
	backoff := firstBackoff
	var last error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, attemptBudget)
		c, err := srv.Dial(actx, network, addr)
		cancel()
		if err == nil {
			if attempt > 1 {
				t.logf("tailnet: reached %s after %d attempts", addr, attempt)
			}
			return c, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
		if attempt == 1 {
			t.logf("tailnet: dial %s: %v; retrying", addr, err)
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		timer.Stop()
		if ctx.Err() != nil {
			break
		}
		backoff = min(2*backoff, maxBackoff)
	}
	return nil, fmt.Errorf("tailnet dial %q: %w (last attempt: %v)", addr, ctx.Err(), last)
}
