package activation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// Defaults of gc for pushed systems (copied, not activated): the newest
// three are kept, for a week.
const (
	DefaultKeepPushed   = 3
	DefaultPushedMaxAge = 7 * 24 * time.Hour
)

// GCOptions says what [Layout.GC] keeps.
type GCOptions struct {
	// Keep is how many of the newest generations are kept, at least 1
	// (the running one and the boot default are kept whatever their age).
	Keep int
	// Pushed says which roots of pushed systems are kept.
	Pushed closure.PinPolicy
	// Logf receives each generation and pushed system removed.
	Logf func(format string, args ...any)
}

// GC deletes, under the activation lock (a [*LockHeldError] when another
// holds it), the generations and pushed systems' roots opts does not keep,
// and then every store path that no remaining generation, pushed system or
// the running system needs.
func (l Layout) GC(ctx context.Context, opts GCOptions) (*agentapi.GCResult, error) {
	if opts.Keep < 1 {
		return nil, errors.New("gc: keep at least 1 generation")
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	lock, err := l.TryLock(Holder{PID: os.Getpid(), User: UserName(), Started: time.Now().UTC(), Activation: "gc"})
	var lh *LockHeldError
	if errors.As(err, &lh) {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	removed, err := l.RemoveOldGenerations(opts.Keep)
	if err != nil {
		return nil, err
	}
	for _, n := range removed {
		logf("removed generation %d", n)
	}
	var extra []string
	if st, err := l.ReadState(); err == nil && st.CurrentSystem != "" {
		extra = append(extra, st.CurrentSystem)
	}
	// Secrets kept from another generation's closure (their own version
	// is revoked) are the running system's too.
	if rec, err := l.readApplied(); err == nil {
		for _, src := range rec.KeptSecrets {
			extra = append(extra, src)
		}
	}
	res, err := closure.NewTargetStore(l.withDefaults().StateDir).GCWith(ctx, closure.GCOptions{ExtraRoots: extra, Pins: opts.Pushed})
	if err != nil {
		return nil, err
	}
	var pushed []string
	for _, p := range res.Unpinned {
		pushed = append(pushed, p.Path)
		logf("dropped pushed system %s (pushed %s)", p.Path, p.Time.Format(time.RFC3339))
	}
	if removed == nil {
		removed = []int{}
	}
	return &agentapi.GCResult{V: agentapi.Version, Generations: removed, Paths: len(res.Deleted), Bytes: res.BytesFreed, Pushed: pushed}, nil
}
