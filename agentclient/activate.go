package agentclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/mesh"
)

// ActivateOptions tunes [Client.Activate].
type ActivateOptions struct {
	// Mode is switch (default), boot, test or dry-activate.
	Mode string
	// ConfirmTimeout is how long the agent waits for the confirmation
	// before rolling back (default 30s).
	ConfirmTimeout time.Duration
	// Meta is recorded with the generation: operator, git_rev, message, ...
	Meta map[string]string
	// Force lets the activation replace unmanaged files.
	Force bool
	// BootAttempts and BootTimeout set boot counting for mode boot (the
	// agent's --boot-attempts, --boot-timeout; 0: its defaults).
	BootAttempts int
	BootTimeout  time.Duration
	// Check, if set, runs on the operator's side once the agent awaits
	// confirmation (outside health checks, the operator's metric gates).
	// An error rejects the activation (`confirm N --reject`): the host
	// rolls back at once, without waiting for the confirmation timeout;
	// a *[CheckError] names the check in the host's result. An error
	// that wraps [ErrWithhold], and any error for an agent that cannot
	// reject, leaves the activation unconfirmed instead: the host rolls
	// back when its confirmation timeout expires.
	Check func(ctx context.Context) error
	// BeforeConfirm, if set, runs just before the confirmation connection
	// is opened (tests use it to inject faults).
	BeforeConfirm func()
	// ReconnectFor bounds how long [Client.Activate] keeps trying to reach the host
	// after the connection dropped (default ConfirmTimeout + 1 minute).
	ReconnectFor time.Duration
	// Logf receives the agent's log lines and the activation's own steps
	// (default: the client's).
	Logf func(format string, args ...any)
	// RollbackTo, when positive, returns the host to that existing
	// generation (the agent's rollback --to N, same confirmation) instead
	// of activating system as a new one; system must then be that
	// generation's system, whose agent runs the rollback.
	RollbackTo int
}

// ActivateResult is a successful activation.
type ActivateResult struct {
	// Generation is the new generation's number.
	Generation int
	// Activation is the agent's activation id (its log is
	// STATE/log/activate-ID.log on the host).
	Activation string
	// Outcome is done (or dry-activated).
	Outcome agentapi.Outcome
	// Reconnected is set when the first connection dropped and the outcome
	// was learned over a new one.
	Reconnected bool
	// Warnings are the agent's warnings (secrets on swappable memory, ...).
	Warnings []string
}

// ErrWithhold, wrapped by an error of [ActivateOptions.Check], withholds
// the confirmation rather than rejecting the activation: the host rolls
// back at its confirmation timeout, as when the operator is gone.
var ErrWithhold = errors.New("confirmation withheld")

// CheckError is the failure of an operator-side check named Check (a
// metric gate deploy evaluates); [ActivateOptions.Check] returns it so
// that the host's result names the check.
type CheckError struct {
	Check string
	Err   error
}

func (e *CheckError) Error() string { return e.Err.Error() }
func (e *CheckError) Unwrap() error { return e.Err }

// RolledBackError is an activation that failed or was not confirmed; the
// host restored the previous generation by itself. CLI exit code 3.
type RolledBackError struct {
	Host       string
	Generation int
	Message    string
	// Check names the health check (or metric gate) whose failure made
	// the host roll back, when one did.
	Check   string
	LogTail []string // the last lines of the activation's log
}

func (e *RolledBackError) Error() string {
	return fmt.Sprintf("%s: rolled back: %s", e.Host, e.Message)
}

// RebootedError is an activation ended by a reboot of the host before it
// was confirmed: the host boots its boot default, so it runs the
// generation it ran before (Running; 0: none), as after a rollback
// ([Classify]: [KindRolledBack]).
type RebootedError struct {
	Host    string
	Running int
}

func (e *RebootedError) Error() string {
	return fmt.Sprintf("%s: interrupted by a reboot of the host before it was confirmed; the host runs generation %d", e.Host, e.Running)
}

