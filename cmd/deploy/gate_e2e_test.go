package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/internal/promtest"
	"github.com/declarative/deploy/vmtest"
)

// The metric gate tests (issue 31): a service built by the fleet that
// counts its own requests by status code and makes its own traffic, with
// the error ratio the test sets; a real Prometheus scraping it on every
// host; a canary that passes its http probe but not its prometheus gate.

// errappPort is where the test service listens (its /metrics and
// /healthz).
const errappPort = 9188

// errappMain is the test service: it handles 100 requests a second of
// its own, of which the fraction -error-ratio fails (exactly: after n
// requests, floor(n × ratio) have failed), and exposes
// app_requests_total by code on /metrics; /healthz always answers 200.
const errappMain = `package main

import (
	"flag"
	"fmt"
	"log"
	"math"
	"net/http"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", ":9188", "address")
	ratio := flag.Float64("error-ratio", 0, "fraction of requests that fail")
	flag.Parse()
	var mu sync.Mutex
	var total, failed int64
	go func() {
		for range time.Tick(10 * time.Millisecond) {
			mu.Lock()
			total++
			failed = int64(math.Floor(float64(total)**ratio + 1e-9))
			mu.Unlock()
		}
	}()
	http.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		t, f := total, failed
		mu.Unlock()
		fmt.Fprintf(w, "# TYPE app_requests_total counter\napp_requests_total{code=\"200\"} %d\napp_requests_total{code=\"500\"} %d\n", t-f, f)
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	log.Fatal(http.ListenAndServe(*listen, nil))
}
`

// gateQuery is the error ratio of one host (HCL, with host.address).
const gateQuery = `sum(rate(app_requests_total{instance=\"${host.address}:9188\",code=\"500\"}[10s])) / sum(rate(app_requests_total{instance=\"${host.address}:9188\"}[10s]))`

// gateRole is the role "app": the test service with the error ratio of
// var.error_ratio, an http probe and the prometheus gate "error-ratio"
// (max 0.05 over 20 s, evaluated where runOn says), against promURL; and
// before it (in name order) the gate "a-scraped", which always passes
// (Prometheus knows the target, up or not) and always runs on the
// operator: in pull mode, where nobody confirms, the host evaluates it.
func gateRole(promURL, runOn, extra string) string {
	return fmt.Sprintf(`role "app" {
  variable "error_ratio" {
    default = "0"
  }
  package "errapp" {
    go {
      src = "./errapp"
    }
  }
  service "errapp" {
    exec_start = "${package.errapp}/bin/errapp -listen :%[1]d -error-ratio ${var.error_ratio}"
  }
  health_check "http" {
    url     = "http://127.0.0.1:%[1]d/healthz"
    timeout = "20s"
  }
  health_check "a-scraped" {
    url         = %[3]q
    query       = "up{instance=\"${host.address}:%[1]d\"}"
    min         = 0
    window      = "0s"
    min_samples = 1
    run_on      = "operator"
  }
  health_check "error-ratio" {
    url         = %[3]q
    query       = "%[2]s"
    max         = 0.05
    window      = "20s"
    interval    = "1s"
    min_samples = 3
    run_on      = %[4]q
  }
%[5]s}
`, errappPort, gateQuery, promURL, runOn, extra)
}

// startGatePrometheus starts Prometheus in the test network's switch
// namespace (the operator and the hosts reach it at the controller's
// address), scraping the test service on every host of nw.
func startGatePrometheus(t *testing.T, nw *vmtest.Network) (*promtest.Server, []string) {
	var targets []string
	for _, h := range nw.Hosts {
		targets = append(targets, fmt.Sprintf("%s:%d", h.Addr(), errappPort))
	}
	srv := promtest.Start(t, promtest.Options{
		Host: vmtest.ControllerAddr.String(),
		Command: func(name string, args ...string) *exec.Cmd {
			return nw.ControllerCommand(context.Background(), name, args...)
		},
		Dial:    nw.DialContext,
		Targets: targets,
	})
	return srv, targets
}

// writeErrapp writes the test service's module into the fleet.
func writeErrapp(t *testing.T, fl *e2e.Fleet) {
	fl.Write(t, "errapp/go.mod", "module example.com/errapp\n\ngo 1.22\n")
	fl.Write(t, "errapp/main.go", errappMain)
}

var gateValue = regexp.MustCompile(`returned ([-+0-9.eE]+|\+Inf), above max 0\.05`)

