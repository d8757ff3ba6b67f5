package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/mesh"
)

// query runs the running system's agent with args and returns its stdout;
// nil output when the host has no agent (it was never deployed to).
func (c *Client) query(ctx context.Context, args []string) ([]byte, error) {
	conn, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	out, err := conn.Output(ctx, c.command([]agentapi.Agent{agentapi.CurrentAgent}, args...))
	var ee *mesh.ExitError
	if errors.As(err, &ee) && ee.Code == agentapi.ExitNoAgent {
		return nil, nil
	}
	if err != nil {
		return nil, &QueryError{Verb: args[0], Err: err}
	}
	return out, nil
}

// QueryError is a query the host's agent failed.
type QueryError struct {
	Verb string
	Err  error
}

func (e *QueryError) Error() string { return e.Verb + ": " + e.Err.Error() }
func (e *QueryError) Unwrap() error { return e.Err }

// supports reports whether the first of agents on the host knows verb
// (an older agent may not): `VERB -h` exits 0 for a verb it knows and
// [agentapi.ExitUsage] for one it does not.
func (c *Client) supports(ctx context.Context, conn *mesh.Client, agents []agentapi.Agent, verb string) (bool, error) {
	err := conn.Run(ctx, c.command(agents, agentapi.Help(verb)...), nil, io.Discard, io.Discard)
	var ee *mesh.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.Code == agentapi.ExitUsage:
		return false, nil
	}
	return false, err
}

// Status is the host's state (`status --json`); with drift, the agent
// also compares the host with its current generation (store paths checked
// for presence only), in the same request. A host with no agent has an
// empty status.
func (c *Client) Status(ctx context.Context, drift bool) (*agentapi.Status, error) {
	out, err := c.query(ctx, agentapi.StatusCmd{StateDir: c.stateDir(), Drift: drift}.Args())
	if err != nil {
		return nil, err
	}
	st := &agentapi.Status{V: agentapi.Version, Failed: []int{}, Consistent: true}
	if out != nil {
		if err := agentapi.Decode("status", out, st); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// Generations lists the host's generations, oldest first (none when the
// host has no agent).
func (c *Client) Generations(ctx context.Context) ([]*agentapi.Generation, error) {
	out, err := c.query(ctx, agentapi.GenerationsCmd{StateDir: c.stateDir()}.Args())
	if err != nil {
		return nil, err
	}
	if out == nil {
		return []*agentapi.Generation{}, nil
	}
	return agentapi.DecodeGenerations(out)
}

// GC deletes the host's generations and store paths beyond opts' limits
// (StateDir is the client's). A host with no agent has nothing to delete.
func (c *Client) GC(ctx context.Context, opts agentapi.GCCmd) (*agentapi.GCResult, error) {
	opts.StateDir = c.stateDir()
	out, err := c.query(ctx, opts.Args())
	var ee *mesh.ExitError
	switch {
	case errors.As(err, &ee) && ee.Code == agentapi.ExitLockHeld:
		return nil, &KindError{Kind: KindLocked, Err: err}
	case err != nil:
		return nil, err
	case out == nil:
		return &agentapi.GCResult{V: agentapi.Version, Generations: []int{}}, nil
	}
	res := &agentapi.GCResult{}
	if err := agentapi.Decode("gc", out, res); err != nil {
		return nil, err
	}
	return res, nil
}

// ErrVerbUnknown is a query an older agent does not know.
var ErrVerbUnknown = errors.New("the host's deploy-agent predates this command")

// Drift compares the host with its current generation (`drift --json`);
// verifyStore rehashes the store paths instead of checking presence. A host
// that runs no generation has no drift. An agent that predates the drift
// check is an error wrapping [ErrVerbUnknown].
func (c *Client) Drift(ctx context.Context, verifyStore bool) (*agentapi.Drift, error) {
	out, err := c.query(ctx, agentapi.DriftCmd{StateDir: c.stateDir(), VerifyStore: verifyStore}.Args())
	var ee *mesh.ExitError
	if errors.As(err, &ee) && ee.Code == agentapi.ExitUsage {
		conn, cerr := c.Conn(ctx)
		if cerr == nil {
			if ok, perr := c.supports(ctx, conn, []agentapi.Agent{agentapi.CurrentAgent}, agentapi.VerbDrift); perr == nil && !ok {
				return nil, fmt.Errorf("the host's deploy-agent cannot compare the host with its generation (it predates deploy verify): deploy the host with this deploy first: %w", ErrVerbUnknown)
			}
		}
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

// Manifest reads the manifest of a system on the host (its store path).
func (c *Client) Manifest(ctx context.Context, system string) (*manifest.Manifest, error) {
	conn, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	data, err := conn.Output(ctx, []string{"cat", path.Join(system, manifest.FileName)})
	if err != nil {
		return nil, fmt.Errorf("reading the manifest of %s: %w", system, err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("the manifest of %s: %w", system, err)
	}
	return m, nil
}

// CurrentManifest reads the manifest of the system the host runs; nil when
// it runs none yet.
func (c *Client) CurrentManifest(ctx context.Context) (*manifest.Manifest, error) {
	st, err := c.Status(ctx, false)
	if err != nil || st.CurrentSystem == "" {
		return nil, err
	}
	return c.Manifest(ctx, st.CurrentSystem)
}

// Exec runs cmd on the host over the client's connection. A command that
// ran and exited non-zero is a *[mesh.ExitError].
func (c *Client) Exec(ctx context.Context, cmd []string, stdout, stderr io.Writer) error {
	conn, err := c.Conn(ctx)
	if err != nil {
		return err
	}
	return conn.Run(ctx, cmd, nil, stdout, stderr)
}
