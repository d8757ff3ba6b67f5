package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// BenchmarkNoopRedeploy times `deploy DIR#@test` when every host already
// runs its system: per host one SSH connection, the run lock, the look at
// drift, and one session whose hello and want/missing exchange (one round
// trip) show nothing to do.
// Every host must come back "unchanged", or the benchmark fails.
//
//	go test ./cmd/deploy -run '^$' -bench NoopRedeploy -benchtime 5x
func BenchmarkNoopRedeploy(b *testing.B) {
	for _, n := range []int{1, 5, 10, 20} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			nw := vmtest.Start(b, n)
			fl := e2e.NewFleet(b, nw)
			fl.WriteHosts(b, "  roles    = [role.web]\n", "role \"web\" {\n  file \"/etc/bench-file\" {\n    content = \"hello\\n\"\n  }\n}\n")
			r := cli.New(b, nw, fl)
			run := func() string {
				return r.JSON(b, "", "--parallel-copy", "32", fl.Target("@test")).Want(b, 0).Stdout
			}
			run() // the first deployment
			b.ResetTimer()
			for b.Loop() {
				out := run()
				if got := strings.Count(out, `"result":"`+string(fleet.ResultUnchanged)+`"`); got != n {
					b.Fatalf("%d of %d hosts unchanged in a no-op redeploy:\n%s", got, n, out)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/float64(n), "ms/host")
		})
	}
}

// BenchmarkFirstDeploy times the first deployment to fresh hosts, side by
// side for 1, 10 and 30 hosts: per host the agent's bootstrap, the copy of
// a closure with a 16 MiB package (random, so incompressible), the
// activation and the confirmation over a new connection, all hosts in one
// batch. Each sub-benchmark boots its own hosts and deploys once per
// iteration to hosts that have never been deployed to (the hosts are
// booted again for every iteration, outside the timer). Every host must
// come back "ok", or the benchmark fails.
//
//	go test ./cmd/deploy -run '^$' -bench FirstDeploy -benchtime 1x
func BenchmarkFirstDeploy(b *testing.B) {
	for _, n := range []int{1, 10, 30} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			blob := make([]byte, 16<<20)
			rand.Read(blob)
			var sent int64
			for b.Loop() {
				b.StopTimer()
				nw := vmtest.Start(b, n)
				fl := e2e.NewFleet(b, nw)
				fl.WriteHosts(b, "", "")
				writeBlobFleet(b, fl, "")
				os.WriteFile(filepath.Join(fl.Dir, "blob", "data"), blob, 0o644)
				r := cli.New(b, nw, fl)
				// The build is not what this measures: done before the timer.
				r.Run(b, "build", fl.Target("all")).Want(b, 0)
				b.StartTimer()
				res := r.JSON(b, "", "--parallel-copy", "32", fl.Target("all"))
				b.StopTimer()
				ok := 0
				for _, ev := range res.Want(b, 0).Events {
					switch {
					case ev.Type == fleet.EventResult && ev.Result == fleet.ResultOK:
						ok++
					case ev.Type == fleet.EventPhase && ev.Phase == fleet.PhaseCopy && ev.State == "done":
						sent += ev.Total
					}
				}
				if ok != n {
					b.Fatalf("%d of %d hosts ok in a first deploy:\n%s", ok, n, res.Stdout)
				}
				nw.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/float64(n), "ms/host")
			b.ReportMetric(float64(sent)/float64(b.N)/float64(n)/(1<<20), "MiB-sent/host")
		})
	}
}
