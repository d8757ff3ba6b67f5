package deploy

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

// VerifyOptions tune [Session.Verify].
type VerifyOptions struct {
	// Quick only checks that the current system's store paths are
	// present, instead of rehashing them.
	Quick bool
}

// Verify compares each selected host's live state with its current
// generation's manifest (HostReport.Drift): managed files, directories
// and symlinks, decrypted secrets' owners and modes, units that should
// run, users and groups, and the store paths of the current system. A
// host that differs ends [ResultDrifted]. Nothing changes on the hosts.
func (s *Session) Verify(ctx context.Context, opts VerifyOptions) (*Report, error) {
	rep := s.begin("", nil)
	defer s.end(rep)
	s.query(ctx, rep, PhaseVerify, ResultCommandFailed, s.names(), func(ctx context.Context, hr *HostReport, c *mesh.Client) (Event, error) {
		d, err := queryDrift(ctx, c, s.stateDir(), !opts.Quick)
		if err != nil {
			return Event{}, err
		}
		hr.Drift, hr.Generation = d, d.Generation
		if len(d.Items) > 0 {
			hr.Result = ResultDrifted
		}
		return Event{Drift: d}, nil
	})
	return rep, rep.Err()
}

// queryDrift runs the host's current agent's `drift --json`; a host that
// runs no generation has no drift.
func queryDrift(ctx context.Context, c *mesh.Client, stateDir string, verifyStore bool) (*agentapi.Drift, error) {
	var extra []string
	if verifyStore {
		extra = append(extra, "--verify-store")
	}
	out, err := agentQuery(ctx, c, stateDir, "drift", extra...)
	var ee *mesh.ExitError
	if errors.As(err, &ee) && ee.Code == 2 {
		return nil, fmt.Errorf("the host's deploy-agent cannot compare the host with its generation (it predates deploy verify): deploy the host with this deploy first: %w", err)
	}
	if err != nil {
		return nil, err
	}
	d := &agentapi.Drift{V: agentapi.Version, Items: []agentapi.DriftItem{}}
	if out != nil {
		if err := agentapi.Decode("drift", out, d); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// DriftSummary describes d's items in one line.
func DriftSummary(d *agentapi.Drift) string {
	items := make([]string, len(d.Items))
	for i, it := range d.Items {
		items[i] = it.String()
	}
	return strings.Join(items, "; ")
}

// StatusOptions tune [Session.StatusWith].
type StatusOptions struct {
	// Drift also compares each host with its current generation (store
	// paths checked for presence only), in the same request.
	Drift bool
}

// RebootOptions tune a reboot ([Session.Reboot], and a deploy in boot mode
// with DeployOptions.Reboot).
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

// Rebooter is a [HostOps] that can reboot a host and wait until it runs
// its boot-default generation healthily (SSHOps can).
type Rebooter interface {
	Reboot(ctx context.Context, host string, opts RebootOptions, logf func(string)) (*agentapi.Health, error)
}

// DriftChecker is a [HostOps] that can compare a host with its current
// generation (SSHOps can); a deploy uses it to say what it overwrites.
type DriftChecker interface {
	Drift(ctx context.Context, host string) (*agentapi.Drift, error)
}

// Reboot reboots the selected hosts batch by batch, as a deploy rolls out
// (the deployment's batch_size, canary and max_failures; any other
// selection is one batch), under the run lock: each host of a batch is
// told to reboot, must answer SSH from a new boot within opts.Timeout,
// and must then run its boot-default generation with every unit that
// should run active and every health check passing (HostReport.Health).
// When more than max_failures hosts did not come back healthy, the
// rollout stops after that batch; the rest are skipped, not rebooted. A
// host that did not come back in time ends unreachable; one that came
// back unhealthy, failed.
func (s *Session) Reboot(ctx context.Context, opts RebootOptions) (*Report, error) {
	ro, err := s.Rollout()
	if err != nil {
		return nil, err
	}
	rep := s.begin("", ro.Batches)
	defer s.end(rep)
	names, err := s.lockForHostCommand(ctx, rep)
	if err != nil {
		return rep, err
	}
	ops, _, err := s.ops(ctx)
	if err != nil {
		return rep, err
	}
	rb, ok := ops.(Rebooter)
	if !ok {
		return rep, errors.New("session: these host operations cannot reboot")
	}
	reachable := map[string]bool{}
	for _, n := range names {
		reachable[n] = true
	}
	failures := 0
	for i, batch := range ro.Batches {
		s.emit(Event{Type: EventBatchStart, Batch: i + 1, Hosts: batch})
		var hosts []string
		for _, name := range batch {
			if reachable[name] {
				hosts = append(hosts, name)
			} else {
				failures++ // ended unreachable when its run lock was taken
			}
		}
		each(ctx, hosts, len(hosts), func(ctx context.Context, name string) {
			hr := rep.Hosts[name]
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseReboot, State: "started"})
			h, err := rb.Reboot(ctx, name, opts, func(line string) {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseReboot, Message: line})
			})
			hr.Health = h
			if err != nil {
				s.fail(hr, PhaseReboot, ResultFailed, err)
				return
			}
			hr.Result, hr.Phase, hr.Generation = ResultOK, PhaseReboot, h.Current
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseReboot, State: "done", Generation: h.Current})
			s.finish(hr, Event{Health: h})
		})
		for _, name := range hosts {
			if rep.Hosts[name].Result != ResultOK {
				failures++
			}
		}
		if failures > ro.MaxFailures || ctx.Err() != nil {
			for _, b := range ro.Batches[i+1:] {
				for _, name := range b {
					if reachable[name] {
						s.finish(rep.Hosts[name], Event{Message: "an earlier batch failed; not rebooted"})
					}
				}
			}
			break
		}
	}
	return rep, rep.Err()
}

