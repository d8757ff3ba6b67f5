package main

import (
	"context"
	"fmt"
	"os"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/fleet"
)

func runBuild(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var outLink string
	var asJSON bool
	var parallel int
	var check bool
	fs := newFlags(e, "build", "DIR#NAME...")
	bf.register(fs)
	registerFormat(fs, e)
	fs.StringVar(&outLink, "out-link", "", "also make `PREFIX`-HOST a symlink to each host's system in the local store")
	fs.BoolVar(&asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	fs.IntVar(&parallel, "parallel-build", 2, "hosts built at once")
	fs.BoolVar(&check, "check", false, "rebuild every go package whose output is known (built here, or in the fleet's cache) from scratch and compare, naming the first differing file")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	b.CheckBuilds = check
	v := newView(e, asJSON, false)
	s := &fleet.Session{Targets: pos, Command: "build", Builder: b, Parallel: fleet.Parallelism{Build: parallel}, Emit: v.Event,
		Diagnostics: e.printDiags}
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Build(ctx) })
	if rep == nil {
		return err
	}
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		if hr.Result != fleet.ResultOK {
			continue
		}
		if outLink != "" {
			link := outLink + "-" + h.Name
			if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
				return err
			}
			if err := os.Symlink(b.Store.RealPath(hr.System), link); err != nil {
				return err
			}
			// The link keeps its system from deploy store gc while it exists.
			if err := b.Store.AddIndirectRoot(link); err != nil {
				return err
			}
		}
		if !asJSON {
			fmt.Fprintln(e.stdout, hr.System)
		}
	}
	return err
}

// buildOne builds the one host selector names (closure, why-depends), in
// a session that contacts no host.
func buildOne(ctx context.Context, e *env, bf *buildFlags, selector string) (*builder.Result, *closure.Store, error) {
	b, err := bf.builder(e)
	if err != nil {
		return nil, nil, err
	}
	s := &fleet.Session{Targets: []string{selector}, Builder: b, Diagnostics: e.printDiags}
	defer s.Close()
	if err := s.Open(); err != nil {
		return nil, nil, err
	}
	res, err := s.BuildOne(ctx)
	return res, b.Store, err
}