// LockHeldError is an activation refused because another one holds the
// host's activation lock. CLI exit code 5.
type LockHeldError struct {
	Host   string
	Holder string // the agent's description of the holder
}

func (e *LockHeldError) Error() string { return fmt.Sprintf("%s: %s", e.Host, e.Holder) }

// ActivationError is an activation that failed and could not be rolled
// back, or failed in a way the agent could not describe: the host's result
// is failed (CLI exit code 3). Unreachable hosts are reported as
// *[mesh.UnreachableError] (result unreachable, exit 4).
type ActivationError struct {
	Host    string
	Message string
	LogTail []string // the last lines of the activation's log
}

func (e *ActivationError) Error() string {
	return fmt.Sprintf("%s: activation failed: %s", e.Host, e.Message)
}

// Activate activates system (already copied, see [Client.Copy]) on the
// host: it runs the system's own agent with `activate` over the client's
// connection,
// handing it a fresh random confirmation token on stdin, and streams the
// agent's log to Logf. When the agent awaits confirmation, Activate runs
// opts.Check and then confirms over a NEW connection (new TCP connection and
// SSH handshake): proof that the host is still reachable. If a connection
// drops, it reconnects and asks the agent's status for the real outcome.
//
// Errors: *[RolledBackError], *[LockHeldError], *[mesh.UnreachableError]
// (wrapped), *[ActivationError].
func (c *Client) Activate(ctx context.Context, system string, opts ActivateOptions) (*ActivateResult, error) {
	tail := &lineTail{max: 10}
	logf := opts.Logf
	if logf == nil {
		logf = c.logf
	}
	opts.Logf = func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		tail.add(line)
		logf("%s", line)
	}
	res, err := c.activate(ctx, system, opts)
	return res, withTail(err, tail.lines())
}

