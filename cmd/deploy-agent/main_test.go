package main

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
)

// agentVerbs are the values of agentapi's Verb constants, read from its
// source so that a verb added there is tested here without a change.
func agentVerbs(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("../../agentapi/*.go")
	if err != nil {
		t.Fatal(err)
	}
	var verbs []string
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Verb") || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Fatalf("agentapi.%s is not a string literal", name.Name)
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					verbs = append(verbs, v)
				}
			}
		}
	}
	// A sanity check of the reading: the first and the last verbs.
	if !slices.Contains(verbs, agentapi.VerbVersion) || !slices.Contains(verbs, agentapi.VerbWatchdog) {
		t.Fatalf("read the verbs %q from agentapi: want %q and %q among them", verbs, agentapi.VerbVersion, agentapi.VerbWatchdog)
	}
	return verbs
}

// TestHelp checks what an operator relies on to tell an agent that
// predates a verb from a usage error (agentclient's probe with
// agentapi.Help): `VERB -h` exits 0 for every verb of agentapi, and an
// unknown verb exits agentapi.ExitUsage, with -h or without.
func TestHelp(t *testing.T) {
	for _, verb := range agentVerbs(t) {
		t.Run(verb, func(t *testing.T) {
			var stderr strings.Builder
			if code := Main(context.Background(), agentapi.Help(verb), io.Discard, &stderr); code != agentapi.ExitOK {
				t.Errorf("Main(%q) = %d, want %d; stderr:\n%s", agentapi.Help(verb), code, agentapi.ExitOK, stderr.String())
			}
		})
	}
	for _, args := range [][]string{agentapi.Help("no-such-verb"), {"no-such-verb"}, {"no-such-verb", "--state-dir", "/tmp"}, {}} {
		if code := Main(context.Background(), args, io.Discard, io.Discard); code != agentapi.ExitUsage {
			t.Errorf("Main(%q) = %d, want %d", args, code, agentapi.ExitUsage)
		}
	}
}
