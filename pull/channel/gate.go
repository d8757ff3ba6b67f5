package channel

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
)

// Decision is what a host does with a verified release now.
type Decision int

// The decisions of [Gate].
const (
	// Go: every earlier wave reported in time, with at most MaxFailures
	// hosts that are not healthy.
	Go Decision = iota
	// Wait: some host of an earlier wave has not reported yet, and the
	// deadline has not passed.
	Wait
	// Halt: the rollout stopped before this wave (too many failures, or a
	// wave did not report by the deadline). The host never activates this
	// release; a newer one is needed.
	Halt
)

func (d Decision) String() string {
	switch d {
	case Go:
		return "go"
	case Wait:
		return "wait"
	}
	return "halt"
}

// Gate decides whether rel may be activated now. status reads a host's
// status document as it lies in the channel (nil, nil when it has none).
// The hosts of rel.After are read in order and reading stops as soon as the
// answer is known, so a host waiting for a slow wave reads one status per
// poll.
//
// Only a verified status counts ([VerifyStatus]: signed by the key that
// rel.AfterKeys names for its host, about its host and rel's channel); any
// other document is silence, whatever it claims: it never opens the gate,
// and never halts it. The wait or halt reason says which status did not
// verify.
//
// A host of an earlier wave counts as reported when its verified status is
// about rel's serial, its outcome is final, and it reached that outcome no
// later than rel.Deadline: a report that comes late counts as silence, so
// that every host of a wave decides the same, whenever it looks. Reported
// hosts whose outcome is not done count as failures; a halted one stops
// this wave too. Clocks matter only to the deadline (hosts and publisher
// need them roughly right, as NTP keeps them).
func Gate(ctx context.Context, rel *agentapi.Release, now time.Time, status func(ctx context.Context, host string) ([]byte, error)) (Decision, string, error) {
	return decide(ctx, rel, now, func(ctx context.Context, h string) (*agentapi.PullStatus, string, error) {
		data, err := status(ctx, h)
		if err != nil || data == nil {
			return nil, "", err
		}
		st, err := VerifyStatus(data, rel.Channel, h, rel.AfterKeys[h])
		if err != nil {
			return nil, err.Error(), nil
		}
		return st, "", nil
	})
}

// decide is the gate's rule over the earlier hosts' statuses, in the order
// of rel.After: status returns a host's verified status (nil when it has
// none that verifies, with why when one did not).
func decide(ctx context.Context, rel *agentapi.Release, now time.Time, status func(ctx context.Context, host string) (*agentapi.PullStatus, string, error)) (Decision, string, error) {
	var failed, silent, unverified []string
	late := !rel.Deadline.IsZero() && now.After(rel.Deadline)
	for _, h := range rel.After {
		st, why, err := status(ctx, h)
		if err != nil {
			return Wait, "", err
		}
		reported := st != nil && st.Serial == rel.Serial && st.Outcome.Final() &&
			(rel.Deadline.IsZero() || !outcomeTime(st).After(rel.Deadline))
		if !reported {
			if !late {
				msg := fmt.Sprintf("waiting for %s (wave before %d) to report serial %d", h, rel.Wave, rel.Serial)
				if why != "" {
					msg += ": " + why
				}
				return Wait, msg, nil
			}
			silent = append(silent, h)
			if why != "" {
				unverified = append(unverified, why)
			}
			continue
		}
		switch st.Outcome {
		case agentapi.PullDone:
		case agentapi.PullHalted:
			return Halt, fmt.Sprintf("the rollout of serial %d stopped before wave %d (%s halted: %s)", rel.Serial, rel.Wave, h, st.Message), nil
		default:
			what := string(st.Outcome)
			if st.Check != "" {
				what += fmt.Sprintf(", health check %q", st.Check)
			}
			failed = append(failed, fmt.Sprintf("%s (%s)", h, what))
			if len(failed) > rel.MaxFailures {
				return Halt, fmt.Sprintf("the rollout of serial %d stopped before wave %d: %s failed (max_failures %d)",
					rel.Serial, rel.Wave, strings.Join(failed, ", "), rel.MaxFailures), nil
			}
		}
	}
	if len(silent) > 0 {
		msg := fmt.Sprintf("the rollout of serial %d stopped before wave %d: %s did not report by %s",
			rel.Serial, rel.Wave, strings.Join(silent, ", "), rel.Deadline.UTC().Format(time.RFC3339))
		if len(unverified) > 0 {
			msg += "; " + strings.Join(unverified, "; ")
		}
		return Halt, msg, nil
	}
	return Go, "", nil
}

// outcomeTime is when st's outcome was reached (its write time for
// documents that do not say).
func outcomeTime(st *agentapi.PullStatus) time.Time {
	if !st.OutcomeTime.IsZero() {
		return st.OutcomeTime
	}
	return st.Time
}

// GateReports decides like [Gate] from statuses verified already (by
// host; a host without one has not reported): what deploy publish --wait
// holds of the waves' reports.
func GateReports(rel *agentapi.Release, now time.Time, reports map[string]*agentapi.PullStatus) (Decision, string) {
	d, reason, _ := decide(context.Background(), rel, now, func(_ context.Context, h string) (*agentapi.PullStatus, string, error) {
		return reports[h], "", nil
	})
	return d, reason
}
