package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/modules"
	"github.com/hashicorp/hcl/v2"
)

// Agent says where the deploy-agent of every system closure comes from.
// The agent in a closure is built for the host's architecture (its arch):
// Binary when its ELF header names that architecture, else a file beside it
// named like Binary + "-linux-" + arch ("deploy-agent-linux-arm64"), else a
// build from SourceDir for that architecture. A host whose architecture
// none of them provides is a build error.
type Agent struct {
	// Binary is a deploy-agent executable (for example the one installed
	// beside the deploy command). A file that is not an ELF executable (a
	// test's stand-in script) is taken to fit every architecture.
	Binary string
	// SourceDir is a checkout of this module; the agent is built from it
	// with go build -trimpath, CGO_ENABLED=0, GOARCH set to the host's and
	// an empty build ID.
	SourceDir string
}

// Builder evaluates hosts and realizes their system closures in the local
// store. Its zero value is not usable: set Store and CacheDir. A Builder
// caches what it built (packages, the agent) and is safe for concurrent use.
type Builder struct {
	// Store is the local store that receives every path.
	Store *closure.Store
	// CacheDir holds downloads, the go build index and temporary
	// directories; normally a directory beside the store.
	CacheDir string
	// Agent is where the deploy-agent comes from.
	Agent Agent
	// Go is the go command for go packages (default "go" from PATH).
	Go string
	// GoEnv may set GOCACHE and GOMODCACHE for go builds.
	GoEnv map[string]string
	// HTTPClient fetches url packages; its Transport also carries the
	// registry requests of oci packages.
	HTTPClient *http.Client
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
	// Substitute, if set, is asked for each go package's output by its
	// build inputs before it is compiled (a binary cache's realisations).
	Substitute modules.Substituter
	// NoSubstitute tells the fleet's session not to set Substitute from
	// the fleet's cache: everything is built here.
	NoSubstitute bool
	// CheckBuilds rebuilds go packages whose output is known and compares
	// ([modules.PackageBuilder.CheckBuilds]).
	CheckBuilds bool

	mu       sync.Mutex
	packages map[string]*modules.PackageBuilder // by fleet dir
	agent    map[string]agentCache              // by arch
}

type agentCache struct {
	key  string
	path string
}

// Result is a built host.
type Result struct {
	Host string
	// SystemPath is the store path of the system closure.
	SystemPath string
	Manifest   *manifest.Manifest
	// TrustedKeys are the public keys of the host's Nix packages, whose
	// signatures vouch for those paths' names (they are not
	// content-addressed): the host is told to accept them.
	TrustedKeys []string
	// Config is the host's evaluated configuration the system was built
	// from.
	Config *modules.Config
}

