package agentclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
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
	before, err := readBootState(ctx, conn, c.stateDir())
	if err != nil {
		return nil, &KindError{Kind: KindUnreachable, Err: fmt.Errorf("reading the boot id: %w", err)}
	}
	old := before.BootID
	if t := before.Trial; t != nil && path.Base(before.Boot) != path.Base(t.System) {
		// A record whose generation is not the boot default: the guard
		// drops it at boot; nothing is on trial.
		before.Trial = nil
	}
	if t := before.Trial; t != nil {
		logf(fmt.Sprintf("generation %d boots as a trial: after %d boots that do not confirm within %v, the host boots generation %d again", t.Generation, t.MaxAttempts-len(t.Attempts), t.Timeout, t.Previous))
	}
	c.leaseLock(ctx, conn, before, opts, logf)
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
		if up && before.Trial != nil {
			// The trial is followed over connections of its own: its boot
			// may have no agent that could take the run lock again.
			break
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
	var fellBack *RolledBackError
	if before.Trial != nil {
		if fellBack, err = c.followTrial(ctx, before.Trial, opts, logf); err != nil {
			return nil, err
		}
		// The trial is decided: the connection of the run, and its run
		// lock, again (the host runs an agent that can hold it now).
		if conn, err = c.reconnect(ctx, deadline.Add(opts.timeout())); err != nil {
			if fellBack != nil {
				return nil, fmt.Errorf("%w (then: %v)", fellBack, err)
			}
			return nil, err
		}
	}
	h, err := c.health(ctx, conn, opts)
	if fellBack != nil {
		// The fallback is the outcome; the health says how the host is on
		// the generation it boots again.
		return h, fellBack
	}
	if err != nil {
		return h, err
	}
	logf(fmt.Sprintf("healthy: generation %d runs (%s)", h.Current, h.SystemState))
	return h, nil
}

// health runs the boot default's agent's health on conn.
func (c *Client) health(ctx context.Context, conn *mesh.Client, opts RebootOptions) (*agentapi.Health, error) {
	var ee *mesh.ExitError
	argv := c.command([]agentapi.Agent{agentapi.BootAgent}, agentapi.HealthCmd{StateDir: c.stateDir(), Wait: opts.healthTimeout()}.Args()...)
	out, err := conn.Output(ctx, argv)
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
	return h, nil
}

// readBootState reads the host's boot id, pending trial and last fallback
// ([agentapi.BootStateCmd]: no agent runs).
func readBootState(ctx context.Context, conn *mesh.Client, stateDir string) (*agentapi.BootState, error) {
	out, err := conn.Output(ctx, agentapi.BootStateCmd(stateDir))
	if err != nil {
		return nil, err
	}
	st := &agentapi.BootState{}
	if err := json.Unmarshal(out, st); err != nil {
		return nil, fmt.Errorf("the host's boot state %q: %w", out, err)
	}
	st.BootID = strings.TrimSpace(st.BootID)
	return st, nil
}

