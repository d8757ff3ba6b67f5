package builder

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/hcl/v2"
	"github.com/rogpeppe/go-internal/txtar"
)

// The CLI script that builds the quickstart cannot reach the repository, so
// it carries a copy of examples/quickstart; this keeps the copy exact.
func TestQuickstartScriptMatchesExample(t *testing.T) {
	a, err := txtar.ParseFile("../cmd/deploy/testdata/script/quickstart.txtar")
	if err != nil {
		t.Fatal(err)
	}
	inScript := map[string]string{}
	for _, f := range a.Files {
		if strings.HasPrefix(f.Name, "agent/") || strings.HasPrefix(f.Name, "changed/") {
			continue
		}
		inScript[f.Name] = string(f.Data)
	}
	inExample := map[string]string{}
	root := "../examples/quickstart"
	err = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		inExample[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(inExample, inScript); diff != "" {
		t.Errorf("quickstart.txtar's copy differs from examples/quickstart (-example +script):\n%s", diff)
	}
}

// Every example passes check, but for what an example cannot ship: its
// hosts' keys and the secrets encrypted to them. Those are errors (the
// fleet could not deploy as it is), named as such.
func TestExamplesCheck(t *testing.T) {
	dirs, err := filepath.Glob("../examples/*")
	if err != nil {
		t.Fatal(err)
	}
	// Fleets nested in an example (examples/gitops/pull).
	nested, _ := filepath.Glob("../examples/*/*/*.hcl")
	for _, f := range nested {
		dirs = append(dirs, filepath.Dir(f))
	}
	shipped := map[string]bool{"Secret a host cannot decrypt": true, "Secret file is a placeholder": true}
	for _, dir := range dirs {
		t.Run(strings.TrimPrefix(dir, "../examples/"), func(t *testing.T) {
			f, diags := Load(dir)
			if !diags.HasErrors() {
				diags = Check(context.Background(), f, "")
			}
			for _, d := range diags.Errs() {
				if hd, ok := d.(*hcl.Diagnostic); !ok || !shipped[hd.Summary] {
					t.Errorf("Check(%q): %v", dir, d)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "secrets")); err == nil && !diags.HasErrors() {
				t.Errorf("Check(%q) passes with the example's placeholder secrets", dir)
			}
		})
	}
}
