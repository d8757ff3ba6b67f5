package modules

import (
	"fmt"
	"strings"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/oci"
	"github.com/hashicorp/hcl/v2"
)

// packageKind is software built or fetched into the store while the host
// is evaluated (see [PackageBuilder]); the manifest lists every package's
// store path.
func packageKind() *Kind {
	return &Kind{Name: KindPackage, Label: "name", Doc: "software built or fetched into the store; package.NAME is its store path",
		Attrs: []Attr{
			{Name: "path", Type: str, Doc: "a directory or file inside the fleet directory, copied as is"},
			{Name: "url", Type: str, Doc: "a file to download; pinned by sha256 and deploy.lock"},
			{Name: "sha256", Type: str, Doc: "the downloaded file's SHA-256 (hex or sha256-<base64>)"},
			{Name: "executable", Type: boolean, Doc: "url: mark the file executable"},
			{Name: "unpack", Type: boolean, Doc: "url: the file is an archive (tar, tar.gz, tar.xz, tar.zst, tar.bz2, zip); the package is its contents"},
			{Name: "strip_components", Type: num, Doc: "unpack: drop this many leading path components, like tar --strip-components"},
			{Name: "max_size", Type: str, Doc: `url, oci, nix: the most bytes the package may download and unpack to (default "8GiB")`},
			{Name: "max_entries", Type: num, Doc: "unpack, oci: the most entries its archive or layers may hold (default 1000000)"},
		},
		Blocks: []Block{{Name: "go", Doc: "a reproducible go build", Attrs: []Attr{
			{Name: "src", Type: str, Required: true, Doc: "the Go module's directory inside the fleet directory"},
			{Name: "packages", Type: strList, Doc: `packages to build (default ["."]); each main package becomes bin/NAME`},
			{Name: "cgo", Type: boolean, Doc: "enable cgo (default false)"},
			{Name: "ldflags", Type: strList, Doc: "extra -ldflags"},
			{Name: "tags", Type: strList, Doc: "build tags"},
		}}, {Name: "oci", Doc: "an OCI (Docker) image, pinned by digest in deploy.lock; the package is its root filesystem and configuration", Attrs: []Attr{
			{Name: "image", Type: str, Required: true, Doc: `the image reference, "registry/repository:tag" or "...@sha256:..."`},
			{Name: "insecure", Type: boolean, Doc: "allow plain HTTP to the registry (default false)"},
		}}, {Name: "nix", Doc: "a store path from a Nix binary cache, with its closure, verified by the cache's key; needs the store directory /nix/store", Attrs: []Attr{
			{Name: "path", Type: str, Required: true, Doc: `the store path, "/nix/store/<hash>-<name>"`},
			{Name: "cache", Type: str, Required: true, Doc: `the binary cache, "https://cache.nixos.org" or file:///dir`},
			{Name: "public_key", Type: str, Required: true, Doc: `the cache's signing key, "name:base64"`},
		}}},
		Check:   checkPackage,
		Realize: realizePackages,
	}
}

