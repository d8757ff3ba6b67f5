package mesh_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

// freezer is a TCP proxy that can stop forwarding in both directions while
// keeping the connections open: to both ends the network looks cut.
type freezer struct {
	l      net.Listener
	to     string
	mu     sync.Mutex
	frozen chan struct{} // non-nil while frozen; closed to thaw
	conns  []net.Conn
}

func startFreezer(t *testing.T, to string) *freezer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, to: to}
	t.Cleanup(f.close)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, u)
			f.mu.Unlock()
			go f.pipe(c, u)
			go f.pipe(u, c)
		}
	}()
	return f
}

func (f *freezer) port() int { return f.l.Addr().(*net.TCPAddr).Port }

func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		ch := f.frozen
		f.mu.Unlock()
		if ch != nil {
			<-ch // hold the data, as a cut link would drop it
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen == nil {
		f.frozen = make(chan struct{})
	}
}

func (f *freezer) close() {
	f.l.Close()
	f.mu.Lock()
	if f.frozen != nil {
		close(f.frozen)
		f.frozen = nil
	}
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
}

// bound is how long a test waits for a failure that keepalives should
// report within a few hundred milliseconds; generous, it only guards
// against hanging.
const bound = 60 * time.Second

func TestKeepalive(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	f := startFreezer(t, s.Addr)
	cfg := baseConfig(t, s.ClientKeyFile)
	cfg.KeepaliveInterval = 100 * time.Millisecond
	cfg.KeepaliveMax = 3
	target := s.Target("root")
	target.Port = f.port()
	cl := connect(t, cfg, target)

	// Keepalives do not kill a healthy connection.
	time.Sleep(10 * cfg.KeepaliveInterval)
	if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
		t.Fatalf("Run(true) on a healthy connection = %v", err)
	}

	// A stream that is blocked writing when the network is cut.
	sess, err := cl.Start(context.Background(), []string{"sh", "-c", "cat > /dev/null"})
	if err != nil {
		t.Fatalf("Start = %v", err)
	}
	writeErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(sess.Stdin, newZeros())
		writeErr <- err
	}()
	time.Sleep(50 * time.Millisecond)

	f.freeze()
	runErr := make(chan error, 1)
	go func() { runErr <- cl.Run(context.Background(), []string{"echo", "hi"}, nil, nil, nil) }()

	isKeepalive := func(what string, err error) {
		t.Helper()
		var ue *mesh.UnreachableError
		if !errors.As(err, &ue) || ue.Phase != mesh.PhaseKeepalive {
			t.Errorf("%s after the network froze = %v, want *mesh.UnreachableError in phase keepalive", what, err)
		}
	}
	select {
	case err := <-runErr:
		isKeepalive("Run", err)
	case <-time.After(bound):
		t.Fatalf("Run did not fail within %v of the network freezing", bound)
	}
	select {
	case err := <-writeErr:
		isKeepalive("a blocked stdin write", err)
	case <-time.After(bound):
		t.Fatalf("a blocked write did not fail within %v of the network freezing", bound)
	}
	select {
	case <-cl.Dead():
	default:
		t.Error("Dead() not closed after keepalives failed")
	}
	isKeepalive("Wait", sess.Wait())
	isKeepalive("a later Run", cl.Run(context.Background(), []string{"true"}, nil, nil, nil))
	isKeepalive("Err()", cl.Err())
}

// TestPeerClose: when the server goes away, the client notices at once.
func TestPeerClose(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	cfg := baseConfig(t, s.ClientKeyFile)
	cl := connect(t, cfg, s.Target("root"))
	s.Stop()
	select {
	case <-cl.Dead():
	case <-time.After(bound):
		t.Fatal("Dead() not closed after the server was killed")
	}
	var ue *mesh.UnreachableError
	if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); !errors.As(err, &ue) {
		t.Errorf("Run after the server died = %v, want *mesh.UnreachableError", err)
	}
}

func TestDialTimeout(t *testing.T) {
	// A listener that never completes an SSH handshake.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	_, _, keyFile := newKey(t, "")
	cfg := baseConfig(t, keyFile)
	cfg.HandshakeTimeout = 200 * time.Millisecond
	port := l.Addr().(*net.TCPAddr).Port
	target := mesh.Target{Name: "silent", Address: "127.0.0.1", Port: port, HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}
	_, err = cfg.Connect(context.Background(), target)
	var ue *mesh.UnreachableError
	if !errors.As(err, &ue) || ue.Phase != mesh.PhaseHandshake {
		t.Errorf("Connect to a silent server = %v, want *mesh.UnreachableError in phase handshake", err)
	}
	// Nothing listens: dial.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	target.Port = l2.Addr().(*net.TCPAddr).Port
	l2.Close()
	_, err = cfg.Connect(context.Background(), target)
	if !errors.As(err, &ue) || ue.Phase != mesh.PhaseDial {
		t.Errorf("Connect to a closed port %s = %v, want *mesh.UnreachableError in phase dial", strconv.Itoa(target.Port), err)
	}
}

type zeros struct{}

func newZeros() io.Reader { return zeros{} }

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
