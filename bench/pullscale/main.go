// Command pullscale measures pull mode at scale on tier 2 of the scale
// harness (vmtest/simhost): N simulated hosts, each running the real
// deploy-agent with its own store and state in its own mount and network
// namespace, against a real MinIO behind a counting reverse proxy, with
// the real deploy publishing. Tier 2 is a simulation of systemd, not of the
// agent, the store, the network or S3: systemctl is a recording stand-in
// that answers "active", and deploy-pull.timer is played by the harness
// (simhost.Timers) from the unit the generation installed.
//
//	pullscale -hosts 1000 -deploy BIN/deploy -agent BIN/deploy-agent [-fail] [-idle 3m]
//
// It bootstraps the fleet (one role: a file, a service, a command check;
// 5 waves: a canary, then four batches), starts the hosts' timers, then
// times `deploy publish --wait` of a change from its start to its exit
// (every host reported healthy), and reports the operator's CPU and
// maximum RSS (rusage), the S3 requests and bytes by key class per host
// per rollout, the requests of waiting hosts per poll (per gate decision),
// an idle period scaled to an hour, and the load average. With -fail it
// then publishes a change whose health check fails: the canary rolls back,
// and it counts the hosts of waves 2+ that activated (must be 0) and the
// time from the canary's report to --wait's halt line. See bench/pullscale.sh.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/bench/internal/cpuacct"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/pull/channel"
	"github.com/declarative/deploy/vmtest/simhost"
)

// cg holds the experiment's processes (nil without cpuacct).
var cg *cpuacct.Group

// fatal is what tb.Fatal panics with, so that main cleans up.
type fatal struct{ msg string }

// tb is enough of a testing.TB for miniotest in a program: failures panic
// (main recovers, cleans up and exits 1), cleanups run at the end.
type tb struct {
	testing.TB
	dir      string
	cleanups []func()
}

func (t *tb) Helper()                         {}
func (t *tb) Logf(format string, args ...any) { log.Printf(format, args...) }
func (t *tb) Fatal(args ...any)               { panic(fatal{fmt.Sprint(args...)}) }
func (t *tb) Fatalf(format string, args ...any) {
	panic(fatal{fmt.Sprintf(format, args...)})
}
func (t *tb) Skipf(format string, args ...any) { panic(fatal{fmt.Sprintf(format, args...)}) }
func (t *tb) Cleanup(f func())                 { t.cleanups = append(t.cleanups, f) }
func (t *tb) TempDir() string {
	d, err := os.MkdirTemp(t.dir, "tmp-")
	if err != nil {
		panic(fatal{err.Error()})
	}
	return d
}

func failf(format string, args ...any) { panic(fatal{fmt.Sprintf(format, args...)}) }

type options struct {
	hosts    int
	waves    int
	interval time.Duration
	jitter   time.Duration
	idle     time.Duration
	fail     bool
	deploy   string
	agent    string
	dir      string
	parallel int
	poll     time.Duration
	out      string
	order    string
	logs     string
}

