package builder

import (
	"testing"

	"github.com/declarative/deploy/manifest"
	"github.com/google/go-cmp/cmp"
)

// A health check of type prometheus is realized as a metric gate, with
// its defaults: window 1m, interval 10s, the query timeout max(interval,
// 5s), min_samples half of the evaluations rounded up, run_on host; the
// other checks stay health checks.
func TestMetricGateRealized(t *testing.T) {
	dir := writeFleet(t, map[string]string{"fleet.hcl": `
host "h1" {
  address = "10.0.0.1"
  health_check "http" {
    url = "http://localhost:8080/"
  }
  health_check "errors" {
    url   = "http://prometheus:9090"
    query = "sum(rate(errors_total[1m]))"
    max   = 0.05
  }
  health_check "latency" {
    type            = "prometheus"
    url             = "https://prometheus.example/prom"
    query           = "histogram_quantile(0.99, rate(latency_bucket[1m]))"
    min             = 0
    max             = 0.3
    window          = "30s"
    interval        = "5s"
    attempt_timeout = "2s"
    min_samples     = 7
    run_on          = "operator"
  }
}
`})
	res := build(t, newTestBuilder(t, t.TempDir()), load(t, dir), "h1")
	zero, max5, max03 := 0.0, 0.05, 0.3
	want := []manifest.MetricGate{
		{Name: "errors", RunOn: "host", URL: "http://prometheus:9090", Query: "sum(rate(errors_total[1m]))", Max: &max5,
			WindowMS: 60000, IntervalMS: 10000, MinSamples: 4, QueryTimeoutMS: 10000},
		{Name: "latency", RunOn: "operator", URL: "https://prometheus.example/prom", Query: "histogram_quantile(0.99, rate(latency_bucket[1m]))",
			Min: &zero, Max: &max03, WindowMS: 30000, IntervalMS: 5000, MinSamples: 7, QueryTimeoutMS: 2000},
	}
	if diff := cmp.Diff(want, res.Manifest.MetricGates); diff != "" {
		t.Errorf("metric gates (-want +got):\n%s", diff)
	}
	if len(res.Manifest.HealthChecks) != 1 || res.Manifest.HealthChecks[0].Name != "http" {
		t.Errorf("health checks %+v, want only http", res.Manifest.HealthChecks)
	}
}
