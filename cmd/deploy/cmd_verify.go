package main

import (
	"context"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// runVerify compares each host's live state with its current generation
// (drift) and prints what differs, per host. Exit 8 when some host
// drifted.
func runVerify(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var opts fleet.VerifyOptions
	fs := newFlags(e, "verify", "TARGET...")
	hf.register(fs)
	fs.BoolVar(&opts.Quick, "quick", false, "only check that the current system's store paths are there (do not rehash them)")
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "verify", targets, v)
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Verify(ctx, opts) })
	if hf.asJSON || rep == nil {
		return err
	}
	view.Drift(e.stdout, s.Selected, rep)
	return err
}
