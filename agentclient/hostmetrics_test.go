package agentclient

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metrics parses the host's Prometheus textfile
// (/var/lib/deploy/metrics/deploy.prom) as node_exporter's textfile
// collector does, and returns each sample as "name{label=value,...}"
// (labels sorted) → value.
func (f *fixture) metrics() map[string]float64 {
	f.t.Helper()
	prom := f.h.Succeed("cat /var/lib/deploy/metrics/deploy.prom")
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(prom))
	if err != nil {
		f.t.Fatalf("the host's textfile does not parse: %v\n%s", err, prom)
	}
	out := map[string]float64{}
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			slices.Sort(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}

// wantMetrics checks the host's textfile: each sample of want with its
// value, and none of absent.
func (f *fixture) wantMetrics(t *testing.T, when string, want map[string]float64, absent ...string) {
	t.Helper()
	got := f.metrics()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: %s = %v (present %v), want %v", when, k, g, ok, v)
		}
	}
	for _, k := range absent {
		if g, ok := got[k]; ok {
			t.Errorf("%s: %s = %v, want it absent", when, k, g)
		}
	}
}
