package activation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
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
	var extra, imagesRemoved, systems []string
	if st, err := l.ReadState(); err == nil && st.CurrentSystem != "" {
		extra = append(extra, st.CurrentSystem)
		systems = append(systems, st.CurrentSystem)
	}
	// Secrets kept from another generation's closure (their own version
	// is revoked) are the running system's too.
	if rec, err := l.readApplied(); err == nil {
		for _, src := range rec.KeptSecrets {
			extra = append(extra, src)
		}
	}
	// Image roots: those of the remaining generations and the running
	// system stay; with a manifest that cannot be read, all stay.
	images, err := l.imagesInUse(systems)
	if err != nil {
		logf("kept every image root: %v", err)
	} else if gone, err := l.gcImages(images); err != nil {
		return nil, fmt.Errorf("gc: image roots: %w", err)
	} else {
		for _, d := range gone {
			logf("removed the root of image %s", d)
		}
		imagesRemoved = gone
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
	return &agentapi.GCResult{V: agentapi.Version, Generations: removed, Paths: len(res.Deleted), Bytes: res.BytesFreed, Pushed: pushed, Images: imagesRemoved}, nil
}

// imagesInUse returns the manifests of every generation left and of the
// systems in extra.
func (l Layout) imagesInUse(extra []string) ([]*manifest.Manifest, error) {
	gens, err := l.Generations()
	if err != nil {
		return nil, err
	}
	systems := slices.Clone(extra)
	for _, g := range gens {
		systems = append(systems, g.System)
	}
	var out []*manifest.Manifest
	for _, s := range compact(systems) {
		m, err := readManifest(s, nil, manifest.ParseLenient)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}
