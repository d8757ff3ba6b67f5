package builder

import (
	"context"
	"debug/elf"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/modules"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	agentOnce sync.Once
	agentBin  string
	agentErr  error
	agentDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

// testAgent returns a stand-in deploy-agent executable: what a build ships
// as the agent does not matter to the builder (TestAgentFromSource covers
// building the real one).
func testAgent(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		agentDir, agentErr = os.MkdirTemp("", "deploy-agent-")
		if agentErr != nil {
			return
		}
		agentBin = filepath.Join(agentDir, "deploy-agent")
		agentErr = os.WriteFile(agentBin, []byte("#!/bin/sh\necho stand-in deploy-agent\n"), 0o755)
	})
	if agentErr != nil {
		t.Fatalf("writing the stand-in deploy-agent: %v", agentErr)
	}
	return agentBin
}

func newTestBuilder(t testing.TB, cache string) *Builder {
	t.Helper()
	s, err := closure.NewLocalStore(cache, closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	return &Builder{Store: s, CacheDir: filepath.Join(cache, "build"), Agent: Agent{Binary: testAgent(t)}}
}

// writeFleet writes files (name → content) into a new directory.
func writeFleet(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func load(t testing.TB, dir string) *Fleet {
	t.Helper()
	f, diags := Load(dir)
	if diags.HasErrors() {
		t.Fatalf("Load(%q) = %v", dir, diags)
	}
	return f
}

func build(t testing.TB, b *Builder, f *Fleet, host string) *Result {
	t.Helper()
	res, diags := b.Build(context.Background(), f, host)
	if diags.HasErrors() {
		t.Fatalf("Build(%q) = %v", host, diags)
	}
	return res
}

const layoutFleet = `
host "h1" {
  address  = "10.0.0.1"
  hostname = "h1.example"
  roles    = [role.app]
}
role "app" {
  package "tool" {
    path = "./tool"
  }
  file "/etc/app/app.conf" {
    content = "tool=${package.tool}/bin/tool\n"
  }
  file "/srv/data.txt" {
    source = "data.txt"
    mode   = "600"
  }
  symlink "/usr/local/bin/tool" {
    target = "${package.tool}/bin/tool"
  }
  service "app" {
    exec_start = "${package.tool}/bin/tool serve"
    reload_triggers = ["v1"]
  }
  timer "cleanup" {
    on_calendar = ["daily"]
  }
  service "cleanup" {
    type       = "oneshot"
    exec_start = "${package.tool}/bin/tool cleanup"
  }
  activation_script "migrate" {
    script = "echo migrating"
  }
  sysctl "vm.swappiness" {
    value = 10
  }
}
`

func TestBuildLayout(t *testing.T) {
	dir := writeFleet(t, map[string]string{
		"fleet.hcl":     layoutFleet,
		"tool/bin/tool": "#!/bin/sh\necho tool\n",
		"data.txt":      "data\n",
	})
	if err := os.Chmod(filepath.Join(dir, "tool/bin/tool"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := newTestBuilder(t, t.TempDir())
	res := build(t, b, load(t, dir), "h1")
	m := res.Manifest
	tool := m.Packages[0].Path

	real := b.Store.RealPath(res.SystemPath)
	data, err := os.ReadFile(filepath.Join(real, manifest.FileName))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := manifest.Parse(data)
	if err != nil {
		t.Fatalf("manifest.Parse(system manifest) = %v", err)
	}
	if diff := cmp.Diff(m, parsed, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("manifest.json differs from Result.Manifest (-want +got):\n%s", diff)
	}
	if !strings.HasSuffix(res.SystemPath, "-system-h1") || m.Hostname != "h1.example" {
		t.Errorf("system path %q, hostname %q", res.SystemPath, m.Hostname)
	}
	// etc/ tree and units/ are symlinks to the objects; agent too.
	for link, want := range map[string]string{
		"etc/app/app.conf":    m.Files[0].Source,
		"units/app.service":   m.Units[0].Source,
		"units/cleanup.timer": m.Units[2].Source,
		"agent":               m.Agent,
	} {
		got, err := os.Readlink(filepath.Join(real, link))
		if err != nil || got != want {
			t.Errorf("Readlink(%q) = %q, %v; want %q", link, got, err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(real, "etc/srv")); err == nil {
		t.Errorf("a file outside /etc appears in etc/")
	}
	// Unit decisions.
	units := map[string]manifest.Unit{}
	for _, u := range m.Units {
		units[u.Name] = u
	}
	if u := units["cleanup.service"]; u.Start || len(u.WantedBy) != 0 {
		t.Errorf("timer's service = %+v, want not started and not wanted", u)
	}
	if u := units["cleanup.timer"]; !u.Start || u.WantedBy[0] != "timers.target" {
		t.Errorf("timer = %+v, want started, wanted by timers.target", u)
	}
	if u := units["app.service"]; !u.Start || u.ReloadHash == "" || len(u.RestartHash) != 64 {
		t.Errorf("app.service = %+v", u)
	}
	if f := m.Files[1]; f.Path != "/srv/data.txt" || f.Mode != "0600" || f.Owner != "root" {
		t.Errorf("file = %+v, want /srv/data.txt 0600 root", f)
	}
	if m.Sysctls[0] != (manifest.Sysctl{Key: "vm.swappiness", Value: "10"}) {
		t.Errorf("sysctl = %+v", m.Sysctls[0])
	}
	// References: the system path refers to everything, and the unit file
	// to the package it runs.
	info, err := b.Store.Info(res.SystemPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(m.StorePaths(), tool) {
		if !contains(info.References, p) {
			t.Errorf("system path does not refer to %q; references %v", p, info.References)
		}
	}
	unitInfo, err := b.Store.Info(units["app.service"].Source)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{tool}, unitInfo.References); diff != "" {
		t.Errorf("unit references (-want +got):\n%s", diff)
	}
	text, err := os.ReadFile(b.Store.RealPath(units["app.service"].Source))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(text), "ExecStart="+tool+"/bin/tool serve\n") {
		t.Errorf("unit file:\n%s\nwant ExecStart with the package path", text)
	}
	script, err := os.Stat(b.Store.RealPath(m.ActivationScripts[0].Source))
	if err != nil || script.Mode()&0o111 == 0 {
		t.Errorf("activation script mode = %v, %v; want executable", script.Mode(), err)
	}
	cl, err := b.Store.Closure(res.SystemPath)
	if err != nil {
		t.Fatalf("Closure = %v", err)
	}
	if last := cl[len(cl)-1].Path; last != res.SystemPath {
		t.Errorf("closure ends with %q, want the system path", last)
	}
	// Building again changes nothing.
	again := build(t, b, load(t, dir), "h1")
	if again.SystemPath != res.SystemPath {
		t.Errorf("second build = %q, want %q", again.SystemPath, res.SystemPath)
	}
}

func contains(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// A literal store path that is not part of the build would dangle on the
// target: the build refuses it.
func TestBuildRefusesForeignStorePath(t *testing.T) {
	dir := writeFleet(t, map[string]string{"fleet.hcl": `
host "h1" {
  address = "10.0.0.1"
  file "/etc/x" {
    content = "/var/lib/deploy/store/0123456789abcdfghijklmnpqrsvwxyz-other/bin/x"
  }
}`})
	b := newTestBuilder(t, t.TempDir())
	_, diags := b.Build(context.Background(), load(t, dir), "h1")
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "not part of this build") {
		t.Errorf("Build = %v, want an error about a store path not part of this build", diags)
	}
}

// TestAgentFromSource checks that building the agent from this module's
// source gives the same store path as shipping a binary built the same way.
func TestAgentFromSource(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "deploy-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-buildid=", "-o", exe, "./cmd/deploy-agent")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building deploy-agent: %v\n%s", err, out)
	}
	bin := newTestBuilder(t, t.TempDir())
	bin.Agent.Binary = exe
	fromBin, err := bin.agentPath(context.Background(), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	src := &Builder{Store: bin.Store, CacheDir: bin.CacheDir, Agent: Agent{SourceDir: ".."}}
	fromSrc, err := src.agentPath(context.Background(), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if fromBin != fromSrc {
		t.Errorf("agent from source = %q, from binary = %q; want the same", fromSrc, fromBin)
	}
	if _, err := (&Builder{Store: bin.Store, CacheDir: bin.CacheDir}).agentPath(context.Background(), "amd64"); err == nil {
		t.Errorf("agentPath without an agent source = nil error, want one")
	}
}

// copyDir copies a directory tree (files and directories only).
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBuildReproducible builds every example twice, from copies in different
// directories, into different stores, with different umask, TZ, locale,
// HOME, GOCACHE, GOFLAGS, working directory and file mtimes, and checks that
// the system paths are bit-identical (a store path is the hash of the
// content and its references).
func TestBuildReproducible(t *testing.T) {
	examples, err := filepath.Glob("../examples/*/*.hcl")
	if err != nil || len(examples) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	dirs := map[string]bool{}
	for _, e := range examples {
		dirs[filepath.Dir(e)] = true
	}
	for ex := range dirs {
		t.Run(filepath.Base(ex), func(t *testing.T) {
			a, b := filepath.Join(t.TempDir(), "one"), filepath.Join(t.TempDir(), "deeper", "two")
			copyDir(t, ex, a)
			copyDir(t, ex, b)
			// Examples with external inputs (images, release archives)
			// build against stand-ins: tests never reach the internet.
			client := standInClient(t)
			lockWithStandIns(t, a, client)
			lockWithStandIns(t, b, client)
			old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
			filepath.Walk(b, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, old, old) })

			run := func(dir string, env map[string]string, umask int) map[string]string {
				for k, v := range env {
					t.Setenv(k, v)
				}
				prev := syscall.Umask(umask)
				defer syscall.Umask(prev)
				t.Chdir(t.TempDir())
				bl := newTestBuilder(t, t.TempDir())
				bl.HTTPClient = client
				f := load(t, dir)
				out := map[string]string{}
				for _, h := range f.Hosts {
					out[h.Name] = build(t, bl, f, h.Name).SystemPath
				}
				return out
			}
			first := run(a, map[string]string{"TZ": "UTC", "LANG": "C"}, 0o022)
			home := t.TempDir()
			second := run(b, map[string]string{
				"TZ": "Pacific/Chatham", "LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8", "HOME": home,
				"GOCACHE": filepath.Join(home, "gocache"), "GOFLAGS": "-tags=other", "SOURCE_DATE_EPOCH": "1",
			}, 0o077)
			if len(first) == 0 {
				t.Fatal("no hosts built")
			}
			if diff := cmp.Diff(first, second); diff != "" {
				t.Errorf("system paths differ between the two builds (-first +second):\n%s", diff)
			}
		})
	}
}

func TestURLPackageAndLock(t *testing.T) {
	content := "#!/bin/sh\necho v1\n"
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		requests++
		w.Write([]byte(content))
	}))
	defer srv.Close()
	fleet := `
host "h1" {
  address = "10.0.0.1"
  package "tool" {
    url        = "` + srv.URL + `/tool"
    executable = true
  }
  file "/etc/tool" {
    content = package.tool
  }
}`
	dir := writeFleet(t, map[string]string{"fleet.hcl": fleet})
	b := newTestBuilder(t, t.TempDir())
	ctx := context.Background()

	_, diags := b.Build(ctx, load(t, dir), "h1")
	if !diags.HasErrors() || diags[0].Summary != "Unpinned url" {
		t.Fatalf("Build without a lock = %v, want Unpinned url", diags)
	}
	pb := &modules.PackageBuilder{Store: b.Store, CacheDir: b.CacheDir}
	lock, diags := UpdateLock(ctx, load(t, dir), pb, false)
	if diags.HasErrors() {
		t.Fatalf("UpdateLock = %v", diags)
	}
	if err := lock.Write(dir); err != nil {
		t.Fatal(err)
	}
	res := build(t, b, load(t, dir), "h1")
	tool := res.Manifest.Packages[0].Path
	got, err := os.ReadFile(b.Store.RealPath(tool))
	if err != nil || string(got) != content {
		t.Errorf("package content = %q, %v; want %q", got, err, content)
	}
	if fi, err := os.Stat(b.Store.RealPath(tool)); err != nil || fi.Mode()&0o100 == 0 {
		t.Errorf("package mode = %v, %v; want executable", fi.Mode(), err)
	}

	// The server now serves something else: a rebuild uses the cache, a
	// fresh store refuses the download, and deploy lock keeps the pin
	// unless asked to update it.
	mu.Lock()
	content = "#!/bin/sh\necho v2 - compromised\n"
	before := requests
	mu.Unlock()
	if again := build(t, b, load(t, dir), "h1"); again.SystemPath != res.SystemPath {
		t.Errorf("rebuild = %q, want %q from the cache", again.SystemPath, res.SystemPath)
	}
	if requests != before {
		t.Errorf("rebuild fetched again (%d requests, want %d)", requests, before)
	}
	fresh := newTestBuilder(t, t.TempDir())
	_, diags = fresh.Build(ctx, load(t, dir), "h1")
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "hash mismatch") {
		t.Errorf("Build with changed upstream = %v, want a hash mismatch", diags)
	}
	kept, diags := UpdateLock(ctx, load(t, dir), pb, false)
	if diags.HasErrors() || kept.Inputs[srv.URL+"/tool"] != lock.Inputs[srv.URL+"/tool"] {
		t.Errorf("UpdateLock(update=false) = %v, %v; want the old pin kept", kept.Inputs, diags)
	}
	updated, diags := UpdateLock(ctx, load(t, dir), pb, true)
	if diags.HasErrors() || updated.Inputs[srv.URL+"/tool"] == lock.Inputs[srv.URL+"/tool"] {
		t.Errorf("UpdateLock(update=true) = %v, %v; want a new pin", updated.Inputs, diags)
	}

	// A sha256 attribute that disagrees with the lock is refused.
	withHash := strings.Replace(fleet, "executable = true", `executable = true
    sha256 = "`+strings.Repeat("ab", 32)+`"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(withHash), 0o644); err != nil {
		t.Fatal(err)
	}
	_, diags = b.Build(ctx, load(t, dir), "h1")
	if !diags.HasErrors() || diags[0].Summary != "Input does not match deploy.lock" {
		t.Errorf("Build with a sha256 that disagrees with the lock = %v", diags)
	}
}

// An arm64 host gets an aarch64 agent: built from source for its
// architecture, or the binary beside deploy-agent named for it; without
// either the build fails naming the host.
func TestAgentMatchesHostArch(t *testing.T) {
	ctx := context.Background()
	fleet := `
host "pi" {
  address = "10.0.0.9"
  arch    = "arm64"
  file "/etc/motd" {
    content = "hi\n"
  }
}`
	dir := writeFleet(t, map[string]string{"fleet.hcl": fleet})
	machine := func(b *Builder, res *Result) elf.Machine {
		t.Helper()
		f, err := elf.Open(filepath.Join(b.Store.RealPath(res.Manifest.Agent), agentapi.AgentBin))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return f.Machine
	}

	src := newTestBuilder(t, t.TempDir())
	src.Agent = Agent{SourceDir: ".."}
	res := build(t, src, load(t, dir), "pi")
	if m := machine(src, res); m != elf.EM_AARCH64 {
		t.Errorf("agent of an arm64 host built from source is %v, want EM_AARCH64", m)
	}

	// Only an amd64 binary: a build error that names the host.
	binDir := t.TempDir()
	amd := filepath.Join(binDir, "deploy-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", amd, "./cmd/deploy-agent")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH=amd64", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bin := newTestBuilder(t, t.TempDir())
	bin.Agent = Agent{Binary: amd}
	_, diags := bin.Build(ctx, load(t, dir), "pi")
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "no deploy-agent for linux/arm64") || diags[0].Subject == nil {
		t.Fatalf("Build with only an amd64 agent = %v, want a build error at the host", diags)
	}
	// ... and the arm64 one beside it is used.
	armAgent := filepath.Join(src.Store.RealPath(res.Manifest.Agent), agentapi.AgentBin)
	data, err := os.ReadFile(armAgent)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(amd+"-linux-arm64", data, 0o755); err != nil {
		t.Fatal(err)
	}
	res2 := build(t, bin, load(t, dir), "pi")
	if m := machine(bin, res2); m != elf.EM_AARCH64 {
		t.Errorf("agent beside deploy-agent for arm64 is %v, want EM_AARCH64", m)
	}
	if res2.SystemPath != res.SystemPath {
		t.Errorf("the prebuilt arm64 agent gave system %q, the source build %q; want the same", res2.SystemPath, res.SystemPath)
	}
}

// Builds into one Batch share it: their systems are the ones Build makes,
// valid only once the batch is committed, and an object two hosts share
// is staged once.
func TestBuildIntoBatch(t *testing.T) {
	fleet := strings.Replace(layoutFleet, `host "h1" {`, `host "h2" {
  address  = "10.0.0.2"
  roles    = [role.app]
}
host "h1" {`, 1)
	dir := writeFleet(t, map[string]string{
		"fleet.hcl":     fleet,
		"tool/bin/tool": "#!/bin/sh\necho tool\n",
		"data.txt":      "data\n",
	})
	f := load(t, dir)
	want := map[string]string{}
	for _, h := range []string{"h1", "h2"} {
		want[h] = build(t, newTestBuilder(t, t.TempDir()), f, h).SystemPath
	}
	b := newTestBuilder(t, t.TempDir())
	x, err := b.NewBatch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	got := map[string]*Result{}
	for _, h := range []string{"h1", "h2"} {
		res, diags := b.BuildInto(context.Background(), f, h, x)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		got[h] = res
		if ok, _ := b.Store.Valid(res.SystemPath); ok {
			t.Fatalf("%s's system is valid before the commit", h)
		}
	}
	if err := x.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	for h, res := range got {
		if res.SystemPath != want[h] {
			t.Errorf("%s: %s, want %s as Build makes it", h, res.SystemPath, want[h])
		}
		paths, err := b.Store.Closure(res.SystemPath)
		if err != nil {
			t.Fatalf("%s's closure after the commit: %v", h, err)
		}
		for _, p := range paths {
			if ok, err := b.Store.Valid(p.Path); !ok || err != nil {
				t.Errorf("%s: %s not valid after the commit (%v)", h, p.Path, err)
			}
		}
	}
}
