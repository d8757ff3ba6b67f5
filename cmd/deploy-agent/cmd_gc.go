package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// Defaults of gc for pushed systems (copied, not activated): the newest
// three are kept, for a week.
const (
	DefaultKeepPushed   = 3
	DefaultPushedMaxAge = 7 * 24 * time.Hour
)

// runGC deletes all but the newest K generations (never the current or
// the boot default), the roots of pushed systems beyond the newest N or
// older than the age limit, and then every store path no remaining
// generation or pushed system needs.
func runGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbGC, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	keep := fs.Int("keep", 5, "keep the newest `K` generations")
	keepPushed := fs.Int("keep-pushed", DefaultKeepPushed, "keep the newest `N` pushed systems (copied, not activated); 0: no count limit")
	pushedMaxAge := fs.Duration("pushed-max-age", DefaultPushedMaxAge, "drop pushed systems older than this `duration`; 0: no age limit")
	dropPushed := fs.Bool("drop-pushed", false, "drop every pushed system's root")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if *keep < 1 {
		return usageErr(errors.New("gc: --keep must be at least 1"))
	}
	if *keepPushed < 0 || *pushedMaxAge < 0 {
		return usageErr(errors.New("gc: --keep-pushed and --pushed-max-age must not be negative"))
	}
	l := layout()
	lock, err := l.TryLock(activation.Holder{PID: os.Getpid(), User: activation.UserName(), Started: time.Now().UTC(), Activation: "gc"})
	var lh *activation.LockHeldError
	if errors.As(err, &lh) {
		return lockHeldErr(fmt.Errorf("gc: %w", err))
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	removed, err := l.RemoveOldGenerations(*keep)
	if err != nil {
		return err
	}
	for _, n := range removed {
		fmt.Fprintf(stderr, "deploy-agent: removed generation %d\n", n)
	}
	var extra []string
	if st, err := l.ReadState(); err == nil && st.CurrentSystem != "" {
		extra = append(extra, st.CurrentSystem)
	}
	res, err := closure.NewTargetStore(l.StateDir).GCWith(ctx, closure.GCOptions{ExtraRoots: extra,
		Pins: closure.PinPolicy{Keep: *keepPushed, MaxAge: *pushedMaxAge, DropAll: *dropPushed}})
	if err != nil {
		return err
	}
	var pushed []string
	for _, p := range res.Unpinned {
		pushed = append(pushed, p.Path)
		fmt.Fprintf(stderr, "deploy-agent: dropped pushed system %s (pushed %s)\n", p.Path, p.Time.Format(time.RFC3339))
	}
	if *asJSON {
		if removed == nil {
			removed = []int{}
		}
		return writeJSON(stdout, &agentapi.GCResult{V: agentapi.Version, Generations: removed, Paths: len(res.Deleted), Bytes: res.BytesFreed, Pushed: pushed})
	}
	fmt.Fprintf(stdout, "removed %d generations and %d pushed systems, deleted %d store paths, freed %d bytes\n", len(removed), len(pushed), len(res.Deleted), res.BytesFreed)
	return nil
}

// runBoot is the boot unit's command: re-apply the boot default.
func runBoot(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbBoot, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	w := &activation.Worker{Layout: layout(), Logf: prefixed(stderr)}
	return w.Boot(ctx)
}

// runApply re-applies generation N over the machine's state. The magic
// rollback runs it from the earlier generation's own agent (--lock-held:
// the activation worker holds the lock); by hand it takes the lock.
func runApply(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbApply, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	gen := fs.Int("generation", 0, "the generation `N` to apply")
	lockHeld := fs.Bool("lock-held", false, "the caller holds the activation lock")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if *gen <= 0 {
		return usageErr(errors.New("apply: --generation is required"))
	}
	l := layout()
	if !*lockHeld {
		lock, err := l.TryLock(activation.Holder{PID: os.Getpid(), User: activation.UserName(), Started: time.Now().UTC(), Activation: "apply"})
		var lh *activation.LockHeldError
		if errors.As(err, &lh) {
			return lockHeldErr(err)
		}
		if err != nil {
			return err
		}
		defer lock.Unlock()
	}
	w := &activation.Worker{Layout: l, Logf: prefixed(stderr)}
	return w.ApplyGeneration(ctx, *gen, false)
}

func prefixed(w io.Writer) func(string, ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(w, "deploy-agent: "+format+"\n", args...)
	}
}
