package fleet

import (
	"slices"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
)

// HostReport is how one host's deployment ended.
type HostReport struct {
	Host       string
	Result     Result
	Phase      Phase // where it ended (for failures: where it failed)
	System     string
	Generation int
	Previous   int
	Err        error
	LogTail    []string
	Push       *PushResult
	// Holder is the run holding the host's run lock (locked).
	Holder *agentapi.RunHolder
	// Results of the host commands.
	Generations []*agentapi.Generation
	Status      *agentapi.Status
	GC          *agentapi.GCResult
	Diff        *manifest.Difference
	ExitStatus  int // exec
	// Drift is the host's drift from its current generation (verify;
	// a deploy: what it found before it overwrote it).
	Drift *agentapi.Drift
	// Health is how the host came back from a reboot.
	Health *agentapi.Health
	// Pull mode (publish --wait, status --channel): the serial and wave of
	// the host's release, and its status document.
	Serial int64
	Wave   int
	Pull   *agentapi.PullStatus
}

// Report is the outcome of a rollout.
type Report struct {
	Hosts map[string]*HostReport
}

// With returns the names of the hosts with result res, sorted.
func (r *Report) With(res Result) []string {
	var out []string
	for name, h := range r.Hosts {
		if h.Result == res {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// ResultPrecedence lists the results that make a run fail, the one that
// decides the exit code first: a host rolled back or failed, then one that
// refused its release (pull mode), then one unreachable, then one locked,
// then a command that failed on a host, then one that drifted (verify).
var ResultPrecedence = []Result{ResultRolledBack, ResultFailed, ResultRefused, ResultUnreachable, ResultLocked, ResultCommandFailed, ResultDrifted}

// Worst returns the result that decides the run's outcome (see
// [ResultPrecedence]), or "" when every host ended well.
func (r *Report) Worst() Result {
	for _, res := range ResultPrecedence {
		if len(r.With(res)) > 0 {
			return res
		}
	}
	return ""
}

// Err returns a *[RunError] when some host did not end well, else nil.
func (r *Report) Err() error {
	if r.Worst() == "" {
		return nil
	}
	return &RunError{Report: r}
}
