package mesh

import (
	"context"
	"errors"
	"time"
)

// ConnectRetry is [Config.Connect], repeated while the host is unreachable
// (an *[UnreachableError] in phase dial, handshake or connection) until it
// succeeds or ctx is done; ctx's deadline is the window in which a transient
// outage (a peer's tailnet node restarting, a link flapping) is ridden out,
// such as the confirmation window of an activation. Host key errors and
// refused authentication are returned at once: retrying cannot fix them.
// When ctx ends first, the error is the last attempt's.
func (c *Config) ConnectRetry(ctx context.Context, t Target) (*Client, error) {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		cl, err := c.Connect(ctx, t)
		if err == nil {
			if attempt > 1 {
				c.logf("reached %q after %d attempts", t.Name, attempt)
			}
			return cl, nil
		}
		var ue *UnreachableError
		if !errors.As(err, &ue) || (ue.Phase != PhaseDial && ue.Phase != PhaseHandshake && ue.Phase != PhaseConn) {
			return nil, err
		}
		c.logf("connect %q (attempt %d): %v; retrying", t.Name, attempt, err)
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, err
		case <-timer.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