func (b *Builder) packageBuilder(f *Fleet, dry bool) *modules.PackageBuilder {
	if dry {
		storeDir := closure.DefaultStoreDir
		if b.Store != nil {
			storeDir = b.Store.StoreDir
		}
		return &modules.PackageBuilder{Store: &closure.Store{StoreDir: storeDir}, FleetDir: f.Dir, Lock: f.Lock, DryRun: true}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.packages == nil {
		b.packages = map[string]*modules.PackageBuilder{}
	}
	pb, ok := b.packages[f.Dir]
	if !ok || pb.Lock != f.Lock || pb.Substitute != b.Substitute || pb.CheckBuilds != b.CheckBuilds {
		pb = &modules.PackageBuilder{Store: b.Store, FleetDir: f.Dir, CacheDir: b.CacheDir, Lock: f.Lock, Go: b.Go,
			GoEnv: b.GoEnv, HTTPClient: b.HTTPClient, Logf: b.Logf, Substitute: b.Substitute, CheckBuilds: b.CheckBuilds}
		b.packages[f.Dir] = pb
	}
	return pb
}

// Realisations returns the go packages b obtained for fleets so far, by
// their build keys: what a push records in a binary cache for others.
func (b *Builder) Realisations() []modules.Realisation {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []modules.Realisation
	for _, pb := range b.packages {
		out = append(out, pb.Realisations()...)
	}
	return out
}

// Counts says how many go packages b compiled and how many it substituted.
func (b *Builder) Counts() modules.BuildCounts {
	b.mu.Lock()
	defer b.mu.Unlock()
	var c modules.BuildCounts
	for _, pb := range b.packages {
		pc := pb.Counts()
		c.Compiled += pc.Compiled
		c.Substituted += pc.Substituted
	}
	return c
}

// EvaluateDry evaluates host without building or fetching anything: its
// packages' store paths are placeholders. It is enough to read settings
// (a pull block, say), not to realize the host.
func (b *Builder) EvaluateDry(ctx context.Context, f *Fleet, host string) (*modules.Config, hcl.Diagnostics) {
	return f.Evaluate(ctx, host, b.packageBuilder(f, true))
}

// Evaluate evaluates host, building its packages.
func (b *Builder) Evaluate(ctx context.Context, f *Fleet, host string) (*modules.Config, hcl.Diagnostics) {
	return f.Evaluate(ctx, host, b.packageBuilder(f, false))
}

// Check evaluates every host of f and realizes it without building or
// writing anything: packages get placeholder paths and url packages must be
// pinned. It also reads the header of each secret file the hosts use,
// without decrypting, and reports a host that could not decrypt it
// ([checkSecrets]). It returns every problem found. storeDir is the store directory
// the fleet will be built for ("": the default).
func Check(ctx context.Context, f *Fleet, storeDir string) hcl.Diagnostics {
	b := &Builder{}
	if storeDir != "" {
		b.Store = &closure.Store{StoreDir: storeDir}
	}
	var diags hcl.Diagnostics
	var uses []SecretUse
	pb := b.packageBuilder(f, true)
	for _, h := range f.Hosts {
		cfg, d := f.Evaluate(ctx, h.Name, pb)
		diags = append(diags, d...)
		if cfg == nil {
			continue
		}
		if !d.HasErrors() {
			u, d := secretUsesOf(h, cfg)
			uses, diags = append(uses, u...), append(diags, d...)
		}
		z := &modules.Realizer{FleetDir: f.Dir, StoreDir: pb.Store.StoreDir, Objects: dryObjects{storeDir: pb.Store.StoreDir}, Revoked: f.RevokedSecrets}
		agent, _ := closure.MakeSourcePath(pb.Store.StoreDir, sha256.Sum256([]byte("unbuilt agent")), "deploy-agent", nil)
		m, d := z.Realize(ctx, cfg, agent)
		diags = append(diags, d...)
		if !d.HasErrors() && !diags.HasErrors() {
			if err := m.Validate(); err != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid manifest",
					Detail: fmt.Sprintf("Host %q: %s.", h.Name, err), Subject: h.DefRange.Ptr()})
			}
		}
	}
	diags = append(diags, checkSecrets(f, uses)...)
	return dedupe(diags)
}

// Build evaluates host and realizes its system closure in the local store:
// every file content, package, unit file, secret ciphertext and script
// becomes a store path of its own, then the system path
// <hash>-system-<host> holds manifest.json, an etc/ tree of symlinks to the
// files under /etc, units/ with symlinks to the unit files, and agent → the
// deploy-agent's store path. The same inputs give the same system path.
func (b *Builder) Build(ctx context.Context, f *Fleet, host string) (*Result, hcl.Diagnostics) {
	x, err := b.NewBatch(ctx)
	if err != nil {
		return nil, hcl.Diagnostics{buildError(host, err)}
	}
	defer x.Close()
	res, diags := b.BuildInto(ctx, f, host, x)
	if diags.HasErrors() {
		return nil, diags
	}
	if err := x.Commit(ctx); err != nil {
		return nil, append(diags, buildError(host, err))
	}
	return res, diags
}

