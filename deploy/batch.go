package deploy

import (
	"fmt"
	"strconv"
	"strings"
)

// Batches splits hosts into rollout batches of batchSize ("3", or a
// percentage of the hosts such as "25%", at least 1). With canary, the first
// batch is a single host, so that a bad change meets one machine first.
func Batches(hosts []string, batchSize string, canary bool) ([][]string, error) {
	size, err := parseBatchSize(batchSize, len(hosts))
	if err != nil {
		return nil, err
	}
	var out [][]string
	rest := hosts
	if canary && size > 1 && len(rest) > 1 {
		out = append(out, rest[:1])
		rest = rest[1:]
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