func (c *Client) activate(ctx context.Context, system string, opts ActivateOptions) (*ActivateResult, error) {
	if opts.Mode == "" {
		opts.Mode = "switch"
	}
	if opts.ConfirmTimeout <= 0 {
		opts.ConfirmTimeout = 30 * time.Second
	}
	if opts.ReconnectFor <= 0 {
		opts.ReconnectFor = opts.ConfirmTimeout + time.Minute
	}
	logf := opts.Logf
	host := c.Name()
	client, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	var rnd [32]byte
	rand.Read(rnd[:])
	token := hex.EncodeToString(rnd[:])

	args := agentapi.ActivateCmd{StateDir: c.stateDir(), Mode: opts.Mode, ConfirmTimeout: opts.ConfirmTimeout,
		Meta: opts.Meta, Force: opts.Force, BootAttempts: opts.BootAttempts, BootTimeout: opts.BootTimeout, System: system}.Args()
	if opts.RollbackTo > 0 {
		args = agentapi.RollbackCmd{StateDir: c.stateDir(), To: opts.RollbackTo, ConfirmTimeout: opts.ConfirmTimeout, Meta: opts.Meta}.Args()
	}
	var stdout bytes.Buffer
	// The agent names its activation on stderr as soon as its worker
	// runs ("deploy-agent: activation ID (log ...)"): if the session is
	// lost after that, only that activation's outcome is this one's.
	var started string
	lw := &logLines{logf: func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		if rest, ok := strings.CutPrefix(line, "agent: deploy-agent: activation "); ok && started == "" {
			if id, _, ok := strings.Cut(rest, " (log "); ok {
				started = id
			}
		}
		logf("%s", line)
	}, prefix: "agent: "}
	err = client.Run(ctx, c.command([]agentapi.Agent{agentapi.AgentOfSystem(system)}, args...), strings.NewReader(token+"\n"), &stdout, lw)
	lw.flush()
	res, perr := agentapi.ParseResult(stdout.Bytes())
	if perr != nil {
		return nil, &ActivationError{Host: host, Message: perr.Error()}
	}
	var ee *mesh.ExitError
	if res == nil && errors.As(err, &ee) && ee.Code == agentapi.ExitNoAgent {
		return nil, &ActivationError{Host: host, Message: fmt.Sprintf("the system %s has no agent on the host (was it copied?)", system)}
	}
	res2 := &ActivateResult{}
	if res == nil {
		// No result line: the connection dropped (or the agent died).
		if ctx.Err() != nil {
			return nil, err
		}
		logf("%s: lost the activation session (%v); reconnecting to learn the outcome", host, err)
		res2.Reconnected = true
		r, rerr := c.recoverOutcome(ctx, system, started, opts, logf)
		if rerr != nil {
			return nil, rerr
		}
		res = r
	}
	res2.Generation, res2.Activation, res2.Warnings = res.Generation, res.ID, res.Warnings
	switch res.Outcome {
	case agentapi.OutcomeDone, agentapi.OutcomeDry:
		res2.Outcome = res.Outcome
		return res2, nil
	case agentapi.OutcomeAwaiting:
	case agentapi.OutcomeRolledBack:
		return nil, &RolledBackError{Host: host, Generation: res.Generation, Message: res.Message, Check: res.Check}
	case agentapi.OutcomeLockHeld:
		return nil, &LockHeldError{Host: host, Holder: res.Message}
	default:
		return nil, &ActivationError{Host: host, Message: res.Message}
	}

	if opts.Check != nil {
		if cerr := opts.Check(ctx); cerr != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(cerr, ErrWithhold) {
				return nil, c.withhold(ctx, system, res, cerr, opts, logf)
			}
			return nil, c.reject(ctx, system, res, token, cerr, opts, logf)
		}
	}
	if opts.BeforeConfirm != nil {
		opts.BeforeConfirm()
	}
	final, err := c.confirm(ctx, system, res.Generation, token, opts, logf)
	if err != nil {
		return nil, err
	}
	switch final.Outcome {
	case agentapi.OutcomeDone:
		res2.Outcome = agentapi.OutcomeDone
		return res2, nil
	case agentapi.OutcomeRolledBack:
		return nil, &RolledBackError{Host: host, Generation: final.Generation, Message: final.Message, Check: final.Check}
	}
	return nil, &ActivationError{Host: host, Message: final.Message}
}

// withhold does not confirm: the host rolls back at its timeout. It
// returns the outcome as an error.
func (c *Client) withhold(ctx context.Context, system string, res *agentapi.Result, cerr error, opts ActivateOptions, logf func(string, ...any)) error {
	host := c.Name()
	logf("%s: operator-side check failed (%v): not confirming; waiting for the host to roll back", host, cerr)
	final, err := c.waitFinal(ctx, system, res.ID, opts)
	if err != nil {
		return err
	}
	if final.Outcome == agentapi.OutcomeDone {
		return &ActivationError{Host: host, Message: fmt.Sprintf("operator check failed (%v) but generation %d was activated", cerr, res.Generation)}
	}
	return &RolledBackError{Host: host, Generation: res.Generation, Message: fmt.Sprintf("operator check failed: %v; %s", cerr, final.Message)}
}

