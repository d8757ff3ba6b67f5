package modules

import (
	"math/big"
	"time"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// gateAttrs are the attributes only a prometheus health check has.
var gateAttrs = []string{"query", "min", "max", "window", "min_samples", "run_on"}

// Defaults of a prometheus health check.
const (
	defaultGateWindow   = time.Minute
	defaultGateInterval = 10 * time.Second
)

// float returns attribute name as a float64, and whether it is set.
func (r *Resource) float(name string) (float64, bool) {
	v, ok := r.Attrs[name]
	if !ok || v.V.IsNull() || !v.V.Type().Equals(cty.Number) {
		return 0, false
	}
	f, _ := v.V.AsBigFloat().Float64()
	return f, true
}

// gateDuration returns duration attribute name of a prometheus check, or
// def when unset or invalid (checkMetricGate reports that).
func gateDuration(r *Resource, name string, def time.Duration) time.Duration {
	if !r.Has(name) {
		return def
	}
	d, err := time.ParseDuration(r.String(name, ""))
	if err != nil {
		return def
	}
	return d
}

// gateShape returns a prometheus check's window, interval and query
// timeout (attempt_timeout, default max(interval, 5s)).
func gateShape(r *Resource) (window, interval, queryTimeout time.Duration) {
	window = gateDuration(r, "window", defaultGateWindow)
	interval = gateDuration(r, "interval", defaultGateInterval)
	queryTimeout = gateDuration(r, "attempt_timeout", max(interval, 5*time.Second))
	return window, interval, queryTimeout
}

// checkMetricGate validates a health check of type prometheus.
func checkMetricGate(r *Resource) hcl.Diagnostics {
	diags := checkName(r)
	for _, a := range []string{"address", "command", "unit", "expect_status"} {
		if r.Has(a) {
			diags = append(diags, errAt(r.Range(a), "Invalid health check",
				"A prometheus health check takes url (the Prometheus server) and query, not %s.", a))
		}
	}
	if r.Has("timeout") {
		diags = append(diags, errAt(r.Range("timeout"), "Invalid health check",
			"A prometheus health check runs for its window, not a timeout: set window (how long the query is evaluated) and attempt_timeout (how long one query may take)."))
	}
	switch u := r.String("url", ""); {
	case !r.Has("url"):
		diags = append(diags, errAt(r.nameRange(), "Invalid health check",
			"The prometheus health check %q needs url, the Prometheus server's base URL (like \"http://prometheus:9090\").", r.Name))
	case len(u) < 8 || (u[:7] != "http://" && u[:8] != "https://"):
		diags = append(diags, errAt(r.Range("url"), "Invalid url", "The Prometheus url %q must start with http:// or https://.", u))
	}
	if r.String("query", "") == "" {
		rng := r.Range("query")
		if !r.Has("query") && r.Has("type") {
			rng = r.Range("type")
		}
		diags = append(diags, errAt(rng, "Invalid health check",
			"The prometheus health check %q needs query, a PromQL instant query.", r.Name))
	}
	lo, hasMin := r.float("min")
	hi, hasMax := r.float("max")
	switch {
	case !hasMin && !hasMax:
		diags = append(diags, errAt(r.nameRange(), "Invalid health check",
			"The prometheus health check %q needs a threshold: max (every sample at most this), min, or both.", r.Name))
	case hasMin && hasMax && lo > hi:
		diags = append(diags, errAt(r.Range("min"), "Invalid threshold", "min = %v is above max = %v: no sample could pass.", lo, hi))
	}
	if run := r.String("run_on", manifest.GateOnHost); run != manifest.GateOnHost && run != manifest.GateOnOperator {
		diags = append(diags, errAt(r.Range("run_on"), "Invalid run_on",
			"run_on = %q is not \"host\" (the agent evaluates the gate) or \"operator\" (deploy does, before it confirms).", run))
	}
	durationsOK := true
	for _, a := range []string{"window", "interval", "attempt_timeout"} {
		if !r.Has(a) {
			continue
		}
		d, err := time.ParseDuration(r.String(a, ""))
		if err != nil || d < 0 || (d == 0 && a != "window") {
			durationsOK = false
			diags = append(diags, errAt(r.Range(a), "Invalid duration",
				"%s = %q is not a positive duration like \"10s\" or \"1m30s\".", a, r.String(a, "")))
		}
	}
	if v, ok := r.Attrs["min_samples"]; ok && !v.V.IsNull() {
		n, _ := r.Int("min_samples")
		if !v.V.Type().Equals(cty.Number) || !isWhole(v.V) || n < 1 {
			diags = append(diags, errAt(r.Range("min_samples"), "Invalid min_samples", "min_samples must be a whole number, at least 1."))
		} else if durationsOK {
			if evals := gateEvaluations(r); n > evals {
				window, interval, _ := gateShape(r)
				diags = append(diags, errAt(r.Range("min_samples"), "Invalid min_samples",
					"min_samples = %d, but a window of %v evaluated every %v holds only %d evaluations; lengthen window, shorten interval or lower min_samples.", n, window, interval, evals))
			}
		}
	}
	return diags
}

func isWhole(v cty.Value) bool {
	return v.AsBigFloat().IsInt() && v.AsBigFloat().Cmp(big.NewFloat(1<<31)) < 0
}

// gateEvaluations is how many times a prometheus check is evaluated.
func gateEvaluations(r *Resource) int {
	window, interval, _ := gateShape(r)
	return manifest.MetricGate{WindowMS: window.Milliseconds(), IntervalMS: interval.Milliseconds()}.Evaluations()
}

// metricGate realizes a health check of type prometheus.
func metricGate(r *Resource) manifest.MetricGate {
	window, interval, queryTimeout := gateShape(r)
	g := manifest.MetricGate{Name: r.Name, RunOn: r.String("run_on", manifest.GateOnHost), URL: r.String("url", ""),
		Query: r.String("query", ""), WindowMS: window.Milliseconds(), IntervalMS: interval.Milliseconds(),
		QueryTimeoutMS: queryTimeout.Milliseconds()}
	if f, ok := r.float("min"); ok {
		g.Min = &f
	}
	if f, ok := r.float("max"); ok {
		g.Max = &f
	}
	g.MinSamples = (g.Evaluations() + 1) / 2
	if n, ok := r.Int("min_samples"); ok {
		g.MinSamples = n
	}
	return g
}
