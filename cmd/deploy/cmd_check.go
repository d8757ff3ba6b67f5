package main

import (
	"context"
	"fmt"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
)

// runCheck validates a whole fleet without building anything: every host is
// evaluated and realized with placeholder store paths. For CI on every pull
// request; exit 1 with diagnostics on any error.
func runCheck(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "check", "[DIR]")
	storeDir := fs.String("store-dir", closure.DefaultStoreDir, "logical store `directory` the fleet will be built for")
	registerFormat(fs, e)
	pos, err := parse(fs, args, 0, 1)
	if err != nil {
		return err
	}
	dir := "."
	if len(pos) == 1 {
		dir = pos[0]
	}
	f, diags := builder.Load(dir)
	if !diags.HasErrors() {
		diags = append(diags, builder.Check(ctx, f, *storeDir)...)
	}
	e.printDiags(f, diags)
	if diags.HasErrors() {
		return configError(diags)
	}
	fmt.Fprintf(e.stderr, "deploy: %s: %d hosts, %d deployments, %d roles: ok\n", dir, len(f.Hosts), len(f.Deployments), len(f.Roles))
	return nil
}
