package vmtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkStart measures how long [Start] takes to boot n hosts with a warm
// image cache, and what each booted, idle host costs: the proportional set
// size (PSS) of its processes and the size of its writable layer. (The drop
// in MemAvailable was tried too; page cache makes it noise.) Run it with bench/vmtest-startup.sh.
func BenchmarkStart(b *testing.B) {
	for _, n := range []int{1, 5, 10} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			var start time.Duration
			var pss, layer float64
			for range b.N {
				t0 := time.Now()
				nw := Start(b, n)
				start += time.Since(t0)
				// Let the hosts settle after boot before measuring.
				time.Sleep(500 * time.Millisecond)
				for _, h := range nw.Hosts {
					pss += float64(hostPSS(b, h)) / float64(n)
					layer += float64(dirSize(filepath.Join(h.m.dir, "upper"))) / float64(n)
				}
				b.StopTimer()
				nw.close()
				b.StartTimer()
			}
			N := float64(b.N)
			b.ReportMetric(start.Seconds()/N, "s/start")
			b.ReportMetric(start.Seconds()*1000/N/float64(n), "ms/host")
			b.ReportMetric(pss/N/(1<<20), "MiB-PSS/host")
			b.ReportMetric(layer/N/(1<<20), "MiB-layer/host")
		})
	}
}

// hostPSS sums the PSS of every process in the host's cgroup, nspawn
// included.
func hostPSS(b *testing.B, h *Host) int64 {
	pids, err := h.m.cg.pids()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, pid := range pids {
		f, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			continue // exited
		}
		sc := bufio.NewScanner(bytes.NewReader(f))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "Pss:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}

// dirSize is the disk usage of a directory tree, in bytes.
func dirSize(dir string) int64 {
	var total int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			} else {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}
