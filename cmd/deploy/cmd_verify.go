package main

import (
	"context"
	"fmt"

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
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		d := hr.Drift
		switch {
		case d == nil:
			msg := string(hr.Result)
			if hr.Err != nil {
				msg += ": " + hr.Err.Error()
			}
			fmt.Fprintf(e.stdout, "%s: %s\n", h.Name, msg)
		case d.Generation == 0:
			fmt.Fprintf(e.stdout, "%s: runs no generation: nothing to compare\n", h.Name)
		case len(d.Items) == 0:
			fmt.Fprintf(e.stdout, "%s: no drift from generation %d\n", h.Name, d.Generation)
		default:
			fmt.Fprintf(e.stdout, "%s: drifted from generation %d:\n", h.Name, d.Generation)
			for _, it := range d.Items {
				fmt.Fprintf(e.stdout, "  %s\n", it)
			}
		}
	}
	return err
}
