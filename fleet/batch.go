package fleet

import "github.com/declarative/deploy/builder"

// Batches splits hosts into rollout batches: first the canary batch of
// the first canary hosts (when canary > 0 and other hosts follow), so that
// a bad change meets few machines first, then batches of size (a number
// of hosts, or a percentage of all of them, at least 1).
func Batches(hosts []string, size builder.BatchSize, canary int) [][]string {
	n := size.Of(len(hosts))
	var out [][]string
	rest := hosts
	if canary > 0 && len(rest) > canary {
		out = append(out, rest[:canary])
		rest = rest[canary:]
	}
	for len(rest) > 0 {
		k := min(n, len(rest))
		out = append(out, rest[:k])
		rest = rest[k:]
	}
	return out
}
