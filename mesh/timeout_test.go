package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// hangingDialer never connects: it waits for ctx, or fails with the
// network's own timeout error first (as a net.Dialer does when its
// deadline and the context's race).
type hangingDialer struct{ netTimeout bool }

type netTimeout struct{}

func (netTimeout) Error() string   { return "i/o timeout" }
func (netTimeout) Timeout() bool   { return true }
func (netTimeout) Temporary() bool { return true }

func (d hangingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.netTimeout {
		return nil, &net.OpError{Op: "dial", Net: network, Err: netTimeout{}}
	}
	<-ctx.Done()
	return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
}

// A host that does not answer is reported the same way by every command
// (a deploy's connection, keyscan), however the dial's timeout shows.
func TestDialTimeoutWording(t *testing.T) {
	for _, netTO := range []bool{false, true} {
		cfg := &Config{Dialer: hangingDialer{netTimeout: netTO}, DialTimeout: 50 * time.Millisecond, SSHConfigFile: "none"}
		_, connErr := cfg.Connect(context.Background(), Target{Name: "web1", Address: "192.0.2.1", HostKey: "none"})
		_, scanErr := Keyscan(context.Background(), cfg, "192.0.2.1", 22)
		for what, err := range map[string]error{"Connect": connErr, "Keyscan": scanErr} {
			var ue *UnreachableError
			if !errors.As(err, &ue) || ue.Phase != PhaseDial {
				t.Errorf("%s (net timeout %v): %v, want an *UnreachableError in phase dial", what, netTO, err)
				continue
			}
			want := fmt.Sprintf("dial 192.0.2.1:22: timed out after %v", 50*time.Millisecond)
			if !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "i/o timeout") {
				t.Errorf("%s (net timeout %v): %q, want it to say %q", what, netTO, err, want)
			}
		}
	}
}