func main() {
	var o options
	flag.IntVar(&o.hosts, "hosts", 100, "how many simulated hosts")
	flag.IntVar(&o.waves, "waves", 5, "how many waves (a canary of one host, then equal batches)")
	flag.DurationVar(&o.interval, "interval", 10*time.Second, "the pull block's interval")
	flag.DurationVar(&o.jitter, "jitter", time.Second, "the pull block's jitter")
	flag.DurationVar(&o.idle, "idle", 3*time.Minute, "how long to measure the converged, idle fleet")
	flag.BoolVar(&o.fail, "fail", false, "then publish a change whose health check fails (a failing canary)")
	flag.StringVar(&o.deploy, "deploy", "", "the deploy binary (deploy-agent beside it)")
	flag.StringVar(&o.agent, "agent", "", "the deploy-agent binary")
	flag.StringVar(&o.dir, "dir", "/var/tmp", "where the work directory is made (not /tmp: the hosts mount their own)")
	flag.IntVar(&o.parallel, "bootstrap-parallel", 16, "hosts bootstrapped at once")
	flag.DurationVar(&o.poll, "wait-poll", 2*time.Second, "publish --wait's --poll")
	flag.StringVar(&o.out, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&o.logs, "logs", "", "keep deploy publish's logs (publish-vN.log) in this directory")
	flag.StringVar(&o.order, "order", "rollout,idle,fail", "the phases, in order (fail only with -fail; status: deploy status --channel)")
	flag.Parse()
	if o.deploy == "" || o.agent == "" {
		log.Fatal("pullscale: -deploy and -agent are required (bench/pullscale.sh builds them)")
	}
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	t := &tb{}
	cg = cpuacct.Join("pullscale")
	// Interrupted, it cleans up (hosts, bridges, MinIO) before it exits.
	var cleanOnce sync.Once
	cleanup := func() {
		cleanOnce.Do(func() {
			for i := len(t.cleanups) - 1; i >= 0; i-- {
				t.cleanups[i]()
			}
			cg.Leave()
		})
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		log.Printf("pullscale: %v: cleaning up", s)
		cleanup()
		os.Exit(1)
	}()
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				f, ok := r.(fatal)
				if !ok {
					panic(r)
				}
				log.Printf("pullscale: %s", f.msg)
				code = 1
			}
		}()
		run(o, t)
	}()
	cleanup()
	os.Exit(code)
}

// results is what the run measured, for -json.
type results struct {
	Hosts       int               `json:"hosts"`
	Waves       [][]string        `json:"-"`
	WaveSizes   []int             `json:"wave_sizes"`
	Interval    string            `json:"interval"`
	Machine     string            `json:"machine"`
	Setup       map[string]string `json:"setup"`
	Rollout     *phase            `json:"rollout,omitempty"`
	Idle        *phase            `json:"idle,omitempty"`
	Fail        *phase            `json:"fail,omitempty"`
	Status      *phase            `json:"status,omitempty"`
	FailSummary map[string]any    `json:"fail_summary,omitempty"`
}

// phase is one measured period.
type phase struct {
	Name      string        `json:"name"`
	Wall      time.Duration `json:"wall_ns"`
	Exit      int           `json:"exit"`
	CPUUser   time.Duration `json:"operator_cpu_user_ns,omitempty"`
	CPUSys    time.Duration `json:"operator_cpu_sys_ns,omitempty"`
	MaxRSSKiB int64         `json:"operator_max_rss_kib,omitempty"`
	LoadMax   float64       `json:"load1_max"`
	LoadEnd   [3]float64    `json:"load_end"`
	CPUBusy   float64       `json:"machine_cpu_busy"`
	// HarnessCPU is the CPU time of every process of the experiment
	// (hosts, agents, MinIO, proxy, deploy) during the phase.
	HarnessCPU   time.Duration      `json:"harness_cpu_ns"`
	HostReq      int64              `json:"host_requests"`
	HostBytesIn  int64              `json:"host_bytes_in"`
	HostBytesOut int64              `json:"host_bytes_out"`
	OpReq        int64              `json:"operator_requests"`
	OpBytesIn    int64              `json:"operator_bytes_in"`
	OpBytesOut   int64              `json:"operator_bytes_out"`
	Polls        map[string]pollSum `json:"polls"`
	Extra        map[string]any     `json:"extra,omitempty"`
	counts       snapshot
	start        time.Time
}

// pollSum sums the polls of one action (what the agent printed: waiting,
// done, halted, ...; "idle" for a poll that printed nothing).
type pollSum struct {
	N        int           `json:"n"`
	Requests int64         `json:"requests"`
	MaxReq   int64         `json:"max_requests"`
	Took     time.Duration `json:"took_ns"`
	MaxTook  time.Duration `json:"max_took_ns"`
	Failed   int           `json:"failed"`
}

// poll is one run of a host's pull service.
type poll struct {
	host     string
	start    time.Time
	took     time.Duration
	action   string
	requests int64
	err      error
}

