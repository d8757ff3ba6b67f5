// Package tailnettest runs a whole tailnet inside a test: Tailscale's test
// coordination server (testcontrol) and a DERP relay with STUN, all on
// 127.0.0.1, plus test-only tailnet nodes inside test hosts (package vmtest)
// that forward tailnet port 22 to the host's own sshd. The operator side is
// the production [tailnet.Transport].
//
// # Addresses
//
// The control server and DERP listen on 127.0.0.1 in the test process, and
// the network map names them by those addresses. A node inside a test host
// cannot reach the test process's loopback: for it, [Tailnet.InstallNode]
// also serves both on listeners in the hosts' network (vmtest's
// Network.Listen, at vmtest.ControllerAddr), and the node program forwards
// its own 127.0.0.1 ports to them. So every node uses the same URLs, and
// traffic stays on loopback and on the test hosts' private network.
//
// # Paths
//
// There is no direct UDP path between the test process (root network
// namespace) and a host (its own namespace): every packet between the
// operator and a host is relayed by the in-process DERP server. To keep
// magicsock from trying paths that would leave the machine, [Tailnet.Start]
// sets, for the duration of the test, Tailscale's debug knobs
// TS_DISABLE_PORTMAPPER (no UPnP/NAT-PMP/PCP probes of the real gateway),
// TS_DEBUG_OMIT_LOCAL_ADDRS and TS_DEBUG_NEVER_DIRECT_UDP (no disco pings to
// a host's 10.231/16 address from the root namespace, which has no route
// there but a default route elsewhere); the nodes in hosts run with the same
// knobs. Because they are process-wide, tests using this package must not
// run in parallel with each other.
package tailnettest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"tailscale.com/derp/derpserver"
	"tailscale.com/envknob"
	"tailscale.com/net/netns"
	"tailscale.com/net/stun/stuntest"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"

	"github.com/declarative/deploy/mesh/tailnet"
)

// MagicDNSDomain is the tailnet's DNS suffix: host h1 is also
// "h1.tailnet.test".
const MagicDNSDomain = "tailnet.test"

// Tailnet is a running in-process tailnet.
type Tailnet struct {
	// ControlURL is the coordination server, "http://127.0.0.1:PORT".
	ControlURL string
	// AuthKey is the key every node must present.
	AuthKey string
	// Control is the coordination server, for inspection.
	Control *testcontrol.Server

	controlPort int
	derpPort    int
	controlH    http.Handler
	derpH       http.Handler
	derpTLS     *tls.Config
	logf        func(format string, args ...any)

	exposed map[Listener]exposure // control and DERP as served to hosts, per Listener
	nodeBin string                // the built tsnode program
}

type exposure struct{ control, derp string } // host-reachable addresses

// Start starts a control server, a DERP relay and a STUN server on
// 127.0.0.1, stopped by t.Cleanup. It sets the process-wide knobs described
// in the package documentation for the duration of the test.
func Start(t testing.TB) *Tailnet {
	t.Helper()
	for k, v := range nodeEnv {
		setKnob(t, k, v)
	}
	// As tsnet's own tests do: no SO_MARK / interface binding for the
	// sockets of the test process's nodes.
	netns.SetEnabled(false)
	t.Cleanup(func() { netns.SetEnabled(true) })

	tn := &Tailnet{logf: t.Logf, exposed: map[Listener]exposure{}}
	// DERP over TLS (self-signed; the DERP map marks it InsecureForTests).
	d := derpserver.New(key.NewNode(), func(string, ...any) {})
	tn.derpH = derpserver.Handler(d)
	ds := httptest.NewUnstartedServer(tn.derpH)
	ds.Listener.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tailnettest: listen for DERP: %v", err)
	}
	ds.Listener = ln
	ds.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){} // HTTP/1.1 only: DERP upgrades
	ds.StartTLS()
	tn.derpTLS = ds.TLS.Clone()
	tn.derpTLS.NextProtos = []string{"http/1.1"}
	tn.derpPort = ln.Addr().(*net.TCPAddr).Port
	stunAddr, stunStop := stuntest.ServeWithPacketListener(t, loopbackPackets{})
	t.Cleanup(func() {
		ds.CloseClientConnections()
		ds.Close()
		d.Close()
		stunStop()
	})

	var kb [16]byte
	rand.Read(kb[:])
	tn.AuthKey = "tskey-test-" + hex.EncodeToString(kb[:])
	tn.Control = &testcontrol.Server{
		DERPMap: &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
			1: {RegionID: 1, RegionCode: "test", Nodes: []*tailcfg.DERPNode{{
				Name: "t1", RegionID: 1,
				HostName: "127.0.0.1", IPv4: "127.0.0.1", IPv6: "none",
				DERPPort: tn.derpPort, STUNPort: stunAddr.Port, STUNTestIP: "127.0.0.1",
				InsecureForTests: true,
			}}},
		}},
		DNSConfig:        &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain:   MagicDNSDomain,
		RequireAuthKey:   tn.AuthKey,
		AllNodesSameUser: true,
		Logf:             func(string, ...any) {},
	}
	tn.controlH = tn.Control
	cln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tailnettest: listen for control: %v", err)
	}
	tn.controlPort = cln.Addr().(*net.TCPAddr).Port
	tn.ControlURL = "http://127.0.0.1:" + strconv.Itoa(tn.controlPort)
	tn.Control.ExplicitBaseURL = tn.ControlURL
	cs := &http.Server{Handler: tn.controlH}
	go cs.Serve(cln)
	t.Cleanup(func() { cs.Close() })
	t.Logf("tailnettest: control %s, DERP 127.0.0.1:%d, STUN %v", tn.ControlURL, tn.derpPort, stunAddr)
	return tn
}