// wantGateFailure checks that msg names the gate, its query for host and
// a value above the threshold.
func wantGateFailure(t *testing.T, what, msg string, h *vmtest.Host) {
	t.Helper()
	query := strings.ReplaceAll(strings.ReplaceAll(gateQuery, `\"`, `"`), "${host.address}", h.Addr().String())
	if !strings.Contains(msg, `metric gate "error-ratio"`) || !strings.Contains(msg, strconv.Quote(query)) {
		t.Errorf("%s %q does not name the gate and its query %q", what, msg, query)
	}
	m := gateValue.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("%s %q does not name the value above max 0.05", what, msg)
	}
	if v, err := strconv.ParseFloat(m[1], 64); err != nil || v <= 0.05 {
		t.Errorf("%s: the observed value %q is not above 0.05", what, m[1])
	}
}

// TestMetricGatePushE2E: three hosts in two waves (the canary h1, then h2
// and h3) run the test service, watched by a real Prometheus; the gate
// runs on the operator. A first deploy (no errors) passes every gate. A
// release whose service fails 20% of its requests passes the canary's
// http probe but not its gate: deploy rejects the activation at once
// (the host does not wait out its confirmation), h1 rolls back to the
// generation it ran, h2 and h3 are never activated, the run exits 3 and
// its events name the gate, the query and the value.
func TestMetricGatePushE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 3)
	hosts := withTest(t, nw.Hosts)
	prom, targets := startGatePrometheus(t, nw)
	fl := e2e.NewFleet(t, nw)
	r := cli.New(t, nw, fl)
	writeErrapp(t, fl)
	fl.WriteHosts(t, "", "")
	write := func(ratio string) {
		fl.Write(t, "fleet.hcl", fmt.Sprintf(`deployment "prod" {
  hosts           = [%s]
  canary          = 1
  batch_size      = "100%%"
  confirm_timeout = "20s"
}

%s
defaults {
  role "app" {
    error_ratio = %q
  }
}
`, fl.Names(), gateRole(prom.URL, "operator", ""), ratio))
	}

	// 1. No errors: every gate passes, every host at generation 1.
	write("0")
	events := r.JSON(t, "", fl.Target("prod")).Want(t, ExitOK).Events
	prom.WaitUp(t, targets...)
	before := map[string]string{}
	for _, h := range hosts {
		if res := cli.Results(events)[h.Name()]; res.Result != fleet.ResultOK || res.Generation != 1 {
			t.Fatalf("first deploy: %s: %+v", h.Name(), res)
		}
		before[h.Name()] = h.Succeed("readlink /run/deploy/current-system")
	}
	for _, gate := range []string{"a-scraped", "error-ratio"} {
		if !hasLog(events, "h1", "metric gate "+gate+" passed") {
			t.Errorf("first deploy: no event says the gate %s passed on the operator", gate)
		}
	}

	// 2. 20% errors: the canary passes its probe, fails its gate.
	write("0.2")
	events = r.JSON(t, "", fl.Target("prod")).Want(t, ExitRolledBack).Events
	res := cli.Results(events)
	h1 := res["h1"]
	if h1.Result != fleet.ResultRolledBack || h1.Phase != fleet.PhaseActivate || h1.Check != "error-ratio" {
		t.Fatalf("h1: %+v, want rolled back in activate by the check error-ratio", h1)
	}
	t.Logf("h1: %s", h1.Error)
	wantGateFailure(t, "h1's result error", h1.Error, hosts[0])
	if !strings.Contains(h1.Error, "the operator's health check failed") || strings.Contains(h1.Error, "not confirmed within") {
		t.Errorf("h1's error %q: want the operator's rejection, not the confirmation's timeout", h1.Error)
	}
	if got := hosts[0].Succeed("readlink /run/deploy/current-system"); got != before["h1"] {
		t.Errorf("h1 runs %s after its gate failed, want its previous system %s", got, before["h1"])
	}
	if got := hosts[0].Succeed("systemctl show -p ExecStart --value errapp.service"); !strings.Contains(got, "-error-ratio 0 ") {
		t.Errorf("h1's service after the rollback: %s, want the one without errors", got)
	}
	gens := generationsOf(t, r, fl.Target("h1"), "h1")
	if cur, g2 := currentGen(gens), genNumber(gens, 2); cur == nil || cur.Number != 1 || len(gens) != 2 || g2 == nil || !g2.Failed {
		t.Errorf("h1 generations %+v: want 1 current and 2 failed", gens)
	}
	for _, h := range hosts[1:] {
		if res[h.Name()].Result != fleet.ResultSkipped {
			t.Errorf("%s: %+v, want skipped", h.Name(), res[h.Name()])
		}
		if got := h.Succeed("readlink /run/deploy/current-system"); got != before[h.Name()] {
			t.Errorf("%s runs %s, want %s: the second wave must not activate", h.Name(), got, before[h.Name()])
		}
		if gens := generationsOf(t, r, fl.Target(h.Name()), h.Name()); len(gens) != 1 {
			t.Errorf("%s has generations %+v, want only the first", h.Name(), gens)
		}
	}
}

