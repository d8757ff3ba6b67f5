package activation

import (
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/declarative/deploy/internal/atomicfile"
)

// The worker's heartbeat tells its watchdog that it still makes progress.
//
// From the moment it holds the lock until its result is written, the
// worker rewrites RunDir/requests/ID.beat every [heartbeatEvery] with a
// counter, from a goroutine of its own: it beats while its main goroutine
// waits for a step, however long the step legitimately takes (a health
// check with a long timeout, a slow `systemctl start`, a big file, the
// wait for the confirmation, the previous generation's agent rolling
// back). What stops the beat is a worker that is not running at all:
// stopped (SIGSTOP, SIGTSTP), frozen (its cgroup frozen), or wedged in the
// kernel as a whole. The watchdog reads the counter on every poll and
// measures, on its own monotonic clock (a wall-clock jump moves nothing),
// how long it has not changed; past [hungAfter] it kills the worker's unit
// and takes over, as it does for a worker that died.

// heartbeatEvery is how often the worker beats.
const heartbeatEvery = time.Second

// hungAfter is how long the watchdog lets the counter stand still before
// it takes the worker for hung: 20 beats missed in a row.
var hungAfter = 20 * time.Second

func (l Layout) heartbeatFile(id string) string { return filepath.Join(l.requestDir(), id+".beat") }

// startHeartbeat beats for activation id until the returned function is
// called, which stops it and removes the file.
func (l Layout) startHeartbeat(id string, logf func(string, ...any)) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	beat := func(n int) {
		if err := atomicfile.Write(l.heartbeatFile(id), []byte(strconv.Itoa(n)+"\n"), 0o600); err != nil && logf != nil {
			logf("heartbeat: %v", err)
		}
	}
	beat(0)
	go func() {
		defer close(stopped)
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-done:
				return
			case <-t.C:
				beat(n)
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		os.Remove(l.heartbeatFile(id))
	}
}

// heartbeatWatch follows a worker's heartbeat for its watchdog.
type heartbeatWatch struct {
	last    string
	changed time.Time // monotonic: when last was first seen
}

// stale reports how long activation id's heartbeat has not changed, as
// seen by this watch (a missing file counts as a value of its own).
func (h *heartbeatWatch) stale(l Layout, id string) time.Duration {
	data, _ := os.ReadFile(l.heartbeatFile(id))
	if cur := string(data); h.changed.IsZero() || cur != h.last {
		h.last, h.changed = cur, time.Now()
	}
	return time.Since(h.changed)
}
