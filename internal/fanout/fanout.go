// Package fanout runs one function over many items with bounded
// concurrency: the one fan-out of the operator's host commands and of the
// binary cache's transfers.
package fanout

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// Each calls fn for every item, at most limit at once (limit < 1: one at
// a time), and returns when every call has returned. Once ctx is done no
// new call starts: Each returns the items that were never started, in
// order, for the caller to account for. Calls already running get ctx and
// decide themselves how to stop.
//
// (errgroup's SetLimit would bound the calls too, but its Go waits for a
// free slot whatever ctx says; a weighted semaphore's Acquire does not.)
func Each[T any](ctx context.Context, items []T, limit int, fn func(ctx context.Context, item T)) (notStarted []T) {
	sem := semaphore.NewWeighted(int64(max(limit, 1)))
	var wg sync.WaitGroup
	defer wg.Wait()
	for i, item := range items {
		// Acquire may succeed on a done ctx when a slot is free: ask first.
		if ctx.Err() != nil || sem.Acquire(ctx, 1) != nil {
			return items[i:]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer sem.Release(1)
			fn(ctx, item)
		}()
	}
	return nil
}
