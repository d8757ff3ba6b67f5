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

// runGC deletes all but the newest K generations (never the current or
// the boot default) and then every store path no remaining generation
// needs.
func runGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	keep := fs.Int("keep", 5, "keep the newest `K` generations")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if *keep < 1 {
		return usageErr(errors.New("gc: --keep must be at least 1"))
	}
	l := layout()
	lock, err := l.TryLock(activation.Holder{PID: os.Getpid(), User: operatorName(), Started: time.Now().UTC(), Activation: "gc"})
	var lh *activation.LockHeldError
	if errors.As(err, &lh) {
		return &exitError{code: exitLockHeld, err: fmt.Errorf("gc: %w", err)}
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
	res, err := closure.NewTargetStore(l.StateDir).GC(ctx, extra)
	if err != nil {
		return err
	}
	if *asJSON {
		if removed == nil {
			removed = []int{}
		}
		return writeJSON(stdout, &agentapi.GCResult{V: agentapi.Version, Generations: removed, Paths: len(res.Deleted), Bytes: res.BytesFreed})
	}
	fmt.Fprintf(stdout, "removed %d generations, deleted %d store paths, freed %d bytes\n", len(removed), len(res.Deleted), res.BytesFreed)
	return nil
}

// runBoot is the boot unit's command: re-apply the boot default.
func runBoot(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("boot", flag.ContinueOnError)
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
	fs := flag.NewFlagSet("apply", flag.ContinueOnError)
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
		lock, err := l.TryLock(activation.Holder{PID: os.Getpid(), User: operatorName(), Started: time.Now().UTC(), Activation: "apply"})
		var lh *activation.LockHeldError
		if errors.As(err, &lh) {
			return &exitError{code: exitLockHeld, err: err}
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