var actionRE = regexp.MustCompile(`pull prod: ([a-z-]+)`)

func run(o options, t *tb) {
	ctx := context.Background()
	res := &results{Hosts: o.hosts, Interval: o.interval.String(), Setup: map[string]string{}}
	res.Machine = machine()
	log.Printf("pullscale: %d hosts, %d waves, interval %s, on %s", o.hosts, o.waves, o.interval, res.Machine)
	work, err := os.MkdirTemp(o.dir, "pullscale-")
	if err != nil {
		failf("%v", err)
	}
	t.dir = work
	t.Cleanup(func() {
		if o.logs != "" {
			logs, _ := filepath.Glob(filepath.Join(work, "publish-v*.log"))
			for _, l := range logs {
				if data, err := os.ReadFile(l); err == nil {
					os.MkdirAll(o.logs, 0o755)
					os.WriteFile(filepath.Join(o.logs, filepath.Base(l)), data, 0o644)
				}
			}
		}
		os.RemoveAll(work)
	})

	// The hosts.
	start := time.Now()
	nw, err := simhost.Start(ctx, simhost.Options{Hosts: o.hosts, Dir: filepath.Join(work, "net"), Parallel: 16, Logf: log.Printf})
	if nw != nil {
		t.Cleanup(func() {
			start := time.Now()
			nw.Close()
			log.Printf("pullscale: hosts stopped in %s", time.Since(start).Round(time.Millisecond))
		})
	}
	if err != nil {
		failf("starting the hosts: %v", err)
	}
	res.Setup["hosts started"] = time.Since(start).Round(time.Millisecond).String()
	log.Printf("pullscale: %d hosts started in %s", o.hosts, res.Setup["hosts started"])
	agent := filepath.Join(work, "bin", "deploy-agent")
	os.MkdirAll(filepath.Dir(agent), 0o755)
	if out, err := exec.Command("cp", o.agent, agent).CombinedOutput(); err != nil {
		failf("cp: %v: %s", err, out)
	}

	// MinIO on loopback, the counting proxy on the hosts' service address.
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "cache", true)
	creds := srv.PrefixCredentials(t, "cache", "fleet/channels/prod/status/")
	ln, err := net.Listen("tcp", net.JoinHostPort(nw.ServiceAddr().String(), "0"))
	if err != nil {
		failf("%v", err)
	}
	target, _ := url.Parse(srv.Endpoint)
	var addrs []netip.Addr
	for _, h := range nw.Hosts() {
		addrs = append(addrs, h.Addr())
	}
	px := newProxy(target, nw.ServiceAddr(), "/cache/fleet/", addrs)
	hs := &http.Server{Handler: px, ReadHeaderTimeout: time.Minute}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	endpoint := "http://" + ln.Addr().String()

	// The fleet.
	waves := o.waves
	if waves < 2 || o.hosts < waves {
		failf("need at least 2 waves and as many hosts as waves")
	}
	batch := (o.hosts - 1 + waves - 2) / (waves - 1)
	fl := &simhost.PullFleet{
		Dir: filepath.Join(work, "fleet", "src"), Deploy: o.deploy, Agent: agent, Hosts: nw.Hosts(),
		CacheURL: "s3://cache/fleet?endpoint=" + endpoint + "&region=us-east-1", Env: srv.Env(),
		StatusCredentials: fmt.Sprintf("AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n",
			creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken),
		Canary: 1, BatchSize: strconv.Itoa(batch), Interval: o.interval.String(), Jitter: o.jitter.String(),
	}
	if err := fl.Init(); err != nil {
		failf("%v", err)
	}
	if err := fl.Write("v0", true); err != nil {
		failf("%v", err)
	}
	start = time.Now()
	err = fl.Bootstrap(ctx, nw, o.parallel, func(done int) {
		if done%100 == 0 {
			log.Printf("pullscale: %d of %d hosts bootstrapped (%s)", done, o.hosts, time.Since(start).Round(time.Second))
		}
	})
	if err != nil {
		failf("bootstrap: %v", err)
	}
	res.Setup["bootstrap (build, receive + activate)"] = time.Since(start).Round(time.Millisecond).String()
	log.Printf("pullscale: bootstrapped in %s", time.Since(start).Round(time.Millisecond))

	// The timers, and a record of every poll.
	var mu sync.Mutex
	var polls []poll
	before := make([]int64, o.hosts)
	index := map[string]int{}
	for i, h := range nw.Hosts() {
		index[h.Name()] = i
	}
	timers := &simhost.Timers{Hosts: nw.Hosts(),
		OnStart: func(h *simhost.Host) { before[index[h.Name()]] = px.hostRequests(h.Addr()) },
		OnRun: func(h *simhost.Host, start time.Time, took time.Duration, out []byte, err error) {
			action := "idle"
			if m := actionRE.FindSubmatch(out); m != nil {
				action = string(m[1])
			}
			p := poll{host: h.Name(), start: start, took: took, action: action, err: err,
				requests: px.hostRequests(h.Addr()) - before[index[h.Name()]]}
			mu.Lock()
			polls = append(polls, p)
			mu.Unlock()
		}}
	timers.Start(ctx)
	t.Cleanup(timers.Stop)
	// Every host's first poll (no release yet) before the measurements.
	for {
		mu.Lock()
		seen := map[string]bool{}
		for _, p := range polls {
			seen[p.host] = true
		}
		mu.Unlock()
		if len(seen) == o.hosts {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	log.Printf("pullscale: every host has polled")
	pollsSince := func(from, to time.Time) []poll {
		mu.Lock()
		defer mu.Unlock()
		var out []poll
		for _, p := range polls {
			if !p.start.Before(from) && p.start.Before(to) {
				out = append(out, p)
			}
		}
		return out
	}
	ld := startLoad()
	defer ld.stop()

	version := 0
	for _, step := range strings.Split(o.order, ",") {
		switch step {
		case "rollout":
			version++
			rollout(o, res, fl, nw, px, ld, pollsSince, srv.Endpoint, work, version)
		case "idle":
			time.Sleep(o.interval + o.jitter + 2*time.Second)
			res.Idle = measure("idle", px, ld, pollsSince, func(*phase) { time.Sleep(o.idle) })
			report(res, res.Idle, o.hosts)
		case "status":
			channelStatus(res, fl, px, ld, pollsSince, o.hosts)
		case "fail":
			if o.fail {
				version++
				failing(o, res, fl, nw, px, ld, pollsSince, srv.Endpoint, work, version)
			}
		default:
			failf("-order: unknown phase %q", step)
		}
	}
	if o.out != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		os.WriteFile(o.out, data, 0o644)
	}
}

