package main

import (
	"flag"
	"fmt"
	"strings"
)

// newFlags returns a flag set that reports errors instead of exiting: the
// flags of deploy NAME, or of deploy itself when name is "".
func newFlags(e *env, name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: %s [flags] %s\n", strings.TrimSpace("deploy "+name), argsUsage)
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
		if fs.Name() == "" {
			return nil, usageErrorf("wrong number of arguments (%d)", len(pos))
		}
		return nil, usageErrorf("%s: wrong number of arguments (%d)", fs.Name(), len(pos))
	}
	return pos, nil
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
