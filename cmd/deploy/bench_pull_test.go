package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"
)

// BenchmarkPullWaves measures, on four vmtest hosts in pull mode (waves: a
// canary, then two hosts, then the last), how long after a publish each
// wave has converged: from the moment the channel's head is written to the
// moment the wave's last host confirmed the new generation (its health
// checks passed), as the hosts' generations record it. Each iteration
// publishes a new version. The poll interval is what it is in a fleet:
// the default (1m, with its default jitter of 6s), then shorter ones. The
// operator's side (build, push, publish) is reported apart. Each publish
// comes at a random moment of the hosts' poll cycles (a pause before it,
// not measured).
//
//	go test ./cmd/deploy -run '^$' -bench PullWaves -benchtime 3x -timeout 60m
func BenchmarkPullWaves(b *testing.B) {
	intervals := []string{"1m", "10s", "2s"}
	if v := os.Getenv("PULL_BENCH_INTERVAL"); v != "" {
		intervals = []string{v}
	}
	for _, interval := range intervals {
		b.Run("interval="+interval, func(b *testing.B) {
			p := newPullEnv(b, 4, "canary     = 1\n  batch_size = \"50%\"")
			p.write("v0", true)
			setInterval(b, p, interval)
			target := p.fl.Target("prod")
			every, err := time.ParseDuration(interval)
			if err != nil {
				b.Fatal(err)
			}
			p.r.Text(b, "", target).Want(b, 0)
			waves := make([][]time.Duration, 3)
			var publish []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				p.write(fmt.Sprintf("v%d", i+1), true)
				setInterval(b, p, interval)
				// A release comes at any moment of the hosts' poll cycles:
				// publishing right after the previous rollout would keep
				// every publish at the same phase of them.
				time.Sleep(rand.N(every))
				b.StartTimer()
				start := time.Now()
				p.r.Run(b, "publish", "--channel", "prod", target).Want(b, 0)
				publish = append(publish, time.Since(start))
				head := p.head()
				if pullDebug {
					b.Logf("serial %d published %s", head.Serial, head.Published.Format(time.StampMicro))
				}
				for _, h := range p.nw.Hosts {
					p.waitStatus(h.Name(), "done", done(head.Serial))
				}
				for w, hosts := range head.Waves {
					var last time.Time
					for _, name := range hosts {
						gens := p.generations(p.host(name))
						if c := gens[len(gens)-1].Confirmed; c.After(last) {
							last = c
						}
					}
					waves[w] = append(waves[w], last.Sub(head.Published))
				}
			}
			b.StopTimer()
			if pullDebug {
				for _, h := range p.nw.Hosts {
					b.Logf("%s:\n%s", h.Name(), h.Succeed("journalctl -u deploy-pull.service -u deploy-pull.timer --no-pager -o short-precise | tail -40"))
				}
			}
			for w, ds := range waves {
				b.ReportMetric(mean(ds).Seconds(), fmt.Sprintf("s-wave%d", w+1))
				b.ReportMetric(slices.Max(ds).Seconds(), fmt.Sprintf("s-wave%d-max", w+1))
			}
			b.ReportMetric(mean(publish).Seconds(), "s-publish")
		})
	}
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

var intervalRe = regexp.MustCompile(`(?m)^    interval           = "2s"\n    jitter             = "0s"\n`)

// setInterval rewrites the fleet's poll interval (jitter: the default).
func setInterval(b *testing.B, p *pullEnv, interval string) {
	f := filepath.Join(p.fl.Dir, "fleet.hcl")
	data, err := os.ReadFile(f)
	if err != nil {
		b.Fatal(err)
	}
	out := intervalRe.ReplaceAll(data, []byte(fmt.Sprintf("    interval           = %q\n", interval)))
	if string(out) == string(data) {
		b.Fatal("setInterval: the fleet's pull block changed shape")
	}
	os.WriteFile(f, out, 0o644)
}
