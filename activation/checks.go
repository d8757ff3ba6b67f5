package activation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/declarative/deploy/internal/metricgate"
	"github.com/declarative/deploy/manifest"
)

// HealthError is a health check that did not pass within its timeout.
type HealthError struct {
	Check string
	Err   error // the last attempt's error
}

func (e *HealthError) Error() string {
	var ge *metricgate.Error
	if errors.As(e.Err, &ge) {
		// It names the check itself.
		return "health check failed: " + e.Err.Error()
	}
	return fmt.Sprintf("health check %q failed: %v", e.Check, e.Err)
}

// HostGates returns the metric gates the host evaluates: those with
// run_on host, and, when no operator confirms the activation (pull mode,
// --confirm-timeout 0), those with run_on operator too, so that no gate
// is skipped.
func HostGates(gates []manifest.MetricGate, noOperator bool) []manifest.MetricGate {
	var out []manifest.MetricGate
	for _, g := range gates {
		if g.RunOn == manifest.GateOnHost || noOperator {
			out = append(out, g)
		}
	}
	return out
}

// CheckGates evaluates the metric gates one after another, in name order
// ([metricgate.Evaluate]: an instant query every interval for the
// window). It returns a *[HealthError] for the first gate that fails.
func CheckGates(ctx context.Context, gates []manifest.MetricGate, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, g := range gates {
		logf("metric gate %s: evaluating %q against %s every %v for %v (at least %d samples)", g.Name, g.Query, metricgate.Redact(g.URL),
			time.Duration(g.IntervalMS)*time.Millisecond, time.Duration(g.WindowMS)*time.Millisecond, g.MinSamples)
		if err := metricgate.Evaluate(ctx, g, logf); err != nil {
			return &HealthError{Check: g.Name, Err: err}
		}
		logf("health check %s passed", g.Name)
	}
	return nil
}

func (e *HealthError) Unwrap() error { return e.Err }

// CheckHealth runs every check until it passes, each within its own
// timeout (default 30 s), retrying every interval (default 1 s); one
// attempt is stopped after the check's attempt timeout (default max(interval,
// 5 s)); the checks run one after another, in name order. It returns a *[HealthError] for the
// first check that does not pass.
func CheckHealth(ctx context.Context, checks []manifest.HealthCheck, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, c := range checks {
		timeout := time.Duration(c.TimeoutMS) * time.Millisecond
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		interval := time.Duration(c.IntervalMS) * time.Millisecond
		if interval <= 0 {
			interval = time.Second
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := checkUntil(cctx, c, interval)
		cancel()
		if err != nil {
			return &HealthError{Check: c.Name, Err: err}
		}
		logf("health check %s passed", c.Name)
	}
	return nil
}

// attemptTimeout is how long one attempt of c may take: its
// attempt_timeout, else max(interval, 5 s); never more than the check's
// timeout (the check's context ends it then anyway).
func attemptTimeout(c manifest.HealthCheck, interval time.Duration) time.Duration {
	if c.AttemptTimeoutMS > 0 {
		return time.Duration(c.AttemptTimeoutMS) * time.Millisecond
	}
	return max(interval, 5*time.Second)
}

func checkUntil(ctx context.Context, c manifest.HealthCheck, interval time.Duration) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, attemptTimeout(c, interval))
		last = checkOnce(attempt, c)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(last, context.DeadlineExceeded) || errors.Is(last, context.Canceled) {
				return fmt.Errorf("no success within the timeout")
			}
			return last
		case <-time.After(interval):
		}
	}
}

func checkOnce(ctx context.Context, c manifest.HealthCheck) error {
	switch c.Type {
	case manifest.CheckHTTP:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL, nil)
		if err != nil {
			return err
		}
		client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		want := c.ExpectStatus
		if want == 0 {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			return fmt.Errorf("GET %s: status %d, want %d", c.URL, resp.StatusCode, want)
		}
		return nil
	case manifest.CheckTCP:
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.Address)
		if err != nil {
			return err
		}
		return conn.Close()
	case manifest.CheckCommand:
		out, err := exec.CommandContext(ctx, c.Command[0], c.Command[1:]...).CombinedOutput()
		if err != nil {
			if msg := strings.TrimSpace(string(out)); msg != "" {
				return fmt.Errorf("%q: %w: %s", c.Command, err, lastLine(msg))
			}
			return fmt.Errorf("%q: %w", c.Command, err)
		}
		return nil
	case manifest.CheckUnitActive:
		out, err := exec.CommandContext(ctx, "systemctl", "is-active", "--", c.Unit).Output()
		if err != nil {
			return fmt.Errorf("unit %s is %s", c.Unit, strings.TrimSpace(string(out)))
		}
		return nil
	}
	return fmt.Errorf("unknown health check type %q", c.Type)
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
