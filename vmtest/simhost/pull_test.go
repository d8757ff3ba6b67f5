package simhost

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/pull/channel"
)

// simPull is a pull-mode fleet of simulated hosts (tier 2: a simulation of
// systemd, not of the agent, the store, the network or S3) with a real
// MinIO holding the cache and the channel "prod", and the hosts' timers
// running.
type simPull struct {
	t      *testing.T
	nw     *Network
	srv    *miniotest.Server
	fl     *PullFleet
	timers *Timers
}

const statusPrefix = "fleet/channels/prod/status/"

func newSimPull(t *testing.T, hosts, canary int, batch string) *simPull {
	nw := start(t, hosts)
	bins := e2e.Binaries(t)
	// The hosts do not see the test's /tmp: the agent goes where they do.
	agent := filepath.Join(nw.Dir(), "bin", "deploy-agent")
	os.MkdirAll(filepath.Dir(agent), 0o755)
	if out, err := exec.Command("cp", bins.Agent, agent).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	srv := miniotest.Start(t, miniotest.Options{Host: nw.ServiceAddr().String()})
	srv.Bucket(t, "cache", true)
	creds := srv.PrefixCredentials(t, "cache", statusPrefix)
	p := &simPull{t: t, nw: nw, srv: srv}
	p.fl = &PullFleet{
		Dir: filepath.Join(nw.Dir(), "fleet"), Deploy: bins.Deploy, Agent: agent, Hosts: nw.Hosts(),
		CacheURL: "s3://cache/fleet?endpoint=" + srv.Endpoint + "&region=us-east-1", Env: srv.Env(),
		StatusCredentials: fmt.Sprintf("AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\n",
			creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken),
		Canary: canary, BatchSize: batch, Interval: "1s", Jitter: "200ms", WaveTimeout: "10m",
	}
	if err := p.fl.Init(); err != nil {
		t.Fatal(err)
	}
	return p
}

// deploy runs the real deploy with args and returns its exit code and
// --json events.
func (p *simPull) deploy(args ...string) (int, *cli.Result) {
	p.t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := p.fl.Command(context.Background(), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		p.t.Fatal(err)
	}
	res := &cli.Result{Args: args, Code: code, Stdout: stdout.String(), Stderr: stderr.String()}
	if slices.Contains(args, "--json") {
		ev, err := cli.ParseEvents(stdout.Bytes())
		if err != nil {
			p.t.Fatalf("deploy %s: %v\n%s", strings.Join(args, " "), err, stdout.String())
		}
		res.Events = ev
	}
	return code, res
}

func (p *simPull) generations(h *Host) []*agentapi.Generation {
	p.t.Helper()
	out, err := h.Run(context.Background(), "/run/deploy/current-system/agent/bin/deploy-agent generations --json")
	if err != nil {
		p.t.Fatal(err)
	}
	gens, err := agentapi.DecodeGenerations([]byte(out))
	if err != nil {
		p.t.Fatal(err)
	}
	return gens
}

func (p *simPull) file(h *Host, path string) string {
	p.t.Helper()
	data, err := h.ReadFile(context.Background(), path)
	if err != nil {
		p.t.Fatal(err)
	}
	return string(data)
}

// status is host's status document, verified with its host key; nil when
// it has none that verifies.
func (p *simPull) status(h *Host) *agentapi.PullStatus {
	resp, err := httpGet(p.srv.Endpoint + "/cache/" + statusPrefix + h.Name() + ".json")
	if err != nil || resp == nil {
		return nil
	}
	st, err := channel.VerifyStatus(resp, "prod", h.Name(), h.HostKeyLine())
	if err != nil {
		return nil
	}
	return st
}

