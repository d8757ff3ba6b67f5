package main

import (
	"context"
)

// runClosure builds one host and lists its system closure: every store path
// with its NAR size, references first (an SBOM of what a deploy ships).
func runClosure(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var asJSON bool
	fs := newFlags(e, "closure", "DIR#HOST")
	bf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print JSON (the schema of store closure --json)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	res, s, err := buildOne(ctx, e, &bf, pos[0])
	if err != nil {
		return err
	}
	cl, err := s.Closure(res.SystemPath)
	if err != nil {
		return err
	}
	return printClosure(e, cl, asJSON, res.Host)
}