// BuildInto builds like [Builder.Build], but the host's own objects (its
// files, units and system) are staged in x: the system is valid once x is
// committed. Builds of many hosts share one batch, and one flush to disk.
func (b *Builder) BuildInto(ctx context.Context, f *Fleet, host string, x *Batch) (*Result, hcl.Diagnostics) {
	cfg, diags := b.Evaluate(ctx, f, host)
	if diags.HasErrors() {
		return nil, diags
	}
	agent, err := b.agentPath(ctx, cfg.Arch)
	if err != nil {
		d := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot provide the deploy-agent", Detail: fmt.Sprintf("Host %q: %s.", host, err)}
		if h, ok := f.Host(host); ok {
			d.Subject = h.DefRange.Ptr()
		}
		return nil, append(diags, d)
	}
	known := map[string]string{}
	addKnown := func(p string) {
		if h, _, err := closure.SplitPath(b.Store.StoreDir, p); err == nil {
			known[h] = p
		}
	}
	for _, p := range cfg.Packages {
		addKnown(p)
	}
	addKnown(agent)
	objs := &storeObjects{store: b.Store, known: known, add: x}
	z := &modules.Realizer{FleetDir: f.Dir, StoreDir: b.Store.StoreDir, Objects: objs, Revoked: f.RevokedSecrets}
	m, d := z.Realize(ctx, cfg, agent)
	diags = append(diags, d...)
	if d.HasErrors() {
		return nil, diags
	}
	sys, err := b.systemPath(ctx, host, m, known, x)
	if err != nil {
		return nil, append(diags, buildError(host, err))
	}
	return &Result{Host: host, SystemPath: sys, Manifest: m, TrustedKeys: modules.TrustedKeys(cfg.Resources), Config: cfg}, diags
}

func buildError(host string, err error) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Build failed", Detail: fmt.Sprintf("Host %q: %s.", host, err)}
}

