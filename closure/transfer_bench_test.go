package closure

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// BenchmarkTransfer sends a 128 MiB path (32 files of 4 MiB) from one store
// to another over an in-process socket pair: the protocol, NAR parsing,
// hashing, writing and syncfs, without SSH. The target store is on
// $DEPLOY_BENCH_DIR (default the test's temp dir; /dev/shm takes the disk
// out).
func BenchmarkTransfer(b *testing.B) {
	local := newTestStore(b, DefaultStoreDir)
	src := b.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	for i := 0; i < 32; i++ {
		data[0] = byte(i)
		os.WriteFile(filepath.Join(src, fmt.Sprint(i)), data, 0o644)
	}
	pi, err := local.AddTree(context.Background(), src, "data", nil)
	if err != nil {
		b.Fatal(err)
	}
	base := os.Getenv("DEPLOY_BENCH_DIR")
	b.SetBytes(pi.NarSize)
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
		os.RemoveAll(dir)
		b.StartTimer()
	}
	_ = io.Discard
}
