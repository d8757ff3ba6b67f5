package sbom_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/cyclonedxtest"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/sbom"
)

func validateCycloneDX(t *testing.T, doc []byte) {
	t.Helper()
	if err := cyclonedxtest.Validate(doc); err != nil {
		t.Fatal(err)
	}
}

// goBinary builds a small Go program that uses github.com/google/go-cmp
// v0.7.0 (from the module cache: GOPROXY=off, GOFLAGS=-mod=mod) and returns
// the executable.
func goBinary(t *testing.T) []byte {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	dir := t.TempDir()
	sums, err := os.ReadFile(filepath.Join("..", "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	var sum []string
	for _, l := range strings.Split(string(sums), "\n") {
		if strings.HasPrefix(l, "github.com/google/go-cmp v0.7.0") {
			sum = append(sum, l)
		}
	}
	files := map[string]string{
		"go.mod":  "module example.com/hello\n\ngo 1.22\n\nrequire github.com/google/go-cmp v0.7.0\n",
		"go.sum":  strings.Join(sum, "\n") + "\n",
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\n\t\"github.com/google/go-cmp/cmp\"\n)\n\nfunc main() { fmt.Println(cmp.Diff(1, 2)) }\n",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", "hello", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	exe, err := os.ReadFile(filepath.Join(dir, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// testClosure makes a store with a system, an agent and two packages: a
// Go package holding this test binary (a Go executable with build info),
// and an OCI image laid out as the oci package stores one.
func testClosure(t *testing.T) (*closure.Store, *manifest.Manifest, string, []*closure.PathInfo, string) {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	s := &closure.Store{StoreDir: "/var/lib/deploy/store", RealDir: filepath.Join(root, "store"),
		DBDir: filepath.Join(root, "db"), RootsDir: filepath.Join(root, "roots")}
	for _, d := range []string{s.RealDir, s.DBDir, s.RootsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	add := func(name string, files map[string]string, refs ...string) *closure.PathInfo {
		t.Helper()
		src := t.TempDir()
		for f, content := range files {
			p := filepath.Join(src, f)
			os.MkdirAll(filepath.Dir(p), 0o755)
			mode := os.FileMode(0o644)
			if strings.HasPrefix(f, "bin/") {
				mode = 0o755
			}
			if err := os.WriteFile(p, []byte(content), mode); err != nil {
				t.Fatal(err)
			}
		}
		pi, err := s.AddTree(ctx, src, name, refs)
		if err != nil {
			t.Fatal(err)
		}
		return pi
	}
	exe := goBinary(t)
	lib := add("libthing", map[string]string{"lib/thing": "a library"})
	gopkg := add("hello", map[string]string{"bin/hello": string(exe), "share/ref": lib.Path}, lib.Path)
	manifestJSON := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`
	img := add("oci-image", map[string]string{"manifest.json": manifestJSON, "config.json": "{}", "layers": ""})
	agent := add("deploy-agent", map[string]string{"bin/deploy-agent": "#!/bin/sh\n"})
	unit := add("hello.service", map[string]string{"unit": "ExecStart=" + gopkg.Path + "/bin/hello"}, gopkg.Path)
	m := &manifest.Manifest{Host: "web1", Agent: agent.Path,
		Packages: []manifest.Package{{Name: "hello", Path: gopkg.Path}, {Name: "nginx", Path: img.Path}},
		Units:    []manifest.Unit{{Name: "hello.service", Source: unit.Path}}}
	sys := add("system-web1", map[string]string{"manifest.json": unit.Path + " " + img.Path + " " + agent.Path}, unit.Path, img.Path, agent.Path)
	cl, err := s.Closure(sys.Path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(manifestJSON))
	return s, m, sys.Path, cl, "sha256:" + hex.EncodeToString(sum[:])
}

func TestDescribe(t *testing.T) {
	s, m, sys, cl, digest := testClosure(t)
	bom, err := sbom.Describe(cl, m, sys, s.RealPath)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	byName := map[string]sbom.Component{}
	for _, c := range bom.Components {
		kinds[c.Name] = c.Kind
		byName[c.Name] = c
	}
	want := map[string]string{"system-web1": sbom.KindSystem, "deploy-agent": sbom.KindAgent, "hello": sbom.KindPackageGo,
		"nginx": sbom.KindPackageOCI, "hello.service": sbom.KindUnit, "libthing": sbom.KindDependency}
	if d := cmp.Diff(want, kinds); d != "" {
		t.Errorf("kinds (-want +got):\n%s", d)
	}
	if got := byName["nginx"].ImageDigest; got != digest {
		t.Errorf("image digest = %q, want %q", got, digest)
	}
	// The Go package's binary was built from example.com/hello with go-cmp.
	bins := byName["hello"].Binaries
	if len(bins) != 1 || bins[0].File != "bin/hello" || bins[0].GoVersion != runtime.Version() {
		t.Fatalf("Go binaries of hello = %+v, want bin/hello built with %s", bins, runtime.Version())
	}
	if got, want := bins[0].Main, (sbom.Module{Path: "example.com/hello", Version: "(devel)"}); got != want {
		t.Errorf("main module of bin/hello = %+v, want %+v", got, want)
	}
	if d := cmp.Diff([]sbom.Module{{Path: "github.com/google/go-cmp", Version: "v0.7.0", Sum: goCmpSum(t)}}, bins[0].Deps); d != "" {
		t.Errorf("Go modules of bin/hello (-want +got):\n%s", d)
	}
}

// goCmpSum is go.sum's h1: hash of github.com/google/go-cmp v0.7.0.
func goCmpSum(t *testing.T) string {
	sums, _ := os.ReadFile(filepath.Join("..", "go.sum"))
	for _, l := range strings.Split(string(sums), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "github.com/google/go-cmp" && f[1] == "v0.7.0" {
			return f[2]
		}
	}
	t.Fatal("go.sum has no github.com/google/go-cmp v0.7.0")
	return ""
}

func TestCycloneDX(t *testing.T) {
	s, m, sys, cl, digest := testClosure(t)
	bom, err := sbom.Describe(cl, m, sys, s.RealPath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := bom.CycloneDX(sbom.Tool{Name: "deploy", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	validateCycloneDX(t, doc)
	for _, want := range []string{
		`"bomFormat": "CycloneDX"`, `"specVersion": "1.6"`,
		`"purl": "pkg:golang/github.com/google/go-cmp@v0.7.0"`,
		`"name": "github.com/google/go-cmp"`, `"version": "v0.7.0"`,
		`"value": "` + digest + `"`, `"value": "package-oci"`, `"type": "container"`,
	} {
		if !bytes.Contains(doc, []byte(want)) {
			t.Errorf("CycloneDX document lacks %s", want)
		}
	}
	// Every path is a component (the system the metadata's), every
	// reference a dependency.
	var d struct {
		Metadata struct {
			Component struct {
				BOMRef string `json:"bom-ref"`
			}
		}
		Components []struct {
			BOMRef string `json:"bom-ref"`
		}
		Dependencies []struct {
			Ref       string
			DependsOn []string
		}
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	refs := map[string]bool{d.Metadata.Component.BOMRef: true}
	for _, c := range d.Components {
		refs[c.BOMRef] = true
	}
	for _, pi := range cl {
		if !refs[pi.Path] {
			t.Errorf("store path %s is not a component", pi.Path)
		}
	}
	if len(d.Dependencies) != len(cl) {
		t.Errorf("%d dependency entries, want %d", len(d.Dependencies), len(cl))
	}
	// A broken document does not validate: the check can fail.
	broken := bytes.Replace(doc, []byte(`"specVersion": "1.6"`), []byte(`"specVersion": 1.6`), 1)
	if err := cyclonedxtest.Validate(broken); err == nil {
		t.Errorf("a document with a numeric specVersion validated")
	}
}

func TestSPDX(t *testing.T) {
	s, m, sys, cl, digest := testClosure(t)
	bom, err := sbom.Describe(cl, m, sys, s.RealPath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := bom.SPDX(sbom.Tool{Name: "deploy", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// No SPDX schema is available offline: check the fields SPDX 2.3
	// requires of a document and of each package.
	var d struct {
		SPDXVersion, DataLicense, SPDXID, Name, DocumentNamespace string
		CreationInfo                                              struct{ Creators []string }
		Packages                                                  []map[string]any
		Relationships                                             []struct{ SpdxElementId, RelationshipType, RelatedSpdxElement string }
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	if d.SPDXVersion != "SPDX-2.3" || d.DataLicense != "CC0-1.0" || d.SPDXID != "SPDXRef-DOCUMENT" || d.Name == "" ||
		d.DocumentNamespace == "" || len(d.CreationInfo.Creators) == 0 {
		t.Errorf("SPDX document header %+v lacks required fields", d)
	}
	ids := map[string]bool{"SPDXRef-DOCUMENT": true}
	for _, p := range d.Packages {
		for _, f := range []string{"SPDXID", "name", "downloadLocation"} {
			if _, ok := p[f].(string); !ok {
				t.Errorf("package %v lacks %s", p, f)
			}
		}
		ids[p["SPDXID"].(string)] = true
	}
	for _, r := range d.Relationships {
		if !ids[r.SpdxElementId] || !ids[r.RelatedSpdxElement] {
			t.Errorf("relationship %+v names an unknown element", r)
		}
	}
	if len(d.Packages) <= len(cl) {
		t.Errorf("%d packages for %d paths: the Go modules are missing", len(d.Packages), len(cl))
	}
	if !bytes.Contains(doc, []byte("pkg:golang/github.com/google/go-cmp@v0.7.0")) || !bytes.Contains(doc, []byte(digest)) {
		t.Errorf("SPDX document lacks the Go module's purl or the image digest")
	}
}

func TestChainAndFindReference(t *testing.T) {
	s, _, sys, cl, _ := testClosure(t)
	var lib, hello, unit string
	for _, pi := range cl {
		switch {
		case strings.HasSuffix(pi.Path, "-libthing"):
			lib = pi.Path
		case strings.HasSuffix(pi.Path, "-hello"):
			hello = pi.Path
		case strings.HasSuffix(pi.Path, "-hello.service"):
			unit = pi.Path
		}
	}
	if got, want := sbom.Chain(cl, sys, lib), []string{sys, unit, hello, lib}; !cmp.Equal(got, want) {
		t.Errorf("Chain(system, libthing) = %v, want %v", got, want)
	}
	if got := sbom.Chain(cl, lib, sys); got != nil {
		t.Errorf("Chain(libthing, system) = %v, want nil", got)
	}
	hash, _, _ := closure.SplitPath(s.StoreDir, lib)
	file, ctx, err := sbom.FindReference(s.RealPath(hello), hash)
	if err != nil || file != "share/ref" || !strings.Contains(ctx, hash) {
		t.Errorf("FindReference(hello, libthing) = %q, %q, %v; want share/ref with the hash", file, ctx, err)
	}
	if file, _, err := sbom.FindReference(s.RealPath(lib), hash); file != "" || err != nil {
		t.Errorf("FindReference(libthing, itself) = %q, %v; want nothing", file, err)
	}
}