func (b *Builder) tempDir() (string, error) {
	dir := filepath.Join(b.CacheDir, "tmp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(dir, "system-")
}

// systemPath assembles the system tree and adds it to the store.
func (b *Builder) systemPath(ctx context.Context, host string, m *manifest.Manifest, known map[string]string, add *Batch) (string, error) {
	data, err := m.Marshal()
	if err != nil {
		return "", err
	}
	root := memDir()
	root.dir[manifest.FileName] = &memNode{contents: data}
	root.dir["agent"] = &memNode{target: m.Agent}
	link := func(rel, target string) error {
		parts := strings.Split(rel, "/")
		d := root
		for _, p := range parts[:len(parts)-1] {
			next, ok := d.dir[p]
			if !ok {
				next = memDir()
				d.dir[p] = next
			}
			if next.dir == nil {
				return fmt.Errorf("system tree: %q is both a file and a directory", rel)
			}
			d = next
		}
		last := parts[len(parts)-1]
		if _, ok := d.dir[last]; ok {
			return fmt.Errorf("system tree: %q is both a file and a directory", rel)
		}
		d.dir[last] = &memNode{target: target}
		return nil
	}
	for _, f := range m.Files {
		if rel, ok := strings.CutPrefix(f.Path, "/etc/"); ok {
			if err := link(path.Join("etc", rel), f.Source); err != nil {
				return "", err
			}
		}
	}
	for _, u := range m.Units {
		if err := link(path.Join("units", u.Name), u.Source); err != nil {
			return "", err
		}
	}
	refs := m.StorePaths()
	for _, p := range refs {
		if h, _, err := closure.SplitPath(b.Store.StoreDir, p); err == nil {
			known[h] = p
		}
	}
	scanned, err := scanRefs(b.Store.StoreDir, data, known)
	if err != nil {
		return "", err
	}
	return add.add(root, "system-"+host, append(refs, scanned...))
}

// storeObjects adds content to the store, with the references found in it.
type storeObjects struct {
	store *closure.Store
	known map[string]string // hash part → store path
	add   *Batch
}

func (o *storeObjects) AddFile(ctx context.Context, name string, content []byte, executable bool) (string, error) {
	refs, err := scanRefs(o.store.StoreDir, content, o.known)
	if err != nil {
		return "", err
	}
	return o.add.add(&memNode{contents: content, executable: executable}, name, refs)
}

// scanRefs finds the store paths of known that content mentions, like Nix's
// reference scanner. A mention of another store path is an error: it would
// dangle on the target.
func scanRefs(storeDir string, content []byte, known map[string]string) ([]string, error) {
	prefix := []byte(storeDir + "/")
	var refs []string
	seen := map[string]bool{}
	for rest := content; ; {
		i := bytes.Index(rest, prefix)
		if i < 0 {
			break
		}
		rest = rest[i+len(prefix):]
		if len(rest) < closure.HashLen+1 || rest[closure.HashLen] != '-' || !isNix32(rest[:closure.HashLen]) {
			continue
		}
		p, ok := known[string(rest[:closure.HashLen])]
		if !ok {
			end := closure.HashLen + 1
			for end < len(rest) && end < 250 && rest[end] != '/' && rest[end] > ' ' && rest[end] != '"' {
				end++
			}
			return nil, fmt.Errorf("the content refers to store path %q, which is not part of this build", storeDir+"/"+string(rest[:end]))
		}
		if !seen[p] {
			seen[p] = true
			refs = append(refs, p)
		}
	}
	return refs, nil
}

func isNix32(b []byte) bool {
	for _, c := range b {
		if !strings.ContainsRune("0123456789abcdfghijklmnpqrsvwxyz", rune(c)) {
			return false
		}
	}
	return true
}

// dryObjects computes placeholder paths without writing anything.
type dryObjects struct{ storeDir string }

func (o dryObjects) AddFile(_ context.Context, name string, content []byte, _ bool) (string, error) {
	return closure.MakeSourcePath(o.storeDir, sha256.Sum256(content), name, nil)
}

// AgentPath returns the store path of the deploy-agent that host's system
// closure holds (built for the host's arch), adding it to the store once per
// Builder (and again only when the binary changes). The operator runs it on
// the host before the closure is copied (the run lock).
func (b *Builder) AgentPath(ctx context.Context, host *Host) (string, error) {
	arch := host.Arch
	if arch == "" {
		arch = "amd64"
	}
	return b.agentPath(ctx, arch)
}

// agentPath returns the store path of the deploy-agent for hosts of
// architecture arch (a GOARCH), adding it once per Builder (and again only
// when the binary changes).
func (b *Builder) agentPath(ctx context.Context, arch string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	exe, key, err := b.agentSource(arch)
	if err != nil {
		return "", err
	}
	if c, ok := b.agent[arch]; ok && c.key == key {
		if ok, err := b.Store.Valid(c.path); err == nil && ok {
			return c.path, nil
		}
	}
	// The store lays the binary out as an agent path (agentapi.AgentBin):
	// one definition of that layout, shared with the target's install-self.
	if exe == "" {
		tmp, err := b.tempDir()
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmp)
		exe = filepath.Join(tmp, "deploy-agent")
		if err := b.buildAgent(ctx, exe, tmp, arch); err != nil {
			return "", err
		}
	}
	pi, err := b.Store.AddAgent(ctx, exe)
	if err != nil {
		return "", fmt.Errorf("deploy-agent: %w", err)
	}
	if b.agent == nil {
		b.agent = map[string]agentCache{}
	}
	b.agent[arch] = agentCache{key: key, path: pi.Path}
	return pi.Path, nil
}

