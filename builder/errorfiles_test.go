package builder

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/hcl/v2"
)

var errorMarker = regexp.MustCompile(`#\s*ERROR:\s*(.+?)\s*$`)

// TestErrorFiles checks every invalid configuration in
// testdata/error-files: each file is a fleet of its own, and every error
// diagnostic must be announced by a "# ERROR: <summary>" comment on the line
// its range starts on, and every such comment must be matched.
func TestErrorFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/error-files/*.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no error files")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			name := filepath.Base(file)
			if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
				t.Fatal(err)
			}
			// Fixtures that error files refer to without being wrong.
			mustWrite(t, filepath.Join(dir, "x"), "x")
			mustWrite(t, filepath.Join(dir, "x.sh"), "#!/bin/sh\n")
			mustWrite(t, filepath.Join(dir, "secrets", "s.txt"), "x")
			mustWrite(t, filepath.Join(dir, "nomodule", "main.go"), "package main\n")

			var want []string
			sc := bufio.NewScanner(strings.NewReader(string(src)))
			for line := 1; sc.Scan(); line++ {
				if m := errorMarker.FindStringSubmatch(sc.Text()); m != nil {
					want = append(want, fmt.Sprintf("%s:%d: %s", name, line, m[1]))
				}
			}
			f, diags := Load(dir)
			if len(f.Hosts) > 0 {
				diags = append(diags, Check(context.Background(), f, "")...)
			}
			var got []string
			for _, d := range diags {
				if d.Severity != hcl.DiagError {
					continue
				}
				if d.Subject == nil {
					t.Errorf("diagnostic without a range: %s: %s", d.Summary, d.Detail)
					continue
				}
				if d.Detail == "" {
					t.Errorf("diagnostic %q at %s has no detail", d.Summary, d.Subject)
				}
				got = append(got, fmt.Sprintf("%s:%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Summary))
			}
			sort.Strings(want)
			sort.Strings(got)
			got = compactStrings(got)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("diagnostics mismatch (-want +got):\n%s", diff)
				for _, d := range diags {
					t.Logf("%s: %s: %s", d.Subject, d.Summary, d.Detail)
				}
			}
		})
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