// channelStatus times `deploy status --channel prod --json`: what an
// operator's look at the whole channel costs (every host's status document
// and release, read from the bucket; no host contacted).
func channelStatus(res *results, fl *simhost.PullFleet, px *proxy, ld *load, pollsSince func(from, to time.Time) []poll, n int) {
	res.Status = measure("status", px, ld, pollsSince, func(ph *phase) {
		var stdout, stderr bytes.Buffer
		cmd := fl.Command(context.Background(), "status", "--json", "--channel", "prod", fl.Target())
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ph.Exit = ee.ExitCode()
		} else if err != nil {
			failf("deploy status --channel: %v", err)
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			setRusage(ph, ru)
		}
		ph.Extra["--json bytes"] = stdout.Len()
		ph.Extra["--json events"] = bytes.Count(stdout.Bytes(), []byte("\n"))
		if ph.Exit != 0 {
			failf("deploy status --channel: exit %d\n%s", ph.Exit, stderr.String())
		}
	})
	report(res, res.Status, n)
}

// releasesWritten is when publish said it wrote the channel's head (its
// build and push done).
func releasesWritten(lines []line) time.Time {
	for _, l := range lines {
		if strings.Contains(l.text, "channel prod serial") {
			return l.at
		}
	}
	return time.Time{}
}

