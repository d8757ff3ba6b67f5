package main

import (
	"context"
	"fmt"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/modules"
)

// runLock pins every external input of a fleet (url packages) in
// deploy.lock, downloading what is not pinned yet; --update re-pins all.
func runLock(ctx context.Context, e *env, args []string) error {
	var sf storeFlags
	var update bool
	fs := newFlags(e, "lock", "[DIR]")
	sf.register(fs)
	fs.BoolVar(&update, "update", false, "download and re-pin every input, not only new ones")
	pos, err := parse(fs, args, 0, 1)
	if err != nil {
		return err
	}
	dir := "."
	if len(pos) == 1 {
		dir = pos[0]
	}
	b, err := sf.builder(e)
	if err != nil {
		return err
	}
	f, diags := builder.Load(dir)
	if diags.HasErrors() {
		e.printDiags(f, diags)
		return configError(diags)
	}
	lock, diags := b.UpdateLock(ctx, f, update)
	e.printDiags(f, diags)
	if diags.HasErrors() {
		return configError(diags)
	}
	if err := lock.Write(f.Dir); err != nil {
		return err
	}
	changed := 0
	for u, in := range lock.Inputs {
		if f.Lock.Inputs[u] != in {
			changed++
		}
	}
	removed := 0
	for u := range f.Lock.Inputs {
		if _, ok := lock.Inputs[u]; !ok {
			removed++
		}
	}
	fmt.Fprintf(e.stderr, "deploy: %s: %d inputs pinned (%d new or changed, %d removed)\n", modules.LockFileName, len(lock.Inputs), changed, removed)
	return nil
}