// hasLog reports whether a host.log event of host contains s.
func hasLog(events []fleet.Event, host, s string) bool {
	for _, ev := range events {
		if ev.Type == fleet.EventLog && ev.Host == host && strings.Contains(ev.Message, s) {
			return true
		}
	}
	return false
}

// TestMetricGatePullE2E: the same fleet in pull mode, the gate evaluated
// by each host: a release whose service fails 20% of its requests rolls
// the canary back by itself (its status names the check, the query and
// the value), the later wave halts without activating, publish --wait
// exits 3.
func TestMetricGatePullE2E(t *testing.T) {
	t.Parallel()
	p := newPullEnv(t, 3, `canary       = 1
  batch_size   = "100%"`)
	prom, targets := startGatePrometheus(t, p.nw)
	writeErrapp(t, p.fl)
	target := p.fl.Target("prod")
	write := func(ratio string) {
		p.fl.Write(t, "fleet.hcl", fmt.Sprintf(`deployment "prod" {
  hosts        = [%s]
  %s
  wave_timeout = "10m"
}

%s
defaults {
  role "app" {
    error_ratio = %q
  }
}
`, p.fl.Names(), p.waves, gateRole(prom.URL, "host", fmt.Sprintf(`  secret "pull-status" {
    source = "secrets/pull-status.age"
  }
  pull {
    channel            = "prod"
    interval           = "2s"
    jitter             = "0s"
    %s
    status_credentials = secret.pull-status.path
  }
`, p.trustLine())), ratio))
	}

	// 0. The hosts join pull mode by one push deploy: no errors, the
	// gates (on the hosts) pass.
	write("0")
	p.r.Text(t, "", target).Want(t, ExitOK)
	prom.WaitUp(t, targets...)
	before := map[string]string{}
	for _, h := range p.nw.Hosts {
		h.WaitForUnit("deploy-pull.timer")
		before[h.Name()] = h.Succeed("readlink /run/deploy/current-system")
	}

	// 1. 20% errors, published: the canary's own gate fails.
	write("0.2")
	p.fl.Commit(t, "20% errors")
	res := p.r.Run(t, "publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", target).Want(t, ExitRolledBack).Results()
	if r := res["h1"]; r.Result != fleet.ResultRolledBack || r.PullStatus == nil || r.PullStatus.Check != "error-ratio" {
		t.Errorf("h1: %+v, want rolled back by the health check \"error-ratio\"", r)
	}
	st := p.waitStatus("h1", "serial 1 rolled back", func(st *agentapi.PullStatus) bool {
		return st.Serial == 1 && st.Outcome == agentapi.PullRolledBack
	})
	if st.Check != "error-ratio" {
		t.Errorf("h1's status %+v, want the check error-ratio", st)
	}
	t.Logf("h1's status: %s", st.Message)
	wantGateFailure(t, "h1's status message", st.Message, p.nw.Hosts[0])
	// Nobody confirms in pull mode: the host evaluated the operator's
	// gate itself, before its own.
	actLog := p.nw.Hosts[0].Succeed("cat $(ls -1v /var/lib/deploy/log/activate-*.log | tail -1)")
	if !strings.Contains(actLog, "metric gate a-scraped: evaluating") || !strings.Contains(actLog, "health check a-scraped passed") {
		t.Errorf("h1's activation log does not show the gate a-scraped (run_on operator) evaluated on the host:\n%s", actLog)
	}
	for _, h := range p.nw.Hosts {
		if got := h.Succeed("readlink /run/deploy/current-system"); got != before[h.Name()] {
			t.Errorf("%s runs %s after the bad release, want %s", h.Name(), got, before[h.Name()])
		}
		if h.Name() == "h1" {
			continue
		}
		if res[h.Name()].Result != fleet.ResultSkipped || !strings.Contains(res[h.Name()].Error, "halted") {
			t.Errorf("%s: %+v, want skipped (halted)", h.Name(), res[h.Name()])
		}
		p.waitStatus(h.Name(), "serial 1 halted", func(st *agentapi.PullStatus) bool { return st.Serial == 1 && st.Outcome == agentapi.PullHalted })
		if gens := p.generations(h); len(gens) != 1 {
			t.Errorf("%s has generations %+v, want only the first: the later wave must not activate", h.Name(), gens)
		}
	}
	if gens := p.generations(p.nw.Hosts[0]); len(gens) != 2 || genNumber(gens, 2) == nil || !genNumber(gens, 2).Failed || currentGen(gens) == nil || currentGen(gens).Number != 1 {
		t.Errorf("h1 generations %+v: want 1 current and 2 failed", gens)
	}
}

func genNumber(gens []*agentapi.Generation, n int) *agentapi.Generation {
	for _, g := range gens {
		if g.Number == n {
			return g
		}
	}
	return nil
}
