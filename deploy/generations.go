package deploy

import (
	"context"
	"fmt"
	"path"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
)

// currentAgent is the agent of the host's current system.
func currentAgent() string {
	return path.Join("/run/deploy/current-system/agent", closure.AgentBin)
}

// Generations lists the host's generations, oldest first.
func Generations(ctx context.Context, c *mesh.Client, stateDir string) ([]*agentapi.Generation, error) {
	out, err := c.Output(ctx, []string{currentAgent(), "generations", "--json", "--state-dir", orDefaultDir(stateDir)})
	if err != nil {
		return nil, fmt.Errorf("listing generations: %w", err)
	}
	return agentapi.DecodeGenerations(out)
}

// Status reports the host's state.
func Status(ctx context.Context, c *mesh.Client, stateDir string) (*agentapi.Status, error) {
	out, err := c.Output(ctx, []string{currentAgent(), "status", "--json", "--state-dir", orDefaultDir(stateDir)})
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st := &agentapi.Status{}
	if err := agentapi.Decode("status", out, st); err != nil {
		return nil, err
	}
	return st, nil
}

func orDefaultDir(d string) string {
	if d == "" {
		return DefaultStateDir
	}
	return d
}
