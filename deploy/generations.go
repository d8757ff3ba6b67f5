package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/mesh"
)

// Generation is one generation of a host, as its agent reports it
// (`deploy-agent generations --json`).
type Generation struct {
	Number       int               `json:"number"`
	System       string            `json:"system"`
	Time         time.Time         `json:"time"`
	Operator     string            `json:"operator,omitempty"`
	GitRev       string            `json:"git_rev,omitempty"`
	Message      string            `json:"message,omitempty"`
	Meta         map[string]string `json:"meta,omitempty"`
	Failed       bool              `json:"failed,omitempty"`
	FailedReason string            `json:"failed_reason,omitempty"`
	Confirmed    time.Time         `json:"confirmed,omitzero"`
	Current      bool              `json:"current,omitempty"`
	Boot         bool              `json:"boot,omitempty"`
}

// HostStatus is a host's state as its agent reports it
// (`deploy-agent status --json`); Raw keeps every field.
type HostStatus struct {
	Current       int             `json:"current"`
	CurrentSystem string          `json:"current_system,omitempty"`
	Boot          int             `json:"boot"`
	BootSystem    string          `json:"boot_system,omitempty"`
	Pending       int             `json:"pending,omitempty"`
	Failed        []int           `json:"failed"`
	Consistent    bool            `json:"consistent"`
	Raw           json.RawMessage `json:"-"`
}

// currentAgent is the agent of the host's current system.
func currentAgent() string {
	return path.Join("/run/deploy/current-system/agent", closure.AgentBin)
}

// Generations lists the host's generations, oldest first.
func Generations(ctx context.Context, c *mesh.Client, stateDir string) ([]Generation, error) {
	out, err := c.Output(ctx, []string{currentAgent(), "generations", "--json", "--state-dir", orDefaultDir(stateDir)})
	if err != nil {
		return nil, fmt.Errorf("listing generations: %w", err)
	}
	var gens []Generation
	if err := json.Unmarshal(out, &gens); err != nil {
		return nil, fmt.Errorf("listing generations: the agent's answer: %w", err)
	}
	return gens, nil
}

// Status reports the host's state.
func Status(ctx context.Context, c *mesh.Client, stateDir string) (*HostStatus, error) {
	out, err := c.Output(ctx, []string{currentAgent(), "status", "--json", "--state-dir", orDefaultDir(stateDir)})
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st := &HostStatus{Raw: out}
	if err := json.Unmarshal(out, st); err != nil {
		return nil, fmt.Errorf("status: the agent's answer: %w", err)
	}
	return st, nil
}

func orDefaultDir(d string) string {
	if d == "" {
		return DefaultStateDir
	}
	return d
}