func rollout(o options, res *results, fl *simhost.PullFleet, nw *simhost.Network, px *proxy, ld *load,
	pollsSince func(from, to time.Time) []poll, endpoint, work string, version int) {
	if err := fl.Write(fmt.Sprintf("v%d", version), true); err != nil {
		failf("%v", err)
	}
	var lines []line
	res.Rollout = measure("rollout", px, ld, pollsSince, func(ph *phase) {
		var ru *syscall.Rusage
		var code int
		code, lines, ru = publish(fl, o.poll, filepath.Join(work, fmt.Sprintf("publish-v%d.log", version)))
		ph.Exit = code
		setRusage(ph, ru)
		if code != 0 {
			failf("publish v%d --wait: exit %d\n%s", version, code, tail(lines, 30))
		}
	})
	head := readHead(endpoint, fl)
	res.Waves = head.Waves
	res.WaveSizes = nil
	for _, w := range head.Waves {
		res.WaveSizes = append(res.WaveSizes, len(w))
	}
	// Every host's own signed report, read from MinIO directly.
	var lastHealthy time.Time
	for _, h := range nw.Hosts() {
		st := status(endpoint, h)
		if st == nil || st.Serial != head.Serial || st.Outcome != agentapi.PullDone {
			failf("%s: status %+v, want done at serial %d", h.Name(), st, head.Serial)
		}
		if st.OutcomeTime.After(lastHealthy) {
			lastHealthy = st.OutcomeTime
		}
	}
	start := res.Rollout.startTime()
	res.Rollout.Extra = map[string]any{"last host healthy after publish start": lastHealthy.Sub(start).Round(time.Millisecond).String()}
	if w := releasesWritten(lines); !w.IsZero() {
		res.Rollout.Extra["releases written (build + push done) after publish start"] = w.Sub(start).Round(time.Millisecond).String()
		res.Rollout.Extra["last host healthy after releases written"] = lastHealthy.Sub(w).Round(time.Millisecond).String()
	}
	report(res, res.Rollout, o.hosts)
}

