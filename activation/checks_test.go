package activation

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/declarative/deploy/manifest"
)

// A check whose one attempt needs 8 s passes when its attempt_timeout
// allows it; with the default attempt timeout (max(interval, 5 s)) every
// attempt is stopped first and the check fails at its timeout.
func TestHealthCheckAttemptTimeout(t *testing.T) {
	slow := manifest.HealthCheck{Name: "slow", Type: manifest.CheckCommand, Command: []string{"/bin/sh", "-c", "sleep 8"},
		TimeoutMS: 20000, IntervalMS: 500}
	t.Run("attempt_timeout 10s", func(t *testing.T) {
		c := slow
		c.AttemptTimeoutMS = 10000
		if err := CheckHealth(context.Background(), []manifest.HealthCheck{c}, t.Logf); err != nil {
			t.Fatalf("CheckHealth = %v, want the 8 s check to pass", err)
		}
	})
	t.Run("default", func(t *testing.T) {
		c := slow
		c.TimeoutMS = 9000
		err := CheckHealth(context.Background(), []manifest.HealthCheck{c}, t.Logf)
		var he *HealthError
		if !errors.As(err, &he) {
			t.Fatalf("CheckHealth = %v, want a HealthError: no attempt may run 8 s", err)
		}
	})
}

// HostGates: the host evaluates its own gates, and the operator's too when
// no operator confirms (pull mode, --confirm-timeout 0).
func TestHostGates(t *testing.T) {
	gates := []manifest.MetricGate{{Name: "a", RunOn: manifest.GateOnHost}, {Name: "b", RunOn: manifest.GateOnOperator}}
	names := func(gs []manifest.MetricGate) (out []string) {
		for _, g := range gs {
			out = append(out, g.Name)
		}
		return out
	}
	if got := names(HostGates(gates, false)); !slices.Equal(got, []string{"a"}) {
		t.Errorf("HostGates(with an operator) = %v, want [a]", got)
	}
	if got := names(HostGates(gates, true)); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("HostGates(no operator) = %v, want [a b]", got)
	}
}
