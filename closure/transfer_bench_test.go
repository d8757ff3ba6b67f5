package closure

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTransfer sends one path over an in-process socket pair from one
// store to another: the protocol, NAR parsing, hashing, writing and the
// flushes that make the path durable, without SSH. The target store is on
// $DEPLOY_BENCH_DIR (default the test's temp dir; /dev/shm takes the disk
// out). It is the copy path's regression benchmark (see BENCHMARKS.md,
// "deploy copy"):
//
//	large: 128 MiB in 32 files of 4 MiB
//	small: 2,000 files of 1 to 64 KiB in 40 directories (66 MiB)
//
//	go test ./closure -run '^$' -bench Transfer -count 6 | tee new.txt; benchstat old.txt new.txt
func BenchmarkTransfer(b *testing.B) {
	b.Run("large", func(b *testing.B) {
		benchTransfer(b, func(src string) {
			data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
			for i := range 32 {
				data[0] = byte(i)
				os.WriteFile(filepath.Join(src, fmt.Sprint(i)), data, 0o644)
			}
		})
	})
	b.Run("small", func(b *testing.B) {
		benchTransfer(b, func(src string) {
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range 2000 {
				dir := filepath.Join(src, fmt.Sprint(i%40))
				os.MkdirAll(dir, 0o755)
				data := make([]byte, 1<<10+rng.IntN(63<<10))
				for j := range data {
					data[j] = byte(rng.Uint32())
				}
				os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), data, 0o644)
			}
		})
	})
}

func benchTransfer(b *testing.B, fill func(src string)) {
	local := newTestStore(b, DefaultStoreDir)
	src := b.TempDir()
	fill(src)
	pi, err := local.AddTree(context.Background(), src, "data", nil)
	if err != nil {
		b.Fatal(err)
	}
	base := os.Getenv("DEPLOY_BENCH_DIR")
	if base == "" {
		base = b.TempDir()
	}
	b.SetBytes(pi.NarSize)
	// CPU time (user + system, both ends: they share this process) per
	// copy: steadier than the wall time on a machine that is busy with
	// other work, and what a regression of the code path shows first.
	cpu0 := cpuTime()
	for b.Loop() {
		b.StopTimer()
		dir, _ := os.MkdirTemp(base, "bench-store-")
		remote, _ := NewLocalStore(dir, DefaultStoreDir)
		b.StartTimer()
		op, ag := net.Pipe()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := remote.Receive(context.Background(), ag, ag, ReceiveOptions{}); err != nil {
				b.Error(err)
			}
			ag.Close()
		}()
		if _, err := Send(context.Background(), local, []string{pi.Path}, op, SendOptions{}); err != nil {
			b.Fatal(err)
		}
		op.Close()
		wg.Wait()
		b.StopTimer()
		// Removed by the test's cleanup, not here: inodes freed just now
		// would slow the next iteration's creates on a file system without
		// a journal (see BENCHMARKS.md).
		b.StartTimer()
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1e3/float64(b.N), "cpu-ms/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
