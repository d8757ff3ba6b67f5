package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// gcArgs is the command line of gc (agentapi.GCCmd).
type gcArgs struct {
	layout       activation.Layout
	keep         int
	keepPushed   int
	pushedMaxAge time.Duration
	dropPushed   bool
	json         bool
}

func parseGC(args []string, stderr io.Writer) (*gcArgs, error) {
	fs := newFlagSet(agentapi.VerbGC, stderr)
	layout := layoutFlags(fs)
	a := &gcArgs{}
	fs.IntVar(&a.keep, "keep", 5, "keep the newest `K` generations")
	fs.IntVar(&a.keepPushed, "keep-pushed", activation.DefaultKeepPushed, "keep the newest `N` pushed systems (copied, not activated); 0: no count limit")
	fs.DurationVar(&a.pushedMaxAge, "pushed-max-age", activation.DefaultPushedMaxAge, "drop pushed systems older than this `duration`; 0: no age limit")
	fs.BoolVar(&a.dropPushed, "drop-pushed", false, "drop every pushed system's root")
	fs.BoolVar(&a.json, "json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if a.keep < 1 {
		return nil, usageErr(errors.New("gc: --keep must be at least 1"))
	}
	if a.keepPushed < 0 || a.pushedMaxAge < 0 {
		return nil, usageErr(errors.New("gc: --keep-pushed and --pushed-max-age must not be negative"))
	}
	a.layout = layout()
	return a, nil
}

// runGC deletes all but the newest K generations (never the current or
// the boot default), the roots of pushed systems beyond the newest N or
// older than the age limit, and then every store path no remaining
// generation or pushed system needs (see activation.Layout.GC).
func runGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseGC(args, stderr)
	if err != nil {
		return err
	}
	res, err := a.layout.GC(ctx, activation.GCOptions{Keep: a.keep, Logf: prefixed(stderr),
		Pushed: closure.PinPolicy{Keep: a.keepPushed, MaxAge: a.pushedMaxAge, DropAll: a.dropPushed}})
	var lh *activation.LockHeldError
	if errors.As(err, &lh) {
		return lockHeldErr(err)
	}
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "removed %d generations and %d pushed systems, deleted %d store paths, freed %d bytes\n", len(res.Generations), len(res.Pushed), res.Paths, res.Bytes)
	return nil
}

// bootArgs is the command line of boot.
type bootArgs struct{ layout activation.Layout }

func parseBoot(args []string, stderr io.Writer) (*bootArgs, error) {
	fs := newFlagSet(agentapi.VerbBoot, stderr)
	layout := layoutFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	return &bootArgs{layout: layout()}, nil
}

// runBoot is the boot unit's command: re-apply the boot default.
func runBoot(ctx context.Context, args []string, stderr io.Writer) error {
	a, err := parseBoot(args, stderr)
	if err != nil {
		return err
	}
	w := &activation.Worker{Layout: a.layout, Logf: prefixed(stderr)}
	return w.Boot(ctx)
}

// applyArgs is the command line of apply (agentapi.ApplyCmd).
type applyArgs struct {
	layout     activation.Layout
	generation int
	lockHeld   bool
}

func parseApply(args []string, stderr io.Writer) (*applyArgs, error) {
	fs := newFlagSet(agentapi.VerbApply, stderr)
	layout := layoutFlags(fs)
	a := &applyArgs{}
	fs.IntVar(&a.generation, "generation", 0, "the generation `N` to apply")
	fs.BoolVar(&a.lockHeld, "lock-held", false, "the caller holds the activation lock")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if a.generation <= 0 {
		return nil, usageErr(errors.New("apply: --generation is required"))
	}
	a.layout = layout()
	return a, nil
}

// runApply re-applies generation N over the machine's state. The magic
// rollback runs it from the earlier generation's own agent (--lock-held:
// the activation worker holds the lock); by hand it takes the lock.
func runApply(ctx context.Context, args []string, stderr io.Writer) error {
	a, err := parseApply(args, stderr)
	if err != nil {
		return err
	}
	w := &activation.Worker{Layout: a.layout, Logf: prefixed(stderr)}
	err = w.ApplyGenerationLocked(ctx, a.generation, a.lockHeld)
	var lh *activation.LockHeldError
	if errors.As(err, &lh) {
		return lockHeldErr(err)
	}
	return err
}

func prefixed(w io.Writer) func(string, ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(w, "deploy-agent: "+format+"\n", args...)
	}
}
