package main

import (
	"context"
	"fmt"

	"github.com/declarative/deploy/fleet"
)

// runExec runs a command on every selected host in parallel. Each line of
// output is printed as it arrives, prefixed with the host's name (stdout
// to stdout, stderr to stderr), so lines of different hosts never mix.
func runExec(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var parallel int
	fs := newFlags(e, "exec", "TARGET... -- COMMAND [ARG...]")
	hf.register(fs)
	fs.IntVar(&parallel, "parallel", 16, "hosts at once")
	split := -1
	for i, a := range args {
		if a == "--" {
			split = i
			break
		}
	}
	if split < 0 || split == len(args)-1 {
		fs.Usage()
		return usageErrorf("exec: want TARGET... -- COMMAND")
	}
	targets, err := parse(fs, args[:split], 1, -1)
	if err != nil {
		return err
	}
	cmd := args[split+1:]
	v := newView(e, hf.asJSON, false)
	s := hf.session(e, "exec", targets, v)
	s.Parallel.Connect = parallel
	output := func(host, stream, line string) {
		w := e.stdout
		if stream == "stderr" {
			w = e.stderr
		}
		fmt.Fprintf(w, "%s: %s\n", host, line)
	}
	if hf.asJSON {
		output = nil // the host.output events carry the lines
	}
	_, err = runSession(s, v, func() (*fleet.Report, error) { return s.Exec(ctx, cmd, output) })
	return err
}
