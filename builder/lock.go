package builder

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"

	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/oci"
	"github.com/hashicorp/hcl/v2"
)

// urlCollector is a dry-run package realizer that records url and oci
// packages instead of checking their pins.
type urlCollector struct {
	dry    *modules.PackageBuilder
	urls   map[string][]*modules.Resource
	images map[string]imageUse          // by lock key
	gos    map[string]*modules.Resource // by toolchain version: one package that names it
}

// imageUse is an image some host needs for its architecture.
type imageUse struct {
	r        *modules.Resource
	ref      string
	arch     string
	insecure bool
}

func (c *urlCollector) Package(ctx context.Context, r *modules.Resource, arch string) (string, hcl.Diagnostics) {
	if g, ok := r.Block("go"); ok {
		src, err := modules.FleetPath(c.dry.FleetDir, g.String("src", ""))
		var v string
		if err == nil {
			v, err = modules.GoModToolchain(src)
		}
		switch {
		case err != nil:
			// The dry build below says what is wrong with src.
		case v != "":
			if _, seen := c.gos[v]; !seen {
				c.gos[v] = r
			}
			return c.dry.Placeholder(r.Name, "go:"+g.String("src", "")), nil
		default:
			// Unpinned by its go.mod: the dry build warns.
		}
	}
	if r.Has("url") {
		c.urls[r.String("url", "")] = append(c.urls[r.String("url", "")], r)
		return c.dry.Placeholder(r.Name, "url:"+r.String("url", "")), nil
	}
	if o, ok := r.Block("oci"); ok {
		ref := o.String("image", "")
		if _, pinned := oci.PinnedDigest(ref); !pinned {
			key := modules.ImageLockKey(ref, arch)
			if u, seen := c.images[key]; !seen || !u.insecure {
				c.images[key] = imageUse{r: r, ref: ref, arch: arch, insecure: o.Bool("insecure", false)}
			}
		}
		return c.dry.Placeholder(r.Name, "oci:"+ref+":"+arch), nil
	}
	return c.dry.Package(ctx, r, arch)
}

// UpdateLock is [UpdateLock] with b's package builder (its store,
// download cache, Go and HTTP client).
func (b *Builder) UpdateLock(ctx context.Context, f *Fleet, update bool) (*modules.Lock, hcl.Diagnostics) {
	return UpdateLock(ctx, f, b.packageBuilder(f, false), update)
}

// UpdateLock computes f's lock: every url package of every host, pinned by
// the SHA-256 of its content, and every oci package for the architectures of
// the hosts that use it, pinned by the digest its tag resolves to now.
// Inputs already locked keep their pin unless update is set; urls are
// downloaded with pb (and so land in its download cache), tags resolved
// with pb's Puller. A url whose sha256 attribute disagrees with its content
// is an error. The result is not written; see [modules.Lock.Write].
func UpdateLock(ctx context.Context, f *Fleet, pb *modules.PackageBuilder, update bool) (*modules.Lock, hcl.Diagnostics) {
	b := &Builder{}
	c := &urlCollector{dry: b.packageBuilder(f, true), urls: map[string][]*modules.Resource{}, images: map[string]imageUse{}, gos: map[string]*modules.Resource{}}
	var diags hcl.Diagnostics
	for _, h := range f.Hosts {
		_, d := f.Evaluate(ctx, h.Name, c)
		diags = append(diags, d...)
	}
	diags = dedupe(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	lock := &modules.Lock{Version: modules.LockVersion, Inputs: map[string]modules.LockedInput{}}
	urls := make([]string, 0, len(c.urls))
	for u := range c.urls {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	for _, u := range urls {
		rs := c.urls[u]
		want := ""
		for _, r := range rs {
			if r.Has("sha256") {
				h, err := modules.ParseSHA256(r.String("sha256", ""))
				if err == nil && want != "" && h != want {
					diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Conflicting sha256",
						Detail: fmt.Sprintf("Two packages download %q with different sha256 attributes.", u), Subject: r.Range("sha256")})
				}
				want = h
			}
		}
		old, locked := f.Lock.Inputs[u]
		if locked && !update && (want == "" || want == old.SHA256) {
			lock.Inputs[u] = old
			continue
		}
		got, err := pb.Hash(ctx, u, modules.PackageLimits(rs[0]))
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot fetch input",
				Detail: err.Error(), Subject: rs[0].Range("url")})
			continue
		}
		if want != "" && got != want {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Input hash mismatch",
				Detail:  fmt.Sprintf("%q has sha256 %s, but the configuration says %s.", u, got, want),
				Subject: rs[0].Range("sha256")})
			continue
		}
		lock.Inputs[u] = modules.LockedInput{Type: "url", SHA256: got}
	}
	keys := make([]string, 0, len(c.images))
	for k := range c.images {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		u := c.images[k]
		if old, locked := f.Lock.Inputs[k]; locked && !update && old.Type == modules.LockOCI {
			lock.Inputs[k] = old
			continue
		}
		d, err := pb.Puller().Resolve(ctx, u.ref, u.insecure, oci.Platform(u.arch))
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot resolve image",
				Detail: err.Error(), Subject: u.r.BlockRange("oci", "image")})
			continue
		}
		lock.Inputs[k] = modules.LockedInput{Type: modules.LockOCI, Digest: d}
	}
	diags = append(diags, lockGo(ctx, f, pb, c.gos, lock, update)...)
	return lock, diags
}

// lockGo pins, for this machine's platform, each Go toolchain that a go
// package's go.mod names: fetched from the Go module proxy and hashed as
// go.sum hashes it. Pins of those versions for other platforms are kept
// (other operators made them); pins of versions no package names any more
// are dropped.
func lockGo(ctx context.Context, f *Fleet, pb *modules.PackageBuilder, gos map[string]*modules.Resource, lock *modules.Lock, update bool) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for k, in := range f.Lock.Inputs {
		if in.Type != modules.LockGo {
			continue
		}
		if v, _, _ := strings.Cut(k, " "); gos[v] != nil {
			lock.Inputs[k] = in
		}
	}
	versions := make([]string, 0, len(gos))
	for v := range gos {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	for _, v := range versions {
		k := modules.GoToolchainLockKey(v, runtime.GOOS, runtime.GOARCH)
		if old, ok := f.Lock.Inputs[k]; ok && old.Type == modules.LockGo && !update {
			continue
		}
		_, sum, err := pb.FetchGoToolchain(ctx, v)
		if err != nil {
			r := gos[v]
			g, _ := r.Block("go")
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot fetch Go toolchain",
				Detail: fmt.Sprintf("Package %q names the toolchain %s in its go.mod: %s.", r.Name, v, err), Subject: g.Range("src")})
			continue
		}
		lock.Inputs[k] = modules.LockedInput{Type: modules.LockGo, Sum: sum}
	}
	return diags
}