// agentSource picks the agent for arch: an executable (exe) or, with exe
// empty, a build from the source directory; key identifies the choice.
func (b *Builder) agentSource(arch string) (exe, key string, err error) {
	var tried []string
	if b.Agent.Binary != "" {
		for _, cand := range []string{b.Agent.Binary, b.Agent.Binary + "-linux-" + arch} {
			fi, err := os.Stat(cand)
			if err != nil {
				if cand == b.Agent.Binary {
					return "", "", fmt.Errorf("deploy-agent: %w", err)
				}
				continue
			}
			got, err := ELFArch(cand)
			switch {
			case errors.Is(err, errNotELF):
				got = arch
			case err != nil:
				return "", "", fmt.Errorf("deploy-agent %q: %w", cand, err)
			}
			if got == arch {
				return cand, fmt.Sprintf("bin\x00%s\x00%d\x00%d", cand, fi.Size(), fi.ModTime().UnixNano()), nil
			}
			tried = append(tried, fmt.Sprintf("%s is for linux/%s", cand, got))
		}
	}
	if b.Agent.SourceDir != "" {
		return "", "src\x00" + b.Agent.SourceDir + "\x00" + arch, nil
	}
	if len(tried) == 0 {
		return "", "", errors.New("no deploy-agent: install deploy-agent beside deploy, or pass --agent PATH or --agent-src DIR")
	}
	return "", "", fmt.Errorf("no deploy-agent for linux/%s (%s): put one built for linux/%s at %s, or pass --agent-src DIR to build it from source",
		arch, strings.Join(tried, "; "), arch, b.Agent.Binary+"-linux-"+arch)
}

var errNotELF = errors.New("not an ELF file")

// ELFArch returns the GOARCH an ELF executable was built for.
func ELFArch(p string) (string, error) {
	f, err := elf.Open(p)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return "", errNotELF
		}
		return "", err
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_386:
		return "386", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	case elf.EM_S390:
		return "s390x", nil
	case elf.EM_LOONGARCH:
		return "loong64", nil
	case elf.EM_PPC64:
		if f.ByteOrder == binary.LittleEndian {
			return "ppc64le", nil
		}
		return "ppc64", nil
	case elf.EM_MIPS:
		le := f.ByteOrder == binary.LittleEndian
		switch {
		case f.Class == elf.ELFCLASS64 && le:
			return "mips64le", nil
		case f.Class == elf.ELFCLASS64:
			return "mips64", nil
		case le:
			return "mipsle", nil
		}
		return "mips", nil
	}
	return "", fmt.Errorf("unknown ELF machine %v", f.Machine)
}

func (b *Builder) buildAgent(ctx context.Context, out, tmp, arch string) error {
	gobin := b.Go
	if gobin == "" {
		gobin = "go"
	}
	gobin, err := exec.LookPath(gobin)
	if err != nil {
		return fmt.Errorf("building deploy-agent: %w", err)
	}
	if b.Logf != nil {
		b.Logf("building deploy-agent from %s (linux/%s)", b.Agent.SourceDir, arch)
	}
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-buildid=", "-o", out, "./cmd/deploy-agent")
	cmd.Dir = b.Agent.SourceDir
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch, "GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local", "GOWORK=off",
		"HOME=" + filepath.Join(tmp, "home"), "TZ=UTC", "LC_ALL=C", "PATH=" + filepath.Dir(gobin) + ":/usr/bin:/bin"}
	// Where the caches are does not change what is built.
	for _, k := range []string{"GOCACHE", "GOMODCACHE"} {
		if v := b.GoEnv[k]; v != "" {
			env = append(env, k+"="+v)
		} else if v := goEnv(ctx, gobin, k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	cmd.Env = env
	var outBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &outBuf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building deploy-agent in %q: %v\n%s", b.Agent.SourceDir, err, strings.TrimSpace(outBuf.String()))
	}
	return nil
}

func goEnv(ctx context.Context, gobin, key string) string {
	cmd := exec.CommandContext(ctx, gobin, "env", key)
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