// Drift implements [DriftChecker] over the host's connection (store paths
// checked for presence only).
func (o *SSHOps) Drift(ctx context.Context, host string) (*agentapi.Drift, error) {
	c, err := o.client(ctx, host)
	if err != nil {
		return nil, err
	}
	return queryDrift(ctx, c, o.stateDir(), false)
}

// connected reports whether the run has a live connection to host.
func (o *SSHOps) connected(host string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.clients[host]
	return c != nil && c.Err() == nil
}

// drop closes host's connection; the next use connects again (and takes
// the run lock again, which the old connection held).
func (o *SSHOps) drop(host string) {
	o.mu.Lock()
	c := o.clients[host]
	o.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Reboot implements [Rebooter]: `systemctl reboot` over the host's
// connection, then new connections until the host answers from a new boot
// (its boot id changed) within opts.Timeout; then the run lock is taken
// again and the boot default's agent runs `health`, which waits for the
// units and runs the health checks. Errors are *[HostFailure]s: unreachable
// when the host did not come back, failed when it came back unhealthy (the
// [agentapi.Health] is returned with it).
func (o *SSHOps) Reboot(ctx context.Context, host string, opts RebootOptions, logf func(string)) (*agentapi.Health, error) {
	c, err := o.client(ctx, host)
	if err != nil {
		return nil, err
	}
	out, err := c.Output(ctx, []string{"cat", bootIDFile})
	if err != nil {
		return nil, &HostFailure{Result: ResultUnreachable, Err: fmt.Errorf("reading the boot id: %w", err)}
	}
	old := strings.TrimSpace(string(out))
	logf("rebooting")
	var stderr bytes.Buffer
	err = c.Run(ctx, []string{"systemctl", "reboot"}, nil, nil, &stderr)
	var ee *mesh.ExitError
	if errors.As(err, &ee) && ee.Signal == "" {
		return nil, &HostFailure{Result: ResultFailed, Err: fmt.Errorf("systemctl reboot: %w: %s", err, strings.TrimSpace(stderr.String()))}
	}
	// Any other error (a lost connection, or systemctl killed by the
	// shutdown) is the host going down.
	o.mu.Lock()
	_, hadLock := o.locks[host]
	o.mu.Unlock()
	o.drop(host)
	start := time.Now()
	deadline := start.Add(opts.timeout())
	t, cfg := o.Targets[host], o.meshFor(host)
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
			return nil, &HostFailure{Result: ResultUnreachable, Err: fmt.Errorf("did not come back within %v of the reboot: %v", opts.timeout(), lastErr)}
		}
		if !up {
			id, err := bootID(ctx, cfg, t)
			switch {
			case err == nil && id != old && id != "":
				up = true
				logf(fmt.Sprintf("back after %v; waiting for its units and health checks", time.Since(start).Round(time.Second)))
			case err == nil:
				lastErr = errors.New("it still ran the same boot")
			case hostKeyProblem(err):
				return nil, &HostFailure{Result: ResultUnreachable, Err: err}
			default:
				lastErr = err
			}
		}
		if up {
			// The connection of the run, and its run lock, again. A failed
			// connection is tried again; a failure to take the run lock
			// again is final (the connection is then the run's without it).
			c, err = o.client(ctx, host)
			o.mu.Lock()
			_, held := o.locks[host]
			o.mu.Unlock()
			switch {
			case err == nil:
			case hostKeyProblem(err), hadLock && !held && o.connected(host):
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
	out, err = c.Output(ctx, []string{"sh", "-c", fmt.Sprintf(`a="$1"/profiles/system/agent/bin/deploy-agent; test -x "$a" || exit %d; shift; exec "$a" "$@"`, errAgentMissing),
		"sh", o.stateDir(), "health", "--json", "--wait", opts.healthTimeout().String(), "--state-dir", o.stateDir()})
	if errors.As(err, &ee) && ee.Code == errAgentMissing {
		return &agentapi.Health{V: agentapi.Version, Healthy: true, Message: "no generation is the boot default"}, nil
	}
	if len(bytes.TrimSpace(out)) == 0 {
		if err == nil {
			err = errors.New("no answer")
		}
		return nil, &HostFailure{Result: ResultFailed, Err: fmt.Errorf("health after the reboot: %w", err)}
	}
	h := &agentapi.Health{}
	if derr := agentapi.Decode("health", out, h); derr != nil {
		return nil, &HostFailure{Result: ResultFailed, Err: derr}
	}
	if !h.Healthy {
		return h, &HostFailure{Result: ResultFailed, Err: fmt.Errorf("not healthy after the reboot: %s", h.Message)}
	}
	logf(fmt.Sprintf("healthy: generation %d runs (%s)", h.Current, h.SystemState))
	return h, nil
}

// hostKeyProblem reports whether err is about the host's key: no retry
// makes that right.
func hostKeyProblem(err error) bool {
	var hke *mesh.HostKeyError
	var uhe *mesh.UnknownHostError
	var rke *mesh.RevokedHostKeyError
	return errors.As(err, &hke) || errors.As(err, &uhe) || errors.As(err, &rke)
}

// bootID reads the host's boot id over a new connection.
func bootID(ctx context.Context, cfg *mesh.Config, t mesh.Target) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := cfg.Connect(cctx, t)
	if err != nil {
		return "", err
	}
	defer c.Close()
	out, err := c.Output(cctx, []string{"cat", bootIDFile})
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

var (
	_ Rebooter     = (*SSHOps)(nil)
	_ DriftChecker = (*SSHOps)(nil)
)