func failing(o options, res *results, fl *simhost.PullFleet, nw *simhost.Network, px *proxy, ld *load,
	pollsSince func(from, to time.Time) []poll, endpoint, work string, version int) {
	ctx := context.Background()
	gens := map[string]int{}
	calls := map[string]int{}
	for _, h := range nw.Hosts() {
		n, err := h.Generations()
		if err != nil {
			failf("%v", err)
		}
		gens[h.Name()] = n
		c, err := h.Calls(ctx)
		if err != nil {
			failf("%v", err)
		}
		calls[h.Name()] = len(c)
	}
	if err := fl.Write(fmt.Sprintf("v%d", version), false); err != nil {
		failf("%v", err)
	}
	var lines []line
	res.Fail = measure("failing canary", px, ld, pollsSince, func(ph *phase) {
		var ru *syscall.Rusage
		ph.Exit, lines, ru = publish(fl, o.poll, filepath.Join(work, fmt.Sprintf("publish-v%d.log", version)))
		setRusage(ph, ru)
	})
	head := readHead(endpoint, fl)
	canary := head.Waves[0][0]
	sum := map[string]any{"exit": res.Fail.Exit, "canary": canary}
	var halt time.Time
	for _, l := range lines {
		// The first later host that --wait ends as halted ("skipped in
		// pull"), or a line that says so.
		if t := strings.ToLower(l.text); strings.Contains(t, "halt") || strings.Contains(t, "skipped in pull") {
			halt = l.at
			sum["halt line"] = l.text
			break
		}
	}
	var reported time.Time
	for _, at := range px.statusPuts(canary) {
		if at.After(res.Fail.startTime()) && (halt.IsZero() || at.Before(halt)) {
			reported = at
		}
	}
	if w := releasesWritten(lines); !w.IsZero() {
		sum["releases written (build + push done) after publish start"] = w.Sub(res.Fail.startTime()).Round(time.Millisecond).String()
	}
	if !halt.IsZero() {
		sum["halt line after publish start"] = halt.Sub(res.Fail.startTime()).Round(time.Millisecond).String()
	}
	if !halt.IsZero() && !reported.IsZero() {
		sum["canary report to halt line"] = halt.Sub(reported).Round(time.Millisecond).String()
	}
	if st := status(endpoint, nw.Host(canary)); st != nil {
		sum["canary outcome"] = string(st.Outcome) + " (check " + st.Check + ")"
	}
	// Every later host decides at its next poll: wait for each to report
	// halted (bounded), then count those that activated anything.
	deadline := time.Now().Add(3*o.interval + 2*time.Minute)
	pending := map[string]bool{}
	for _, w := range head.Waves[1:] {
		for _, h := range w {
			pending[h] = true
		}
	}
	for len(pending) > 0 && time.Now().Before(deadline) {
		for h := range pending {
			if st := status(endpoint, nw.Host(h)); st != nil && st.Serial == head.Serial && st.Outcome == agentapi.PullHalted {
				delete(pending, h)
			}
		}
		time.Sleep(time.Second)
	}
	sum["later hosts not reporting halted in time"] = len(pending)
	activated, withCalls := 0, 0
	for _, w := range head.Waves[1:] {
		for _, name := range w {
			h := nw.Host(name)
			n, _ := h.Generations()
			if n != gens[name] {
				activated++
			}
			c, _ := h.Calls(ctx)
			if len(c) != calls[name] {
				withCalls++
			}
		}
	}
	sum["hosts of wave 2+ that activated (generations)"] = activated
	sum["hosts of wave 2+ with new systemd calls"] = withCalls
	res.FailSummary = sum
	report(res, res.Fail, o.hosts)
	fmt.Printf("  failing canary at %d hosts:\n", o.hosts)
	keys := make([]string, 0, len(sum))
	for k := range sum {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("    %s: %v\n", k, sum[k])
	}
}

func (ph *phase) startTime() time.Time { return ph.start }

// measure runs f as a phase: wall time, the proxy's counts, polls, load.
func measure(name string, px *proxy, ld *load, pollsSince func(from, to time.Time) []poll, f func(*phase)) *phase {
	ph := &phase{Name: name, Extra: map[string]any{}}
	s0 := px.snapshot()
	ld.reset()
	cpu0 := cg.Usage()
	start := time.Now()
	ph.start = start
	log.Printf("pullscale: %s", name)
	f(ph)
	ph.Wall = time.Since(start)
	end := time.Now()
	ph.counts = px.snapshot().sub(s0)
	ph.LoadMax, ph.LoadEnd, ph.CPUBusy = ld.result()
	ph.HarnessCPU = cg.Usage() - cpu0
	h := ph.counts.total("hosts", nil)
	ph.HostReq, ph.HostBytesIn, ph.HostBytesOut = h.n, h.bytesIn, h.bytesOut
	op := ph.counts.total("operator", nil)
	ph.OpReq, ph.OpBytesIn, ph.OpBytesOut = op.n, op.bytesIn, op.bytesOut
	ph.Polls = map[string]pollSum{}
	for _, p := range pollsSince(start, end) {
		s := ph.Polls[p.action]
		s.N++
		s.Requests += p.requests
		s.MaxReq = max(s.MaxReq, p.requests)
		s.Took += p.took
		s.MaxTook = max(s.MaxTook, p.took)
		if p.err != nil {
			s.Failed++
		}
		ph.Polls[p.action] = s
	}
	log.Printf("pullscale: %s: %s", name, ph.Wall.Round(time.Millisecond))
	return ph
}

type line struct {
	at   time.Time
	text string
}

