package activation

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parseTextfile parses the metrics file as Prometheus (and node_exporter's
// textfile collector) does, and returns each sample as "name{labels}" →
// value.
func parseTextfile(t *testing.T, l Layout) map[string]float64 {
	t.Helper()
	data, err := os.ReadFile(l.MetricsFile())
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("expfmt cannot parse the textfile: %v\n%s", err, data)
	}
	out := map[string]float64{}
	for name, f := range fams {
		if f.GetType() != dto.MetricType_GAUGE {
			t.Errorf("%s has type %v, want gauge", name, f.GetType())
		}
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
		for _, m := range f.GetMetric() {
			key := name
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			slices.Sort(labels)
			if len(labels) > 0 {
				key += "{" + joinComma(labels) + "}"
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}

// wantSamples checks that got has each sample of want with its value.
func wantSamples(t *testing.T, got map[string]float64, when string, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: %s = %v (present %v), want %v", when, k, g, ok, v)
		}
	}
}

func joinComma(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(x)
	}
	return b.String()
}

func TestMetricsTextfile(t *testing.T) {
	dir := t.TempDir()
	l := Layout{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), UnitDir: filepath.Join(dir, "units")}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	sys := "/var/lib/deploy/store/00000000000000000000000000000000-system-web1"
	if _, err := l.createGeneration(1, sys, map[string]string{"git_rev": "0123abc", "operator": `o"p\er`}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := l.setCurrent(sys); err != nil {
		t.Fatal(err)
	}
	if err := l.writeState(&State{Current: 1, CurrentSystem: sys}); err != nil {
		t.Fatal(err)
	}

	// An activation that succeeded.
	before := time.Now()
	if err := l.writeResult(&Result{ID: "a1", Outcome: OutcomeDone, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	got := parseTextfile(t, l)
	ts := got["deploy_last_activation_timestamp_seconds"]
	if ts < float64(before.Unix()-1) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("deploy_last_activation_timestamp_seconds = %v, want about %d", ts, before.Unix())
	}
	delete(got, "deploy_last_activation_timestamp_seconds")
	want := map[string]float64{
		"deploy_current_generation": 1,
		`deploy_generation_info{generation=1,git_rev=0123abc,operator=o"p\er,system=` + sys + `}`: 1,
		"deploy_last_activation_generation":                   1,
		"deploy_last_activation_success":                      1,
		"deploy_last_activation_outcome{outcome=done}":        1,
		"deploy_last_activation_outcome{outcome=rolled-back}": 0,
		"deploy_last_activation_outcome{outcome=failed}":      0,
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("textfile after an activation (-want +got):\n%s", d)
	}

	// Generation 2's checks, one failing, then the activation rolled back
	// to generation 1, whose checks then pass.
	if err := l.recordChecks(2, []string{"http", "port"}, []string{"port"}); err != nil {
		t.Fatal(err)
	}
	got = parseTextfile(t, l)
	wantSamples(t, got, "after a failed check", map[string]float64{
		"deploy_last_check_generation":     2,
		"deploy_checks_failing":            1,
		"deploy_check_failing{check=port}": 1,
		"deploy_check_failing{check=http}": 0,
	})
	rollingBack := func(id string, gen, prev int) {
		t.Helper()
		st := &State{Current: prev, CurrentSystem: sys, Activation: &ActivationState{RollbackBegun: true}}
		st.Activation.ID, st.Activation.Generation, st.Activation.Previous, st.Activation.Phase = id, gen, prev, PhaseRollingBack
		if err := l.writeState(st); err != nil {
			t.Fatal(err)
		}
	}
	rollingBack("a2", 2, 1)
	if err := l.recordChecks(1, []string{"http"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.writeResult(&Result{ID: "a2", Outcome: OutcomeRolledBack, Generation: 2, Check: "port"}); err != nil {
		t.Fatal(err)
	}
	got = parseTextfile(t, l)
	wantSamples(t, got, "after an automatic rollback", map[string]float64{
		"deploy_last_check_generation":                        1,
		"deploy_checks_failing":                               0,
		"deploy_check_failing{check=http}":                    0,
		"deploy_last_activation_success":                      0,
		"deploy_last_activation_generation":                   2,
		"deploy_last_activation_outcome{outcome=rolled-back}": 1,
		"deploy_last_rollback_success":                        1,
		"deploy_last_rollback_generation":                     1,
		"deploy_last_rollback_outcome{outcome=rolled-back}":   1,
		"deploy_current_generation":                           1,
	})
	if _, ok := got["deploy_check_failing{check=port}"]; ok {
		t.Errorf("after the rollback, generation 2's check is still shown")
	}
	if _, ok := got["deploy_last_check_timestamp_seconds"]; !ok {
		t.Errorf("no deploy_last_check_timestamp_seconds after a check run")
	}

	// A rollback that failed too.
	rollingBack("a3", 3, 1)
	if err := l.writeResult(&Result{ID: "a3", Outcome: OutcomeFailed, Generation: 3}); err != nil {
		t.Fatal(err)
	}
	got = parseTextfile(t, l)
	wantSamples(t, got, "after a failed rollback", map[string]float64{
		"deploy_last_activation_success":                 0,
		"deploy_last_activation_outcome{outcome=failed}": 1,
		"deploy_last_rollback_success":                   0,
		"deploy_last_rollback_generation":                1,
		"deploy_last_rollback_outcome{outcome=failed}":   1,
	})

	// The rollback command re-activates generation 1: a rollback that
	// succeeded. An activation that failed before any change (no
	// rollback begun) is no rollback, and a dry activation is not
	// recorded at all.
	if err := l.writeState(&State{Current: 1, CurrentSystem: sys}); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteRequest(&Request{ID: "a4", System: sys, Generation: 1, Mode: ModeSwitch}); err != nil {
		t.Fatal(err)
	}
	if err := l.writeResult(&Result{ID: "a4", Outcome: OutcomeDone, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if err := l.writeResult(&Result{ID: "a5", Outcome: OutcomeDry}); err != nil {
		t.Fatal(err)
	}
	got = parseTextfile(t, l)
	wantSamples(t, got, "after the rollback command", map[string]float64{
		"deploy_last_rollback_success":      1,
		"deploy_last_rollback_generation":   1,
		"deploy_last_activation_success":    1,
		"deploy_last_activation_generation": 1,
	})
	if err := l.writeResult(&Result{ID: "a6", Outcome: OutcomeFailed, Generation: 4}); err != nil {
		t.Fatal(err)
	}
	got = parseTextfile(t, l)
	wantSamples(t, got, "after a failed activation that changed nothing", map[string]float64{
		"deploy_last_activation_success":  0,
		"deploy_last_rollback_success":    1,
		"deploy_last_rollback_generation": 1,
	})

	// A lock-held result changed nothing and records nothing.
	fi, _ := os.Stat(l.MetricsFile())
	if err := l.writeResult(&Result{ID: "a7", Outcome: OutcomeLockHeld}); err != nil {
		t.Fatal(err)
	}
	if fi2, _ := os.Stat(l.MetricsFile()); !fi2.ModTime().Equal(fi.ModTime()) {
		t.Errorf("a lock-held result rewrote the textfile")
	}

	// Written by rename: nothing but the two files in the directory.
	ents, _ := os.ReadDir(filepath.Dir(l.MetricsFile()))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if d := cmp.Diff([]string{"deploy.prom", "state.json"}, names); d != "" {
		t.Errorf("metrics directory (-want +got):\n%s", d)
	}
}
