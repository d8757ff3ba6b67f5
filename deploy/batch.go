package deploy

import (
	"fmt"
	"strconv"
	"strings"
)

// Batches splits hosts into rollout batches: first the canary batch of
// the first canary hosts (when canary > 0 and other hosts follow), so that
// a bad change meets few machines first, then batches of batchSize ("3",
// or a percentage of all the hosts such as "25%", at least 1).
func Batches(hosts []string, batchSize string, canary int) ([][]string, error) {
	size, err := parseBatchSize(batchSize, len(hosts))
	if err != nil {
		return nil, err
	}
	if canary < 0 {
		return nil, fmt.Errorf("canary %d: want 0 or more hosts", canary)
	}
	var out [][]string
	rest := hosts
	if canary > 0 && len(rest) > canary {
		out = append(out, rest[:canary])
		rest = rest[canary:]
	}
	for len(rest) > 0 {
		n := min(size, len(rest))
		out = append(out, rest[:n])
		rest = rest[n:]
	}
	return out, nil
}

func parseBatchSize(s string, hosts int) (int, error) {
	if s == "" {
		return 1, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		pct, err := strconv.Atoi(p)
		if err != nil || pct <= 0 || pct > 100 {
			return 0, fmt.Errorf("batch_size %q: want a percentage from 1%% to 100%%", s)
		}
		return max(1, hosts*pct/100), nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("batch_size %q: want a positive number or a percentage", s)
	}
	return n, nil
}
