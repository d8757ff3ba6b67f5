package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(e *env, name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: deploy %s [flags] %s\n", name, argsUsage)
		if hasFlags(fs) {
			fmt.Fprintln(e.stderr, "\nflags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parse parses args, allowing flags after positional arguments, and checks
// the number of positional arguments.
func parse(fs *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return nil, err
			}
			return nil, &exitError{code: ExitUsage, err: err}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < minArgs || (maxArgs >= 0 && len(pos) > maxArgs) {
		fs.Usage()
		return nil, usageErrorf("%s: wrong number of arguments (%d)", fs.Name(), len(pos))
	}
	return pos, nil
}

// subcommand dispatches to the named subcommand of a command group.
func subcommand(e *env, group string, subs map[string]func([]string) error, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		names := make([]string, 0, len(subs))
		for n := range subs {
			names = append(names, n)
		}
		printSubs(e.stderr, group, names)
		if len(args) == 0 {
			return usageErrorf("%s: missing subcommand", group)
		}
		return nil
	}
	run, ok := subs[args[0]]
	if !ok {
		return usageErrorf("%s: unknown subcommand %q", group, args[0])
	}
	return run(args[1:])
}

func printSubs(w io.Writer, group string, names []string) {
	slices.Sort(names)
	fmt.Fprintf(w, "usage: deploy %s {%s} ...\n", group, strings.Join(names, "|"))
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