// publish runs deploy publish --wait, its stderr timestamped line by line
// (and kept in logFile), and returns its exit code, lines and rusage.
func publish(fl *simhost.PullFleet, poll time.Duration, logFile string) (int, []line, *syscall.Rusage) {
	cmd := fl.Command(context.Background(), "publish", "--wait", "--poll", poll.String(), "--channel", "prod", fl.Target())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		failf("%v", err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		failf("%v", err)
	}
	f, _ := os.Create(logFile)
	defer f.Close()
	var lines []line
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := line{time.Now(), sc.Text()}
		lines = append(lines, l)
		fmt.Fprintf(f, "%s %s\n", l.at.Format("15:04:05.000"), l.text)
	}
	err = cmd.Wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		failf("%v", err)
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return code, lines, ru
}

func setRusage(ph *phase, ru *syscall.Rusage) {
	if ru == nil {
		return
	}
	ph.CPUUser = time.Duration(ru.Utime.Nano())
	ph.CPUSys = time.Duration(ru.Stime.Nano())
	ph.MaxRSSKiB = ru.Maxrss
}

func tail(lines []line, n int) string {
	var b strings.Builder
	for _, l := range lines[max(0, len(lines)-n):] {
		b.WriteString(l.text + "\n")
	}
	return b.String()
}

func get(url string) []byte {
	resp, err := http.Get(url)
	if err != nil {
		failf("%v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		failf("GET %s: %s %v", url, resp.Status, err)
	}
	return data
}

func readHead(endpoint string, fl *simhost.PullFleet) *agentapi.ChannelRelease {
	cr := &agentapi.ChannelRelease{}
	data := get(endpoint + "/cache/fleet/channels/prod/" + channel.HeadKey)
	if _, err := channel.Open(data, agentapi.DocChannel, []*cache.PublicKey{fl.Publisher()}, cr); err != nil {
		failf("the channel's head: %v", err)
	}
	return cr
}

// status is h's status document, verified with its host key (nil when
// none verifies), read from MinIO directly (not counted).
func status(endpoint string, h *simhost.Host) *agentapi.PullStatus {
	data := get(endpoint + "/cache/fleet/channels/prod/" + channel.StatusKey(h.Name()))
	if data == nil {
		return nil
	}
	st, err := channel.VerifyStatus(data, "prod", h.Name(), h.HostKeyLine())
	if err != nil {
		return nil
	}
	return st
}

func report(res *results, ph *phase, n int) {
	per := float64(n)
	fmt.Printf("\n## %s: %d hosts (tier 2: a simulation of systemd, not of the agent, the store, the network or S3)\n", ph.Name, n)
	fmt.Printf("  waves %v, interval %s, machine %s\n", res.WaveSizes, res.Interval, res.Machine)
	fmt.Printf("  wall %s", ph.Wall.Round(time.Millisecond))
	if ph.Name != "idle" {
		what := "deploy publish --wait"
		if ph.Name == "status" {
			what = "deploy status --channel"
		}
		fmt.Printf(" (%s, exit %d); operator CPU %s user + %s sys, max RSS %.1f MiB",
			what, ph.Exit, ph.CPUUser.Round(time.Millisecond), ph.CPUSys.Round(time.Millisecond), float64(ph.MaxRSSKiB)/1024)
	}
	fmt.Printf("\n  load average: max 1-min %.2f during, %.2f %.2f %.2f at the end; machine CPU busy %.0f%% (of %d cores)\n",
		ph.LoadMax, ph.LoadEnd[0], ph.LoadEnd[1], ph.LoadEnd[2], 100*ph.CPUBusy, runtime.NumCPU())
	if cg != nil {
		fmt.Printf("  CPU of the experiment's processes (hosts' agents, MinIO, proxy, harness, deploy): %s = %.0f%% of the machine (the rest: whatever else runs on it)\n",
			ph.HarnessCPU.Round(time.Millisecond), 100*ph.HarnessCPU.Seconds()/ph.Wall.Seconds()/float64(runtime.NumCPU()))
	}
	for k, v := range ph.Extra {
		fmt.Printf("  %s: %v\n", k, v)
	}
	if ph.Name == "idle" {
		hours := ph.Wall.Hours()
		fmt.Printf("  hosts: %d requests, %d bytes in, %d bytes out in %s = per host per hour: %.1f requests, %.0f bytes in, %.0f bytes out\n",
			ph.HostReq, ph.HostBytesIn, ph.HostBytesOut, ph.Wall.Round(time.Second),
			float64(ph.HostReq)/per/hours, float64(ph.HostBytesIn)/per/hours, float64(ph.HostBytesOut)/per/hours)
		fmt.Print(ph.counts.table(per*hours, "host/h"))
	} else {
		fmt.Printf("  hosts: %d requests (%.1f per host), %d bytes in (%.0f per host), %d bytes out (%.0f per host)\n",
			ph.HostReq, float64(ph.HostReq)/per, ph.HostBytesIn, float64(ph.HostBytesIn)/per, ph.HostBytesOut, float64(ph.HostBytesOut)/per)
		fmt.Printf("  operator: %d requests, %d bytes in, %d bytes out\n", ph.OpReq, ph.OpBytesIn, ph.OpBytesOut)
		fmt.Print(ph.counts.table(per, "host"))
	}
	fmt.Printf("  polls by what the agent printed (requests per poll are the host's own, between the poll's start and end):\n")
	actions := make([]string, 0, len(ph.Polls))
	for a := range ph.Polls {
		actions = append(actions, a)
	}
	sort.Strings(actions)
	for _, a := range actions {
		s := ph.Polls[a]
		fmt.Printf("    %-10s %7d polls, %.2f requests per poll (max %d), %s per poll (max %s), %d failed\n", a, s.N,
			float64(s.Requests)/float64(s.N), s.MaxReq, (s.Took / time.Duration(s.N)).Round(time.Millisecond), s.MaxTook.Round(time.Millisecond), s.Failed)
	}
	if s, ok := ph.Polls["waiting"]; ok {
		fmt.Printf("  per gate decision (a waiting host's poll): %.2f requests (max %d)\n", float64(s.Requests)/float64(s.N), s.MaxReq)
	}
}

// machine describes this machine.
func machine() string {
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(data), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %.0f GiB", float64(kb)/1024/1024)
	}
	model := ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, model, _ = strings.Cut(l, ": ")
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s)%s, %s", runtime.NumCPU(), model, mem, runtime.Version())
}

