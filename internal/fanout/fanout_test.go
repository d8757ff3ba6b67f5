package fanout

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestEachBoundsConcurrency(t *testing.T) {
	var running, most atomic.Int32
	var mu sync.Mutex
	var seen []int
	items := []int{1, 2, 3, 4, 5, 6, 7, 8}
	left := Each(context.Background(), items, 3, func(ctx context.Context, i int) {
		n := running.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		running.Add(-1)
		mu.Lock()
		seen = append(seen, i)
		mu.Unlock()
	})
	if len(left) != 0 {
		t.Errorf("Each left %v unstarted, want none", left)
	}
	if len(seen) != len(items) {
		t.Errorf("fn ran for %d items, want %d", len(seen), len(items))
	}
	if m := most.Load(); m > 3 || m < 2 {
		t.Errorf("at most %d calls ran at once, want 3 (and more than 1)", m)
	}
}

// After a cancel, no new call starts, however many items remain: the
// rest are returned (the old host fan-out ran them all at once instead).
func TestEachStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var started atomic.Int32
	release := make(chan struct{})
	items := []string{"a", "b", "c", "d", "e"}
	done := make(chan []string)
	go func() {
		done <- Each(ctx, items, 2, func(ctx context.Context, s string) {
			if started.Add(1) == 2 {
				cancel()
			}
			<-release
		})
	}()
	time.Sleep(50 * time.Millisecond)
	close(release)
	left := <-done
	if n := started.Load(); n != 2 {
		t.Errorf("%d calls started, want 2 (none after the cancel)", n)
	}
	if diff := cmp.Diff([]string{"c", "d", "e"}, left); diff != "" {
		t.Errorf("unstarted items (-want +got):\n%s", diff)
	}
}

func TestEachCancelledBefore(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	left := Each(ctx, []int{1, 2}, 4, func(context.Context, int) { ran = true })
	if ran || len(left) != 2 {
		t.Errorf("Each on a done context: ran %v, left %v; want no call and both left", ran, left)
	}
}