// nodeEnv are the knobs of every node: the test process's and those in
// hosts.
var nodeEnv = map[string]string{
	"TS_DISABLE_PORTMAPPER":     "1",
	"TS_DEBUG_OMIT_LOCAL_ADDRS": "1",
	"TS_DEBUG_NEVER_DIRECT_UDP": "1",
}

func setKnob(t testing.TB, k, v string) {
	if tt, ok := t.(*testing.T); ok {
		envknob.SetenvForTest(tt, k, v)
		return
	}
	prev := envknob.String(k)
	envknob.Setenv(k, v)
	t.Cleanup(func() { envknob.Setenv(k, prev) })
}

// Transport returns the production operator-side transport for this
// tailnet, not yet started, with its state in a temporary directory.
func (tn *Tailnet) Transport(t testing.TB, hostname string) *tailnet.Transport {
	t.Helper()
	tr := &tailnet.Transport{
		Dir:        t.TempDir(),
		Hostname:   hostname,
		ControlURL: tn.ControlURL,
		AuthKey:    tn.AuthKey,
		Getenv:     func(string) string { return "" },
		Logf:       t.Logf,
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// Listener is where test hosts reach the test process: vmtest.Network.
type Listener interface {
	Listen(ctx context.Context, network, address string) (net.Listener, error)
}

// expose serves control and DERP on listeners of lis at addr (the
// controller's address in the hosts' network), once per lis.
func (tn *Tailnet) expose(t testing.TB, lis Listener, addr string) exposure {
	t.Helper()
	if e, ok := tn.exposed[lis]; ok {
		return e
	}
	ctx := context.Background()
	cln, err := lis.Listen(ctx, "tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("tailnettest: listen for control in the hosts' network: %v", err)
	}
	dln, err := lis.Listen(ctx, "tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("tailnettest: listen for DERP in the hosts' network: %v", err)
	}
	cs := &http.Server{Handler: tn.controlH}
	ds := &http.Server{Handler: tn.derpH}
	go cs.Serve(cln)
	go ds.Serve(tls.NewListener(dln, tn.derpTLS))
	t.Cleanup(func() { cs.Close(); ds.Close() })
	e := exposure{control: cln.Addr().String(), derp: dln.Addr().String()}
	tn.exposed[lis] = e
	tn.logf("tailnettest: control and DERP for hosts at %s, %s", e.control, e.derp)
	return e
}

// loopbackPackets makes stuntest listen on 127.0.0.1 only.
type loopbackPackets struct{}

func (loopbackPackets) ListenPacket(ctx context.Context, network, _ string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, "127.0.0.1:0")
}

func (tn *Tailnet) String() string {
	return fmt.Sprintf("tailnet(control %s, DERP 127.0.0.1:%d)", tn.ControlURL, tn.derpPort)
}