// load samples the load average and the machine's CPU time every second.
type load struct {
	mu       sync.Mutex
	max      float64
	cpu0     [2]int64 // busy, total at reset
	done     chan struct{}
	stopOnce sync.Once
}

func startLoad() *load {
	l := &load{done: make(chan struct{})}
	l.reset()
	go func() {
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-l.done:
				return
			case <-tk.C:
				a := loadavg()
				l.mu.Lock()
				l.max = max(l.max, a[0])
				l.mu.Unlock()
			}
		}
	}()
	return l
}

func (l *load) stop() { l.stopOnce.Do(func() { close(l.done) }) }

func (l *load) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max = loadavg()[0]
	l.cpu0 = cpuTimes()
}

func (l *load) result() (float64, [3]float64, float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := cpuTimes()
	busy := 0.0
	if d := c[1] - l.cpu0[1]; d > 0 {
		busy = float64(c[0]-l.cpu0[0]) / float64(d)
	}
	a := loadavg()
	return max(l.max, a[0]), a, busy
}

func loadavg() [3]float64 {
	var a [3]float64
	data, _ := os.ReadFile("/proc/loadavg")
	fmt.Sscanf(string(data), "%f %f %f", &a[0], &a[1], &a[2])
	return a
}

// cpuTimes is the machine's busy and total CPU time (jiffies).
func cpuTimes() [2]int64 {
	data, _ := os.ReadFile("/proc/stat")
	f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])
	var total, idle int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return [2]int64{total - idle, total}
}