// followTrial follows trial t after the reboot, over new connections
// (the host reboots itself between attempts), until it is decided: the
// host confirmed it (nil, nil), or fell back to the previous generation
// and booted it (a *[RolledBackError] naming why), within the
// trial's attempts, each given its timeout and opts.Timeout to come back.
func (c *Client) followTrial(ctx context.Context, t *agentapi.BootTrial, opts RebootOptions, logf func(string)) (*RolledBackError, error) {
	left := t.MaxAttempts - len(t.Attempts)
	if left < 1 {
		left = 1
	}
	limit := time.Duration(left) * (t.Timeout + opts.timeout())
	deadline := time.Now().Add(limit)
	said := ""
	var lastErr error
	for {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		conn, err := c.Dial(cctx)
		var st *agentapi.BootState
		if err == nil {
			st, err = readBootState(cctx, conn, c.stateDir())
			conn.Close()
		}
		cancel()
		switch {
		case err == nil && st.Rollback != nil && st.Rollback.Trial == t.ID && st.BootID == st.Rollback.BootID:
			// Decided in this boot, which reboots into the previous
			// generation next.
		case err == nil && st.Rollback != nil && st.Rollback.Trial == t.ID:
			logf(st.Rollback.Message())
			return &RolledBackError{Host: c.Name(), Generation: st.Rollback.Previous, Message: st.Rollback.Message()}, nil
		case err == nil && (st.Trial == nil || st.Trial.ID != t.ID):
			logf(fmt.Sprintf("generation %d confirmed its boot", t.Generation))
			return nil, nil
		case err == nil:
			msg := fmt.Sprintf("trial of generation %d: boot attempt %d of %d", t.Generation, len(st.Trial.Attempts), st.Trial.MaxAttempts)
			if n := len(st.Trial.Attempts); n > 0 && st.Trial.Attempts[n-1].Failure != "" {
				msg += " failed: " + st.Trial.Attempts[n-1].Failure
			}
			if msg != said {
				logf(msg)
				said = msg
			}
		case Classify(err) == KindHostKey:
			return nil, err
		default:
			lastErr = err
		}
		if !time.Now().Before(deadline) {
			return nil, &KindError{Kind: KindUnreachable, Err: fmt.Errorf("the trial of generation %d was not decided within %v (%s; last error: %v)", t.Generation, limit, said, lastErr)}
		}
		sleepCtx(ctx, time.Second)
	}
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

// reconnect makes the run's connection (and takes its run lock) again,
// retrying a failed connection until deadline.
func (c *Client) reconnect(ctx context.Context, deadline time.Time) (*mesh.Client, error) {
	hadLock := c.Locked()
	for {
		conn, err := c.Conn(ctx)
		switch {
		case err == nil:
			return conn, nil
		case Classify(err) == KindHostKey, hadLock && !c.Locked() && c.Connected():
			return nil, err
		case !time.Now().Before(deadline):
			return nil, &KindError{Kind: KindUnreachable, Err: fmt.Errorf("connecting again after the reboot: %w", err)}
		}
		sleepCtx(ctx, time.Second)
	}
}

// leaseLock keeps the run lock (when the client holds it) for its run
// across the reboot (`deploy-agent run-lease`): the lock lives in the run
// directory, which the boot empties, so without the lease another run
// could take it while the host reboots. It lasts until the run takes the
// lock again after the reboot, or for as long as the reboot may take
// (the host's return, a pending trial's attempts, the health wait, and
// a minute). An agent that cannot keep it is said, not failed.
func (c *Client) leaseLock(ctx context.Context, conn *mesh.Client, before *agentapi.BootState, opts RebootOptions, logf func(string)) {
	c.mu.Lock()
	l := c.lock
	c.mu.Unlock()
	if l == nil {
		return
	}
	d := opts.timeout() + opts.healthTimeout() + time.Minute
	if t := before.Trial; t != nil {
		d += time.Duration(max(1, t.MaxAttempts-len(t.Attempts))) * (t.Timeout + opts.timeout())
	}
	who := []agentapi.Agent{agentapi.CurrentAgent}
	if l.agent != "" {
		who = []agentapi.Agent{agentapi.AgentAt(l.agent)}
	}
	var stderr bytes.Buffer
	err := conn.Run(ctx, c.command(who, agentapi.RunLeaseCmd{StateDir: c.stateDir(), Run: l.run.Run, For: d}.Args()...), nil, nil, &stderr)
	var ee *mesh.ExitError
	switch {
	case err == nil:
		logf(fmt.Sprintf("the run lock stays this run's across the reboot (for at most %v)", d))
	case errors.As(err, &ee) && ee.Code == agentapi.ExitUsage:
		logf("the host's deploy-agent cannot keep the run lock across the reboot: another run may take it meanwhile")
	default:
		logf(fmt.Sprintf("keeping the run lock across the reboot: %v: %s", err, strings.TrimSpace(stderr.String())))
	}
}
