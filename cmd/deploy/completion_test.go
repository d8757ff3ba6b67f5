package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// complete runs deploy __complete words... and returns the candidates.
func complete(t *testing.T, words ...string) []string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}
	if err := runComplete(context.Background(), e, words); err != nil {
		t.Fatalf("__complete %q: %v", words, err)
	}
	return strings.Fields(stdout.String())
}

// takesTargets is what a command's usage line says: TARGET... or DIR#...
var takesTargets = regexp.MustCompile(`^usage: deploy .*(TARGET|DIR#)`)

// Every command of the table completes what it takes: a command that
// takes targets (as its usage line says: the table cannot go stale) the
// fleet's names, a group its subcommands, and each subcommand likewise.
func TestCompleteEveryCommand(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/fleet.hcl", []byte(`
host "web1" {
  address = "192.0.2.1"
  tags    = ["frontend"]
}
host "db1" {
  address = "192.0.2.2"
}
deployment "prod" {
  hosts = ["web1", "db1"]
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	names := []string{".#@frontend", ".#db1", ".#prod", ".#web1"}
	var check func(path []string, c command)
	check = func(path []string, c command) {
		words := append(slices.Clone(path), c.name)
		if c.subs != nil {
			var want []string
			for _, s := range c.subs {
				want = append(want, s.name)
				check(words, s)
			}
			if got := complete(t, append(slices.Clone(words), "")...); !slices.Equal(got, want) {
				t.Errorf("__complete %s '' = %q, want the subcommands %q", strings.Join(words, " "), got, want)
			}
			return
		}
		var stdout, stderr bytes.Buffer
		c.run(context.Background(), &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}, []string{"-h"})
		usage, _, _ := strings.Cut(stderr.String(), "\n")
		if want := takesTargets.MatchString(usage); c.targets != want {
			t.Errorf("%s: targets = %t, but its usage line %q says %t", strings.Join(words, " "), c.targets, usage, want)
		}
		got := complete(t, append(slices.Clone(words), ".#")...)
		switch {
		case c.targets && !slices.Equal(got, names):
			t.Errorf("__complete %s '.#' = %q, want %q", strings.Join(words, " "), got, names)
		case !c.targets && len(got) > 0:
			t.Errorf("__complete %s '.#' = %q, want nothing: it takes no targets", strings.Join(words, " "), got)
		}
	}
	for _, c := range commands() {
		check(nil, c)
	}
	// deploy TARGET... itself.
	if got := complete(t, "--dry-run", ".#"); !slices.Equal(got, names) {
		t.Errorf("__complete --dry-run '.#' = %q, want %q", got, names)
	}
}
