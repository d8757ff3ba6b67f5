package main

import (
	"context"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// runGenerations lists each host's generations: number, time, operator,
// fleet commit, current/boot/failed marks.
func runGenerations(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	fs := newFlags(e, "generations", "TARGET...")
	hf.register(fs)
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "generations", targets, v)
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Generations(ctx) })
	if hf.asJSON || rep == nil {
		return err
	}
	view.Generations(e.stdout, s.Selected, rep)
	return err
}
