// Package metricgate judges a metric gate: a health check of type
// prometheus ([manifest.MetricGate]), an instant PromQL query asked of a
// Prometheus server every interval for a window, its values held against
// thresholds. The agent evaluates gates on the host and deploy on the
// operator's machine; both use [Evaluate], so the two agree on what passes.
//
// # Semantics
//
// The query is sent to URL/api/v1/query (Prometheus' HTTP API, GET, no
// time parameter: "now" on the server) at 0, interval, 2×interval, ... up
// to the window. Each evaluation yields a sample when the answer is a
// scalar, or a vector of at least one series, with a number that is not
// NaN; every series of a vector is held against the thresholds. Then:
//
//   - a sample out of bounds (below min or above max) fails the gate at
//     once, naming the query, the value (and its series) and the bound;
//   - an evaluation without a sample (an empty vector, NaN, an error
//     answer, a server that does not answer within the query timeout) is
//     not a pass: it counts for nothing, and the gate fails as soon as the
//     evaluations left can no longer bring min_samples samples;
//   - the gate passes when the window ended with at least min_samples
//     samples, every one within the bounds.
//
// # Client
//
// A plain net/http client that ignores proxy settings from the
// environment (as the agent's http health checks do) and reads at most
// 1 MiB of an answer.
package metricgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/manifest"
)

// maxAnswer bounds the size of an answer that is read.
const maxAnswer = 1 << 20

// Error is a gate that failed: a sample out of bounds, or too few samples.
type Error struct {
	// Check is the gate's name, Query its PromQL.
	Check, Query string
	// Value is the offending value as Prometheus wrote it ("0.2"), with
	// Series its labels ({code="500"}; empty for a scalar or a series
	// without labels); empty when the gate failed for want of samples.
	Value, Series string
	// Reason says why: "above max 0.05", "2 of the 3 samples needed (...)".
	Reason string
}

func (e *Error) Error() string {
	if e.Value != "" {
		return fmt.Sprintf("metric gate %q: query %q returned %s%s, %s", e.Check, e.Query, e.Value, e.Series, e.Reason)
	}
	return fmt.Sprintf("metric gate %q: query %q: %s", e.Check, e.Query, e.Reason)
}

// Sample is one series' value of an evaluation.
type Sample struct {
	Series string  // its labels, {a="b",...}; "" for a scalar
	Text   string  // the value as Prometheus wrote it
	Value  float64 // parsed
}

// Query asks the Prometheus server at base (its root URL) for the instant
// value of query. It returns the samples of the answer (none for an empty
// vector; NaN values are left out), or an error for a failed request, an
// error answer, or an answer of a type other than vector or scalar.
func Query(ctx context.Context, client *http.Client, base, query string) ([]Sample, error) {
	u := strings.TrimSuffix(base, "/") + "/api/v1/query?" + url.Values{"query": {query}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", Redact(u), err)
	}
	if len(body) > maxAnswer {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", Redact(u), maxAnswer)
	}
	var ans struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("GET %s: status %d, not a Prometheus answer: %v", Redact(u), resp.StatusCode, err)
	}
	if ans.Status != "success" {
		return nil, fmt.Errorf("prometheus: status %d: %s: %s", resp.StatusCode, ans.ErrorType, ans.Error)
	}
	switch ans.Data.ResultType {
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(ans.Data.Result, &v); err != nil {
			return nil, fmt.Errorf("prometheus: malformed scalar: %v", err)
		}
		s, err := sample("", v[1])
		if err != nil || math.IsNaN(s.Value) {
			return nil, err
		}
		return []Sample{s}, nil
	case "vector":
		var vec []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(ans.Data.Result, &vec); err != nil {
			return nil, fmt.Errorf("prometheus: malformed vector: %v", err)
		}
		var out []Sample
		for _, e := range vec {
			s, err := sample(labels(e.Metric), e.Value[1])
			if err != nil {
				return nil, err
			}
			if !math.IsNaN(s.Value) {
				out = append(out, s)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("prometheus: the query returned a %s, not a vector or scalar", ans.Data.ResultType)
}

func sample(series string, v any) (Sample, error) {
	text, ok := v.(string)
	if !ok {
		return Sample{}, fmt.Errorf("prometheus: sample value %v is not a string", v)
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return Sample{}, fmt.Errorf("prometheus: sample value %q is not a number", text)
	}
	return Sample{Series: series, Text: text, Value: f}, nil
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	b.WriteByte('}')
	return b.String()
}

// Redact drops a URL's user information (a password in a Prometheus URL
// must not reach a log).
func Redact(u string) string {
	if p, err := url.Parse(u); err == nil && p.User != nil {
		p.User = nil
		return p.String()
	}
	return u
}

// Evaluate judges gate g as the package documentation says, logging each
// evaluation to logf (nil: none). It returns nil when the gate passed, an
// *[Error] when it failed, and ctx's error when ctx ended first.
func Evaluate(ctx context.Context, g manifest.MetricGate, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	interval := time.Duration(g.IntervalMS) * time.Millisecond
	queryTimeout := time.Duration(g.QueryTimeoutMS) * time.Millisecond
	n := g.Evaluations()
	need := max(g.MinSamples, 1)
	samples := 0
	var lastProblem string
	start := time.Now()
	for i := range n {
		if i > 0 {
			// Evaluation i is due at start + i×interval (a slow answer does
			// not push the later ones back, so the window stays the window).
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Until(start.Add(time.Duration(i) * interval))):
			}
		}
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		got, err := Query(qctx, client, g.URL, g.Query)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err != nil:
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no answer within %v: %w", queryTimeout, err)
			}
			lastProblem = err.Error()
			logf("metric gate %s: evaluation %d of %d: %v", g.Name, i+1, n, err)
		case len(got) == 0:
			lastProblem = "an empty result"
			logf("metric gate %s: evaluation %d of %d: empty result", g.Name, i+1, n)
		default:
			for _, s := range got {
				if reason := outOfBounds(g, s.Value); reason != "" {
					logf("metric gate %s: evaluation %d of %d: %s%s = %s, %s", g.Name, i+1, n, g.Query, s.Series, s.Text, reason)
					return &Error{Check: g.Name, Query: g.Query, Value: s.Text, Series: s.Series, Reason: reason}
				}
			}
			samples++
			logf("metric gate %s: evaluation %d of %d: %s within bounds (%d of %d samples needed)", g.Name, i+1, n, values(got), samples, need)
		}
		if samples+(n-1-i) < need {
			reason := fmt.Sprintf("%d of the %d samples needed in %d evaluations", samples, need, i+1)
			if i+1 < n {
				reason += fmt.Sprintf(" (%d left cannot make up for it)", n-1-i)
			}
			if lastProblem != "" {
				reason += "; the last evaluation without one: " + lastProblem
			}
			return &Error{Check: g.Name, Query: g.Query, Reason: reason}
		}
	}
	return nil
}

// outOfBounds says how v misses g's bounds ("" when it is within them).
func outOfBounds(g manifest.MetricGate, v float64) string {
	if g.Max != nil && v > *g.Max {
		return "above max " + strconv.FormatFloat(*g.Max, 'g', -1, 64)
	}
	if g.Min != nil && v < *g.Min {
		return "below min " + strconv.FormatFloat(*g.Min, 'g', -1, 64)
	}
	return ""
}

func values(ss []Sample) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, s.Series+s.Text)
	}
	if len(parts) > 3 {
		parts = append(parts[:3], fmt.Sprintf("... (%d series)", len(ss)))
	}
	return strings.Join(parts, " ")
}
