package metricgate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/declarative/deploy/manifest"
)

// answers serves the i-th request with answers[i] (the last one again once
// they run out): a JSON body, or "hang" to answer only when the request is
// cancelled.
type answers struct {
	mu      sync.Mutex
	list    []string
	queries []string
}

func (a *answers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	if r.URL.Path != "/prom/api/v1/query" {
		a.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	a.queries = append(a.queries, r.URL.Query().Get("query"))
	i := min(len(a.queries)-1, len(a.list)-1)
	body := a.list[i]
	a.mu.Unlock()
	if body == "hang" {
		<-r.Context().Done()
		return
	}
	if strings.Contains(body, `"error"`) {
		w.WriteHeader(http.StatusBadRequest)
	}
	fmt.Fprint(w, body)
}

func vector(values ...string) string {
	var parts []string
	for i, v := range values {
		parts = append(parts, fmt.Sprintf(`{"metric":{"code":"%d"},"value":[1700000000.5,%q]}`, 500+i, v))
	}
	return `{"status":"success","data":{"resultType":"vector","result":[` + strings.Join(parts, ",") + `]}}`
}

const (
	empty    = `{"status":"success","data":{"resultType":"vector","result":[]}}`
	badQuery = `{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:6: parse error"}`
)

func scalar(v string) string {
	return `{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"` + v + `"]}}`
}

func ptr(f float64) *float64 { return &f }

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name       string
		answers    []string
		min, max   *float64
		window     int64 // in intervals
		minSamples int
		wantErr    string // a part of the error; "" passes
		wantValue  string
		wantAsked  int // how many queries were sent (0: not checked)
	}{
		{name: "all within", answers: []string{vector("0.01"), vector("0.02"), vector("0")}, max: ptr(0.05), window: 2, minSamples: 3, wantAsked: 3},
		{name: "one above max fails at once", answers: []string{vector("0.01"), vector("0.2"), vector("0.01")}, max: ptr(0.05), window: 4, minSamples: 1,
			wantErr: `query "q" returned 0.2{code="500"}, above max 0.05`, wantValue: "0.2", wantAsked: 2},
		{name: "every series counts", answers: []string{vector("0.01", "0.3")}, max: ptr(0.05), window: 0, minSamples: 1,
			wantErr: `returned 0.3{code="501"}, above max 0.05`, wantValue: "0.3"},
		{name: "below min", answers: []string{scalar("3")}, min: ptr(5), window: 0, minSamples: 1, wantErr: "returned 3, below min 5", wantValue: "3"},
		{name: "within min and max", answers: []string{scalar("5"), scalar("6")}, min: ptr(5), max: ptr(6), window: 1, minSamples: 2},
		{name: "empty is not a pass", answers: []string{empty}, max: ptr(1), window: 2, minSamples: 1,
			wantErr: "0 of the 1 samples needed in 3 evaluations; the last evaluation without one: an empty result", wantAsked: 3},
		{name: "NaN is no sample", answers: []string{vector("NaN")}, max: ptr(1), window: 0, minSamples: 1, wantErr: "0 of the 1 samples needed"},
		{name: "some empty, enough samples", answers: []string{empty, vector("0.01"), empty, vector("0.02")}, max: ptr(0.05), window: 3, minSamples: 2, wantAsked: 4},
		{name: "fails as soon as min_samples cannot be reached", answers: []string{empty, empty, vector("0.01")}, max: ptr(0.05), window: 3, minSamples: 3,
			wantErr: "0 of the 3 samples needed in 2 evaluations (2 left cannot make up for it)", wantAsked: 2},
		{name: "an error answer", answers: []string{badQuery}, max: ptr(1), window: 0, minSamples: 1,
			wantErr: "bad_data: invalid parameter"},
		{name: "a non-numeric sample", answers: []string{vector("many")}, max: ptr(1), window: 0, minSamples: 1,
			wantErr: `sample value "many" is not a number`},
		{name: "a matrix", answers: []string{`{"status":"success","data":{"resultType":"matrix","result":[]}}`}, max: ptr(1), window: 0, minSamples: 1,
			wantErr: "returned a matrix, not a vector or scalar"},
		{name: "no answer within the query timeout", answers: []string{"hang"}, max: ptr(1), window: 0, minSamples: 1,
			wantErr: "no answer within 50ms"},
		{name: "+Inf above max", answers: []string{vector("+Inf")}, max: ptr(1), window: 0, minSamples: 1, wantErr: "returned +Inf", wantValue: "+Inf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &answers{list: tt.answers}
			srv := httptest.NewServer(a)
			defer srv.Close()
			g := manifest.MetricGate{Name: "errors", RunOn: manifest.GateOnHost, URL: srv.URL + "/prom/", Query: "q",
				Min: tt.min, Max: tt.max, IntervalMS: 1, WindowMS: tt.window, MinSamples: tt.minSamples, QueryTimeoutMS: 50}
			err := Evaluate(context.Background(), g, t.Logf)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Evaluate() = %v, want nil", err)
				}
			} else {
				var ge *Error
				if !errors.As(err, &ge) {
					t.Fatalf("Evaluate() = %v, want an *Error containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), `metric gate "errors": query "q"`) {
					t.Errorf("Evaluate() = %q, want it to contain %q", err, tt.wantErr)
				}
				if ge.Value != tt.wantValue || ge.Check != "errors" || ge.Query != "q" {
					t.Errorf("Evaluate() = %+v, want value %q", ge, tt.wantValue)
				}
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			if tt.wantAsked > 0 && len(a.queries) != tt.wantAsked {
				t.Errorf("queries sent = %d, want %d", len(a.queries), tt.wantAsked)
			}
			for _, q := range a.queries {
				if q != "q" {
					t.Errorf("query parameter = %q, want %q", q, "q")
				}
			}
		})
	}
}

func TestEvaluateUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close() // nothing listens there now
	g := manifest.MetricGate{Name: "errors", URL: u, Query: "up", Max: ptr(1), IntervalMS: 1, WindowMS: 2, MinSamples: 3, QueryTimeoutMS: 1000}
	err := Evaluate(context.Background(), g, t.Logf)
	var ge *Error
	if !errors.As(err, &ge) || !strings.Contains(err.Error(), "0 of the 3 samples needed in 1 evaluations") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Evaluate() = %v, want a failure after the first evaluation naming the refused connection", err)
	}
}

func TestEvaluateCancelled(t *testing.T) {
	srv := httptest.NewServer(&answers{list: []string{vector("0")}})
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g := manifest.MetricGate{Name: "errors", URL: srv.URL + "/prom", Query: "q", Max: ptr(1), IntervalMS: 1000, WindowMS: 60000, MinSamples: 1, QueryTimeoutMS: 1000}
	if err := Evaluate(ctx, g, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Evaluate(cancelled) = %v, want context.Canceled", err)
	}
}

func TestRedact(t *testing.T) {
	if got := Redact("http://user:secret@prom:9090/api/v1/query?query=up"); strings.Contains(got, "secret") {
		t.Errorf("Redact() = %q, want no password", got)
	}
}
