package deploy_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// This test enforces the dependency directions of docs/ARCHITECTURE.md.

const module = "github.com/declarative/deploy"

type listedPackage struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", "./...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []listedPackage
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// allowed lists, for each package of the module, the other packages of the
// module it may import directly (a listed package allows its subpackages
// too). internal/ is open to all.
var allowed = map[string][]string{
	"agentapi":         {},
	"closure":          {"closure/nar", "agentapi"},
	"closure/nar":      {},
	"manifest":         {},
	"unpack":           {"closure"},
	"oci":              {"closure", "unpack"},
	"modules":          {"closure", "manifest", "unpack", "oci", "agentapi", "pull/channel"},
	"builder":          {"modules", "closure", "manifest", "unpack", "oci", "agentapi", "secrets"},
	"secrets":          {"closure", "manifest"},
	"imageroot":        {},
	"activation":       {"closure", "secrets", "manifest", "agentapi", "imageroot"},
	"pull/channel":     {"closure", "agentapi"},
	"pull":             {"activation", "pull/channel", "closure", "agentapi"},
	"console":          {"agentapi"},
	"mesh":             {},
	"agentclient":      {"agentapi", "closure", "manifest", "mesh"},
	"fleet":            {"agentclient", "builder", "modules", "closure", "mesh", "secrets", "manifest", "agentapi", "pull/channel", "console"},
	"vmtest":           {"closure", "mesh"},
	"vmtest/simhost":   {"closure", "agentapi", "secrets", "pull/channel"},
	"examples":         {"closure", "manifest"},
	"sbom":             {"closure", "manifest"},
	"bench":            {"closure", "manifest", "oci", "imageroot", "vmtest", "agentapi", "secrets", "pull/channel"},
	"cmd/deploy":       {"fleet", "agentclient", "builder", "modules", "closure", "mesh", "secrets", "manifest", "agentapi", "oci", "pull/channel", "console", "sbom"},
	"cmd/deploy-demo":  {"vmtest", "builder", "secrets", "closure", "manifest", "agentapi"},
	"cmd/deploy-agent": {"activation", "closure", "secrets", "manifest", "agentapi", "pull"},
}

func rel(p string) string { return strings.TrimPrefix(strings.TrimPrefix(p, module), "/") }

func within(p, root string) bool { return p == root || strings.HasPrefix(p, root+"/") }

func ruleFor(p string) (string, bool) {
	best := ""
	for root := range allowed {
		if within(p, root) && len(root) > len(best) {
			best = root
		}
	}
	return best, best != ""
}

func TestImportDirections(t *testing.T) {
	for _, p := range listPackages(t) {
		r := rel(p.ImportPath)
		if within(r, "internal") || r == "" {
			continue
		}
		root, ok := ruleFor(r)
		if !ok {
			t.Errorf("package %q has no dependency rule: add it to deps_test.go and docs/ARCHITECTURE.md", r)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				checkExternal(t, r, imp)
				continue
			}
			ir := rel(imp)
			if within(ir, "cmd") && !within(ir, root) {
				t.Errorf("%q imports %q: nothing imports cmd/ (but a command its own packages)", r, ir)
				continue
			}
			if within(ir, "internal") || within(ir, root) {
				continue
			}
			ok := false
			for _, a := range allowed[root] {
				if within(ir, a) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%q imports %q, which its rule (%q → %v) does not allow", r, ir, root, allowed[root])
			}
		}
	}
}

// checkExternal enforces: tailscale.com only under mesh/ and in cmd/deploy;
// lipgloss only in cmd/deploy; go-containerregistry only under oci/, in
// cmd/deploy and in benchmark programs; minio-go only in closure/cache/s3cache.
func checkExternal(t *testing.T, pkg, imp string) {
	t.Helper()
	switch {
	case within(imp, "tailscale.com"):
		if !within(pkg, "mesh") && pkg != "cmd/deploy" && !within(pkg, "vmtest") {
			t.Errorf("%q imports %q: tailscale.com is only for mesh/ and cmd/deploy", pkg, imp)
		}
	case within(imp, "github.com/google/go-containerregistry"):
		if !within(pkg, "oci") && pkg != "cmd/deploy" && !within(pkg, "bench") {
			t.Errorf("%q imports %q: go-containerregistry is only for oci/, cmd/deploy and bench/", pkg, imp)
		}
	case within(imp, "github.com/minio/minio-go"):
		if !within(pkg, "closure/cache/s3cache") {
			t.Errorf("%q imports %q: the S3 client is only for closure/cache/s3cache (the operator's side)", pkg, imp)
		}
	case within(imp, "github.com/charmbracelet/lipgloss"):
		if !within(pkg, "cmd/deploy") {
			t.Errorf("%q imports %q: lipgloss is only for cmd/deploy", pkg, imp)
		}
	}
}

// The agent binary must stay small and static: no tsnet, no lipgloss, no
// go-containerregistry (images are unpacked on the operator's machine), no
// S3 SDK (it reads caches and channels over plain HTTP(S) and signs its one
// S3 write, its pull-mode status, with internal/sigv4), no cgo anywhere in
// what it links. agentapi, the contract both binaries
// import, links nothing of the module and nothing outside the standard
// library.
func TestAgentDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./agentapi").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if deps := strings.Fields(string(out)); len(deps) != 1 || deps[0] != module+"/agentapi" {
		t.Errorf("agentapi depends on %v, want the standard library only", deps)
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{if .CgoFiles}}cgo{{end}}", "./cmd/deploy-agent")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		imp, flag, _ := strings.Cut(line, " ")
		if within(imp, "tailscale.com") || within(imp, "github.com/charmbracelet") || within(imp, "github.com/google/go-containerregistry") ||
			within(imp, "github.com/minio") || within(imp, "github.com/aws") || within(imp, "github.com/prometheus") || imp == module+"/closure/cache/s3cache" ||
			imp == module+"/fleet" || imp == module+"/agentclient" || imp == module+"/builder" || imp == module+"/mesh" {
			t.Errorf("deploy-agent links %q", imp)
		}
		if flag == "cgo" {
			t.Errorf("deploy-agent links cgo package %q", imp)
		}
	}
}

// The agent client speaks to one host's agent: it links neither the fleet
// policy nor the builder (nor what they bring: modules, oci, lipgloss),
// so a new operator-side tool, or pull mode, can use it alone.
func TestAgentClientDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "./agentclient").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, imp := range strings.Fields(string(out)) {
		for _, banned := range []string{"fleet", "builder", "modules", "oci", "unpack", "pull", "activation"} {
			if imp == module+"/"+banned || strings.HasPrefix(imp, module+"/"+banned+"/") {
				t.Errorf("agentclient links %q", imp)
			}
		}
		if within(imp, "github.com/charmbracelet") || within(imp, "github.com/google/go-containerregistry") || within(imp, "github.com/minio") {
			t.Errorf("agentclient links %q", imp)
		}
	}
}

// The shipped deploy binary does not link the test-host harness: the demo,
// which boots test hosts, is a program of its own (cmd/deploy-demo) that
// drives deploy as a child process.
func TestCLIDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "./cmd/deploy").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, imp := range strings.Fields(string(out)) {
		if within(imp, module+"/vmtest") {
			t.Errorf("deploy links %q", imp)
		}
	}
}