func checkPackage(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	n := 0
	for _, a := range []string{"path", "url", "go", "oci", "nix"} {
		if r.Has(a) {
			n++
		}
	}
	if n != 1 {
		diags = append(diags, errAt(r.nameRange(), "Invalid package source",
			"Package %q needs exactly one source: a go { src = \"./dir\" } block, an oci { image = \"...\" } block, a nix { path = \"/nix/store/...\" } block, path = \"./dir\", or url = \"https://...\".", r.Name))
	}
	if x, ok := r.Block("nix"); ok {
		p := x.String("path", "")
		if _, _, err := closure.SplitPath("/nix/store", p); err != nil {
			diags = append(diags, errAt(r.BlockRange("nix", "path"), "Invalid Nix store path",
				"Package %q: %s; write the full path, \"/nix/store/<hash>-<name>\".", r.Name, err))
		}
		if u := x.String("cache", ""); !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "file://") {
			diags = append(diags, errAt(r.BlockRange("nix", "cache"), "Invalid Nix cache",
				"Package %q: cache = %q: want https://, http:// or file:// (a binary cache such as https://cache.nixos.org).", r.Name, u))
		}
		if _, err := cache.ParsePublicKey(x.String("public_key", "")); err != nil {
			diags = append(diags, errAt(r.BlockRange("nix", "public_key"), "Invalid Nix cache key",
				"Package %q: %s; use the cache's key as Nix's trusted-public-keys writes it (cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=).", r.Name, err))
		}
	}
	if o, ok := r.Block("oci"); ok {
		if _, err := oci.ParseReference(o.String("image", ""), false); err != nil {
			diags = append(diags, errAt(r.BlockRange("oci", "image"), "Invalid image",
				"Package %q: %s; write it like \"registry.example.com/library/nginx:1.27\".", r.Name, err))
		}
	}
	if r.Has("max_size") {
		if n, err := limits.ParseSize(r.String("max_size", "")); err != nil || n < 1024 {
			diags = append(diags, errAt(r.Range("max_size"), "Invalid max_size", "max_size = %q: want a size of at least 1KiB, such as \"16GiB\".", r.String("max_size", "")))
		}
	}
	if r.Has("max_entries") {
		if n, _ := r.Int("max_entries"); n < 1 {
			diags = append(diags, errAt(r.Range("max_entries"), "Invalid max_entries", "max_entries = %d: want a positive number of entries.", n))
		}
	}
	if r.Has("sha256") && !r.Has("url") {
		diags = append(diags, errAt(r.Range("sha256"), "Unexpected sha256", "sha256 pins a url; package %q has no url.", r.Name))
	}
	if r.Has("executable") && !r.Has("url") {
		diags = append(diags, errAt(r.Range("executable"), "Unexpected executable", "executable applies to url packages; package %q has no url.", r.Name))
	}
	if r.Has("unpack") && !r.Has("url") {
		diags = append(diags, errAt(r.Range("unpack"), "Unexpected unpack", "unpack applies to url packages; package %q has no url.", r.Name))
	}
	if r.Bool("unpack", false) && r.Bool("executable", false) {
		diags = append(diags, errAt(r.Range("executable"), "Unexpected executable",
			"Package %q unpacks an archive, whose files keep their own executable bits; remove executable.", r.Name))
	}
	if r.Has("strip_components") {
		n, _ := r.Int("strip_components")
		switch {
		case !r.Bool("unpack", false):
			diags = append(diags, errAt(r.Range("strip_components"), "Unexpected strip_components",
				"strip_components applies when a package unpacks an archive; set unpack = true in package %q.", r.Name))
		case n < 0 || n > 32:
			diags = append(diags, errAt(r.Range("strip_components"), "Invalid strip_components",
				"strip_components = %d: want a number of leading path components between 0 and 32.", n))
		}
	}
	if r.Has("url") {
		u := r.String("url", "")
		if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			diags = append(diags, errAt(r.Range("url"), "Invalid url", "The url %q must start with https:// or http://.", u))
		}
		if r.Has("sha256") {
			if _, err := ParseSHA256(r.String("sha256", "")); err != nil {
				diags = append(diags, errAt(r.Range("sha256"), "Invalid sha256", "%s.", err))
			}
		}
	}
	return diags
}

// realizePackages lists the host's packages, which evaluation has already
// built (their store paths are in [Config.Packages]).
func realizePackages(c *Realization, _ []*Resource) {
	for name, p := range c.Config.Packages {
		c.Manifest.Packages = append(c.Manifest.Packages, manifest.Package{Name: name, Path: p})
	}
}

// PackageLimits returns the limits package r sets with max_size and
// max_entries (zero for the defaults), named in errors as its settings.
func PackageLimits(r *Resource) oci.Limits {
	lim := oci.Limits{Settings: fmt.Sprintf("in package %q", r.Name)}
	lim.MaxBytes, _ = limits.ParseSize(r.String("max_size", "0"))
	if n, ok := r.Int("max_entries"); ok && n > 0 {
		lim.MaxEntries = int64(n)
	}
	return lim
}
