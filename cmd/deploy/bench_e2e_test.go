package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/deploy"
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
			fleet, key := testFleet(b, nw, "")
			data, _ := os.ReadFile(filepath.Join(fleet, "hosts.hcl"))
			text := strings.ReplaceAll(string(data), "  tags = [\"test\"]\n", "  tags = [\"test\"]\n  roles = [role.web]\n")
			os.WriteFile(filepath.Join(fleet, "hosts.hcl"), []byte(hcl.String()+text), 0o644)
			args := []string{"--json", "--identity", key, "--ssh-config", "none", "--parallel-copy", "32", fleet + "#@test"}
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
				if got := strings.Count(out, `"result":"`+string(deploy.ResultUnchanged)+`"`); got != n {
					b.Fatalf("%d of %d hosts unchanged in a no-op redeploy:\n%s", got, n, out)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/float64(n), "ms/host")
		})
	}
}