// reject tells the host that the operator's check failed (cerr), so that
// it rolls back now, and returns the outcome as an error: a
// *[RolledBackError] normally.
func (c *Client) reject(ctx context.Context, system string, res *agentapi.Result, token string, cerr error, opts ActivateOptions, logf func(string, ...any)) error {
	host := c.Name()
	name := "operator"
	var ce *CheckError
	if errors.As(cerr, &ce) && ce.Check != "" {
		name = ce.Check
	}
	logf("%s: operator-side check failed (%v): rejecting generation %d, so that the host rolls back now", host, cerr, res.Generation)
	final, err := c.confirmOrReject(ctx, system, res.Generation, token, name, cerr.Error(), opts, logf)
	if err != nil {
		var ae *ActivationError
		if !errors.As(err, &ae) {
			return err
		}
		// An agent that cannot reject (it predates --reject): without
		// the confirmation it rolls back at its timeout.
		logf("%s: the agent did not take the rejection (%v)", host, err)
		return c.withhold(ctx, system, res, cerr, opts, logf)
	}
	switch final.Outcome {
	case agentapi.OutcomeRolledBack:
		return &RolledBackError{Host: host, Generation: res.Generation, Message: final.Message, Check: name}
	case agentapi.OutcomeDone:
		return &ActivationError{Host: host, Message: fmt.Sprintf("operator check failed (%v) but generation %d was activated", cerr, res.Generation)}
	}
	return &ActivationError{Host: host, Message: fmt.Sprintf("operator check failed (%v): %s", cerr, final.Message)}
}

// confirm opens a new connection and runs `confirm N` with the token on
// stdin; it retries on connection errors until the confirm deadline.
func (c *Client) confirm(ctx context.Context, system string, gen int, token string, opts ActivateOptions, logf func(string, ...any)) (*agentapi.Result, error) {
	return c.confirmOrReject(ctx, system, gen, token, "", "", opts, logf)
}

// confirmOrReject is confirm, or with reject set (the failed check's
// name) `confirm N --reject NAME` with reason after the token.
func (c *Client) confirmOrReject(ctx context.Context, system string, gen int, token, reject, reason string, opts ActivateOptions, logf func(string, ...any)) (*agentapi.Result, error) {
	stdin := token + "\n"
	if reject != "" {
		stdin += strings.ReplaceAll(reason, "\n", " ") + "\n"
	}
	deadline := time.Now().Add(opts.ReconnectFor)
	var lastErr error
	for time.Now().Before(deadline) {
		conn, err := c.Dial(ctx)
		if err != nil {
			lastErr = err
			if !retryable(err) || ctx.Err() != nil {
				return nil, err
			}
			sleepCtx(ctx, time.Second)
			continue
		}
		var stdout bytes.Buffer
		lw := &logLines{logf: logf, prefix: "agent: "}
		argv := c.command([]agentapi.Agent{agentapi.AgentOfGeneration(gen)}, agentapi.ConfirmCmd{StateDir: c.stateDir(), Generation: gen, Reject: reject}.Args()...)
		err = conn.Run(ctx, argv, strings.NewReader(stdin), &stdout, lw)
		lw.flush()
		conn.Close()
		r, perr := agentapi.ParseResult(stdout.Bytes())
		if perr != nil {
			return nil, &ActivationError{Host: c.Name(), Message: perr.Error()}
		}
		if r != nil {
			return r, nil
		}
		lastErr = err
		var ue *mesh.UnreachableError
		if !errors.As(err, &ue) {
			// The agent refused (not pending any more, say): ask for the
			// outcome.
			logf("%s: confirm: %v", c.Name(), err)
			return c.waitFinal(ctx, system, "", opts)
		}
		sleepCtx(ctx, time.Second)
	}
	return nil, lastErr
}

