package agentclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/mesh"
)

// bootIDFile holds a host's boot id: it changes with every boot
// (systemd-nspawn gives each container boot its own).
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// RebootOptions tune [Client.Reboot].
type RebootOptions struct {
	// Timeout bounds how long a host has to come back (answer SSH from
	// a new boot) after it was told to reboot (default 5m).
	Timeout time.Duration
	// HealthTimeout bounds how long the host's agent waits for startup
	// to end and for the boot default's units to become active (default
	// 2m); the health checks then run with their own timeouts.
	HealthTimeout time.Duration
}

func (o RebootOptions) timeout() time.Duration { return orDuration(o.Timeout, 5*time.Minute) }
func (o RebootOptions) healthTimeout() time.Duration {
	return orDuration(o.HealthTimeout, 2*time.Minute)
}

func orDuration(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Reboot reboots the host and waits until it runs its boot default
// healthily: `systemctl reboot` over the client's connection, then new
// connections until the host answers from a new boot (its boot id
// changed) within opts.Timeout; then the client's connection again (and
// the run lock, when it was held), and the boot default's agent runs
// `health`, which waits for the units and runs the health checks. A host
// that did not come back is an error of [KindUnreachable]; one that came
// back unhealthy an error of [KindFailed], with the [agentapi.Health].
func (c *Client) Reboot(ctx context.Context, opts RebootOptions, logf func(string)) (*agentapi.Health, error) {
	conn, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	out, err := conn.Output(ctx, []string{"cat", bootIDFile})
	if err != nil {
		return nil, &KindError{Kind: KindUnreachable, Err: fmt.Errorf("reading the boot id: %w", err)}
	}
	old := strings.TrimSpace(string(out))
	logf("rebooting")
	var stderr bytes.Buffer
	err = conn.Run(ctx, []string{"systemctl", "reboot"}, nil, nil, &stderr)
	var ee *mesh.ExitError
	if errors.As(err, &ee) && ee.Signal == "" {
		return nil, &KindError{Kind: KindFailed, Err: fmt.Errorf("systemctl reboot: %w: %s", err, strings.TrimSpace(stderr.String()))}
	}
	// Any other error (a lost connection, or systemctl killed by the
	// shutdown) is the host going down.
	hadLock := c.Locked()
	c.Drop()
	start := time.Now()
	deadline := start.Add(opts.timeout())
	// While the host goes down and comes up, connections fail in every
	// way (refused, reset, closed mid-handshake or mid-command): all are
	// retried until the deadline, except a host key that is wrong, which
	// waiting does not change.
	var lastErr error = errors.New("it still ran the same boot")
	up := false
	for {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !time.Now().Before(deadline) {
			return nil, &KindError{Kind: KindUnreachable, Err: fmt.Errorf("did not come back within %v of the reboot: %v", opts.timeout(), lastErr)}
		}
		if !up {
			id, err := c.bootID(ctx)
			switch {
			case err == nil && id != old && id != "":
				up = true
				logf(fmt.Sprintf("back after %v; waiting for its units and health checks", time.Since(start).Round(time.Second)))
			case err == nil:
				lastErr = errors.New("it still ran the same boot")
			case Classify(err) == KindHostKey:
				return nil, err
			default:
				lastErr = err
			}
		}
		if up {
			// The connection of the run, and its run lock, again. A failed
			// connection is tried again; a failure to take the run lock
			// again is final (the connection is then the run's without it).
			conn, err = c.Conn(ctx)
			switch {
			case err == nil:
			case Classify(err) == KindHostKey, hadLock && !c.Locked() && c.Connected():
				return nil, err
			default:
				lastErr = err
			}
			if err == nil {
				break
			}
		}
		sleepCtx(ctx, time.Second)
	}
	argv := c.command([]agentapi.Agent{agentapi.BootAgent}, agentapi.HealthCmd{StateDir: c.stateDir(), Wait: opts.healthTimeout()}.Args()...)
	out, err = conn.Output(ctx, argv)
	if errors.As(err, &ee) && ee.Code == agentapi.ExitNoAgent {
		return &agentapi.Health{V: agentapi.Version, Healthy: true, Message: "no generation is the boot default"}, nil
	}
	if len(bytes.TrimSpace(out)) == 0 {
		if err == nil {
			err = errors.New("no answer")
		}
		return nil, &KindError{Kind: KindFailed, Err: fmt.Errorf("health after the reboot: %w", err)}
	}
	h := &agentapi.Health{}
	if derr := agentapi.Decode("health", out, h); derr != nil {
		return nil, &KindError{Kind: KindFailed, Err: derr}
	}
	if !h.Healthy {
		return h, &KindError{Kind: KindFailed, Err: fmt.Errorf("not healthy after the reboot: %s", h.Message)}
	}
	logf(fmt.Sprintf("healthy: generation %d runs (%s)", h.Current, h.SystemState))
	return h, nil
}

// bootID reads the host's boot id over a new connection.
func (c *Client) bootID(ctx context.Context) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conn, err := c.Dial(cctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	out, err := conn.Output(cctx, []string{"cat", bootIDFile})
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}