// TestPullWaves is pull mode on four simulated hosts in three waves (the
// canary h1, then h2 and h3, then h4), against a real MinIO, with the
// real deploy and deploy-agent (tier 2: only systemd is simulated):
//
//  1. the hosts bootstrap (receive + activate, as a push deploy does on a
//     target) and their timers start polling;
//  2. v1 is published with --wait: it rolls out through the waves (each
//     wave's report under status/waves/), every host reports done, and
//     publish exits 0;
//  3. v2's health check fails: the canary rolls back by itself, no host of
//     waves 2 and 3 activates anything (generations, running system,
//     files, and the stand-in's log of systemd calls unchanged), each
//     reports halted, and publish --wait exits 3 (docs/cli.md: some host
//     rolled back) naming the halt.
func TestPullWaves(t *testing.T) {
	p := newSimPull(t, 4, 1, "50%")
	ctx := context.Background()
	if err := p.fl.Write("v0", true); err != nil {
		t.Fatal(err)
	}
	if err := p.fl.Bootstrap(ctx, p.nw, 4, nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range p.nw.Hosts() {
		if got := p.file(h, "/etc/app/version"); got != "v0\n" {
			t.Fatalf("%s: version %q after the bootstrap", h.Name(), got)
		}
		if _, err := h.pullUnits(); err != nil {
			t.Fatalf("%s: the bootstrap installed no pull timer: %v", h.Name(), err)
		}
	}
	p.timers = &Timers{Hosts: p.nw.Hosts()}
	p.timers.Start(ctx)
	t.Cleanup(p.timers.Stop)

	// 2. v1 converges, wave after wave.
	if err := p.fl.Write("v1", true); err != nil {
		t.Fatal(err)
	}
	code, res := p.deploy("publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", p.fl.Target())
	if code != 0 {
		t.Fatalf("publish v1 --wait: exit %d, want 0\n%s\n%s", code, res.Failures(), res.Stderr)
	}
	results := res.Results()
	var confirmed []time.Time // per host, in wave order
	for _, h := range p.nw.Hosts() {
		r := results[h.Name()]
		if r.Result != "ok" || r.Serial != 1 || r.PullStatus == nil || r.PullStatus.Outcome != agentapi.PullDone {
			t.Errorf("%s: %+v, want ok at serial 1", h.Name(), r)
		}
		if got := p.file(h, "/etc/app/version"); got != "v1\n" {
			t.Errorf("%s runs %q, want v1", h.Name(), got)
		}
		gens := p.generations(h)
		last := gens[len(gens)-1]
		if !last.Current || last.Meta["serial"] != "1" || last.Confirmed.IsZero() {
			t.Errorf("%s: generation %+v, want the current one from serial 1, confirmed", h.Name(), last)
		}
		confirmed = append(confirmed, last.Confirmed)
		if p.status(h) == nil {
			t.Errorf("%s: no status signed by its host key", h.Name())
		}
	}
	// Waves: h1, then h2 and h3, then h4; each after the one before.
	waves := [][]int{{0}, {1, 2}, {3}}
	for w := 1; w < len(waves); w++ {
		for _, i := range waves[w] {
			gens := p.generations(p.nw.Hosts()[i])
			started := gens[len(gens)-1].Time
			for _, j := range waves[w-1] {
				if started.Before(confirmed[j]) {
					t.Errorf("%s (wave %d) activated at %s, before %s (wave %d) was confirmed at %s",
						p.nw.Hosts()[i].Name(), w+1, started, p.nw.Hosts()[j].Name(), w, confirmed[j])
				}
			}
		}
	}
	for w := 1; w <= 3; w++ {
		data, err := httpGet(p.srv.Endpoint + "/cache/fleet/channels/prod/" + channel.WaveReportKey(1, 0, w))
		wr := channel.DecodeWaveReport(data, "prod", 1, w)
		if err != nil || wr == nil || len(wr.Reports) != len(waves[w-1]) {
			t.Errorf("wave %d's report: %s %v, want %d entries", w, data, err, len(waves[w-1]))
		}
		// Gathered from the hosts' own entries (their credentials may
		// list), not appended to by each.
		for _, i := range waves[w-1] {
			h := p.nw.Hosts()[i].Name()
			if e, err := httpGet(p.srv.Endpoint + "/cache/fleet/channels/prod/" + channel.WaveEntryKey(1, 0, w, h)); err != nil || e == nil {
				t.Errorf("%s's entry in wave %d: %v", h, w, err)
			}
		}
	}

	// 3. v2 fails its health check on the canary: the later waves halt.
	before := map[string]int{}
	gensBefore := map[string]int{}
	current := map[string]string{}
	for _, h := range p.nw.Hosts() {
		calls, err := h.Calls(ctx)
		if err != nil {
			t.Fatal(err)
		}
		before[h.Name()] = len(calls)
		gensBefore[h.Name()] = len(p.generations(h))
		current[h.Name()] = p.generations(h)[gensBefore[h.Name()]-1].System
	}
	if err := p.fl.Write("v2", false); err != nil {
		t.Fatal(err)
	}
	code, res = p.deploy("publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", p.fl.Target())
	if code != 3 {
		t.Fatalf("publish v2 --wait: exit %d, want 3 (some host rolled back)\n%s\n%s", code, res.Failures(), res.Stderr)
	}
	results = res.Results()
	if r := results["h1"]; r.Result != "rolled-back" || r.PullStatus == nil || r.PullStatus.Check != "app" {
		t.Errorf("h1: %+v, want rolled back by the health check \"app\"", r)
	}
	if !strings.Contains(res.Stderr+res.Stdout, "halted") {
		t.Errorf("publish --wait does not say the rollout halted:\n%s\n%s", res.Stdout, res.Stderr)
	}
	for _, h := range p.nw.Hosts()[1:] {
		if r := results[h.Name()]; r.Result != "skipped" || !strings.Contains(r.Error, "halted") {
			t.Errorf("%s: %+v, want skipped (halted)", h.Name(), r)
		}
	}
	// Every host of waves 2 and 3 decides for itself, at its next poll.
	for _, h := range p.nw.Hosts()[1:] {
		for limit := time.Now().Add(2 * time.Minute); ; {
			if st := p.status(h); st != nil && st.Serial == 2 && st.Outcome == agentapi.PullHalted {
				break
			}
			if time.Now().After(limit) {
				t.Fatalf("%s: no halted status for serial 2; last %+v\n%s", h.Name(), p.status(h), h.Journal())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for _, h := range p.nw.Hosts() {
		gens := p.generations(h)
		if got := p.file(h, "/etc/app/version"); got != "v1\n" {
			t.Errorf("%s has version %q after v2, want v1", h.Name(), got)
		}
		if cur := gens[len(gens)-1]; !slices.ContainsFunc(gens, func(g *agentapi.Generation) bool { return g.Current && g.System == current[h.Name()] }) {
			t.Errorf("%s runs %+v after v2, want %s", h.Name(), cur, current[h.Name()])
		}
		calls, err := h.Calls(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h.Name() == "h1" {
			if len(gens) == gensBefore["h1"] || len(calls) == before["h1"] {
				t.Errorf("the canary did not try v2: %d generations, %d systemd calls (before: %d, %d)", len(gens), len(calls), gensBefore["h1"], before["h1"])
			}
			continue
		}
		if len(gens) != gensBefore[h.Name()] {
			t.Errorf("%s has %d generations after v2, want %d: it activated", h.Name(), len(gens), gensBefore[h.Name()])
		}
		if n := len(calls); n != before[h.Name()] {
			t.Errorf("%s made %d systemd calls during v2, want none (an activation makes some): %q", h.Name(), n-before[h.Name()], calls[before[h.Name()]:])
		}
	}
}
