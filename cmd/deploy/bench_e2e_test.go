package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/fleet"
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
			var hcl strings.Builder
			hcl.WriteString("role \"web\" {\n  file \"/etc/bench-file\" {\n    content = \"hello\\n\"\n  }\n}\n")
			fleetDir, key := testFleet(b, nw, "")
			data, _ := os.ReadFile(filepath.Join(fleetDir, "hosts.hcl"))
			text := strings.ReplaceAll(string(data), "  tags = [\"test\"]\n", "  tags = [\"test\"]\n  roles = [role.web]\n")
			os.WriteFile(filepath.Join(fleetDir, "hosts.hcl"), []byte(hcl.String()+text), 0o644)
			args := []string{"--json", "--identity", key, "--ssh-config", "none", "--parallel-copy", "32", fleetDir + "#@test"}
			home := b.TempDir()
			run := func() string {
				cmd := deployCmd(b, nw, args...)
				cmd.Env = append(cmd.Env, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
				out, err := cmd.Output()
				if err != nil {
					b.Fatalf("deploy: %v\n%s", err, out)
				}
				return string(out)
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
				fleetDir, key := testFleet(b, nw, "")
				writeBlobFleet(b, nw, fleetDir, "")
				os.WriteFile(filepath.Join(fleetDir, "blob", "data"), blob, 0o644)
				home := b.TempDir()
				cmd := deployCmd(b, nw, "--json", "--identity", key, "--ssh-config", "none", "--parallel-copy", "32", fleetDir+"#all")
				cmd.Env = append(cmd.Env, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
				// The build is not what this measures: done before the timer.
				build := deployCmd(b, nw, "build", fleetDir+"#all")
				build.Env = cmd.Env
				if out, err := build.CombinedOutput(); err != nil {
					b.Fatalf("deploy build: %v\n%s", err, out)
				}
				b.StartTimer()
				out, err := cmd.Output()
				b.StopTimer()
				if err != nil {
					b.Fatalf("deploy: %v\n%s", err, out)
				}
				ok := 0
				for _, line := range strings.Split(string(out), "\n") {
					var ev fleet.Event
					if json.Unmarshal([]byte(line), &ev) != nil {
						continue
					}
					switch {
					case ev.Type == fleet.EventResult && ev.Result == fleet.ResultOK:
						ok++
					case ev.Type == fleet.EventPhase && ev.Phase == fleet.PhaseCopy && ev.State == "done":
						sent += ev.Total
					}
				}
				if ok != n {
					b.Fatalf("%d of %d hosts ok in a first deploy:\n%s", ok, n, out)
				}
				nw.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/float64(n), "ms/host")
			b.ReportMetric(float64(sent)/float64(b.N)/float64(n)/(1<<20), "MiB-sent/host")
		})
	}
}