// recoverOutcome reconnects after a dropped activation session and finds
// out what happened: if the activation awaits confirmation, it returns
// that (the caller confirms); if it ended, its result.
//
// The activation it looks at must be this one: id when the agent named it
// (else one of system): an earlier activation's outcome is not this one's.
func (c *Client) recoverOutcome(ctx context.Context, system, id string, opts ActivateOptions, logf func(string, ...any)) (*agentapi.Result, error) {
	deadline := time.Now().Add(opts.ReconnectFor)
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, err := c.freshStatus(ctx)
		if err != nil {
			lastErr = err
			if !retryable(err) {
				return nil, err
			}
			sleepCtx(ctx, time.Second)
			continue
		}
		a := st.Activation
		if a == nil {
			return c.rebooted(st, system)
		}
		if (id != "" && a.ID != id) || (id == "" && a.System != system) {
			// Not this run's activation (its own never began, or
			// another's came after it): no outcome of it to learn.
			lastErr = &ActivationError{Host: c.Name(), Message: fmt.Sprintf("the activation session was lost, and the host's last activation (%s, of %s) is not this one: whether this one began is unknown", a.ID, a.System)}
			sleepCtx(ctx, 500*time.Millisecond)
			continue
		}
		if a.Phase == agentapi.PhaseAwaiting || a.Phase.Final() {
			return &agentapi.Result{ID: a.ID, Generation: a.Generation, Outcome: a.Phase, Message: a.Message}, nil
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	if lastErr == nil {
		lastErr = &ActivationError{Host: c.Name(), Message: "no outcome within the reconnect window"}
	}
	return nil, lastErr
}

// rebooted is the outcome of an activation of system that the host
// forgot because it rebooted (its run directory, where activations are
// recorded, is emptied by a boot): the boot unit re-applied the boot
// default, which moves only after a confirmation. A host that runs system
// now had confirmed it (done); any other ended the activation by the
// reboot, running the generation it booted: a *[RebootedError] (a kind of
// rollback).
func (c *Client) rebooted(st *agentapi.Status, system string) (*agentapi.Result, error) {
	if st.Current > 0 && st.CurrentSystem == system {
		return &agentapi.Result{Generation: st.Current, Outcome: agentapi.OutcomeDone,
			Message: fmt.Sprintf("the host rebooted after the activation was confirmed; it runs generation %d", st.Current)}, nil
	}
	return nil, &RebootedError{Host: c.Name(), Running: st.Current}
}

// waitFinal polls status until the activation id (or, with id "", the last
// activation) has ended.
func (c *Client) waitFinal(ctx context.Context, system, id string, opts ActivateOptions) (*agentapi.Result, error) {
	deadline := time.Now().Add(opts.ReconnectFor)
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, err := c.freshStatus(ctx)
		if err == nil && st.Activation != nil && (id == "" || st.Activation.ID == id) {
			if a := st.Activation; a.Phase.Final() {
				return &agentapi.Result{ID: a.ID, Generation: a.Generation, Outcome: a.Phase, Message: a.Message}, nil
			}
		} else if err == nil && st.Activation == nil {
			// The host forgot the activation: it rebooted.
			return c.rebooted(st, system)
		} else if err == nil {
			// Another activation has started since.
			return nil, &ActivationError{Host: c.Name(), Message: fmt.Sprintf("the host no longer knows the activation (it rebooted?); it runs generation %d, its boot default %d", st.Current, st.Boot)}
		} else {
			lastErr = err
			if !retryable(err) {
				return nil, err
			}
		}
		sleepCtx(ctx, time.Second)
	}
	if lastErr == nil {
		lastErr = &ActivationError{Host: c.Name(), Message: "no outcome within the wait"}
	}
	return nil, lastErr
}

// freshStatus asks the host's agent for its status over a new connection
// (any agent on the host reads it).
func (c *Client) freshStatus(ctx context.Context) (*agentapi.Status, error) {
	conn, err := c.Dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	out, err := conn.Output(ctx, c.command([]agentapi.Agent{agentapi.AnyAgent}, agentapi.StatusCmd{StateDir: c.stateDir()}.Args()...))
	if err != nil {
		return nil, err
	}
	st := &agentapi.Status{}
	if err := agentapi.Decode("status", out, st); err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name(), err)
	}
	return st, nil
}

func retryable(err error) bool {
	var ue *mesh.UnreachableError
	return errors.As(err, &ue)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// logLines turns the agent's stderr into log lines.
type logLines struct {
	logf   func(string, ...any)
	prefix string
	buf    []byte
}

func (w *logLines) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.logf("%s%s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func (w *logLines) flush() {
	if len(w.buf) > 0 {
		w.logf("%s%s", w.prefix, w.buf)
		w.buf = nil
	}
}

var _ io.Writer = (*logLines)(nil)
