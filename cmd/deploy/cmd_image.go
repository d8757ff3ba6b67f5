package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/oci"
)

// imageOptions are the flags of deploy image.
type imageOptions struct {
	build    buildFlags
	out      string
	push     string
	insecure bool
	tag      string
	service  string
	arch     string
}

// runImage builds the system closure of one host, or of one role alone,
// and writes it as an OCI image: one layer per store path, in closure
// order, the same bytes for the same closure. It prints the image digest.
func runImage(ctx context.Context, e *env, args []string) error {
	var o imageOptions
	fs := newFlags(e, "image", "DIR#HOST-or-ROLE (-o FILE.tar | --push REF)")
	o.build.register(fs)
	fs.StringVar(&o.out, "o", "", "write the image to `FILE` (a tar that docker load, podman load and OCI tools read)")
	fs.StringVar(&o.push, "push", "", "push the image to `REF` (registry/repository:tag), with ~/.docker/config.json's credentials")
	fs.BoolVar(&o.insecure, "insecure", false, "allow plain HTTP for --push")
	fs.StringVar(&o.tag, "tag", "", "the image's `name:tag` inside FILE (default: NAME:latest)")
	fs.StringVar(&o.service, "service", "", "the `service` whose command the image runs (default: the only service, if there is one)")
	fs.StringVar(&o.arch, "arch", "", "the `GOARCH` of a role's image (default amd64; a host's image has the host's)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if o.out == "" && o.push == "" {
		return usageErrorf("deploy image needs -o FILE, --push REF or both")
	}
	return o.run(ctx, e, pos[0])
}

func (o *imageOptions) run(ctx context.Context, e *env, selector string) error {
	sel, err := builder.ParseSelector(selector)
	if err != nil {
		return &exitError{code: ExitUsage, err: err}
	}
	if len(sel.Names) != 1 {
		return usageErrorf("%q: name one host or role (DIR#NAME)", selector)
	}
	b, err := o.build.builder(e)
	if err != nil {
		return err
	}
	f, diags := builder.Load(sel.Dir)
	if diags.HasErrors() {
		e.printDiags(f, diags)
		return configError(diags)
	}
	name := sel.Names[0]
	var host *builder.Host
	if _, isRole := f.Roles[name]; isRole {
		if _, isHost := f.Host(name); !isHost {
			host, diags = f.RoleHost(name, o.arch)
		}
	}
	if host == nil && !diags.HasErrors() {
		var hosts []*builder.Host
		hosts, diags = f.Select([]string{name})
		if !diags.HasErrors() && len(hosts) != 1 {
			return usageErrorf("%q selects %d hosts; name one host or role", selector, len(hosts))
		}
		if len(hosts) == 1 {
			host = hosts[0]
		}
	}
	if diags.HasErrors() {
		e.printDiags(f, diags)
		return configError(diags)
	}
	if o.arch != "" && o.arch != host.Arch {
		return usageErrorf("--arch %s: host %s is %s; --arch is for a role's image", o.arch, host.Name, host.Arch)
	}
	res, diags := b.Build(ctx, f, host.Name)
	e.printDiags(f, diags)
	if diags.HasErrors() {
		return configError(diags)
	}
	cl, err := b.Store.Closure(res.SystemPath)
	if err != nil {
		return err
	}
	cfg, err := o.config(e, b, res, host)
	if err != nil {
		return err
	}
	img, err := oci.ClosureImage(ctx, b.Store, cl, cfg)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	if o.out != "" {
		tag := o.tag
		if tag == "" {
			tag = host.Name + ":latest"
		}
		if err := writeImageFile(o.out, func(w *os.File) error { return oci.WriteArchive(w, img, tag) }); err != nil {
			return fmt.Errorf("writing %s: %w", o.out, err)
		}
		fmt.Fprintf(e.stderr, "deploy: wrote %s: %d layers, one per store path of %s\n", o.out, len(cl), res.SystemPath)
	}
	if o.push != "" {
		if _, err := oci.Push(ctx, o.push, img, o.insecure, nil); err != nil {
			return &exitError{code: ExitUnreachable, err: err}
		}
		fmt.Fprintf(e.stderr, "deploy: pushed %s@%s\n", o.push, digest)
	}
	fmt.Fprintln(e.stdout, digest)
	return nil
}

// config is what the image runs: the chosen service's command, or nothing.
func (o *imageOptions) config(e *env, b *builder.Builder, res *builder.Result, host *builder.Host) (oci.ImageConfig, error) {
	cfg := oci.ImageConfig{Arch: host.Arch, Labels: map[string]string{
		"org.opencontainers.image.title": host.Name,
		"dev.deploy.system":              res.SystemPath,
	}}
	var services []manifest.Unit
	for _, u := range res.Manifest.Units {
		if strings.HasSuffix(u.Name, ".service") && (o.service == "" || u.Name == o.service+".service") {
			services = append(services, u)
		}
	}
	switch {
	case o.service != "" && len(services) == 0:
		return cfg, usageErrorf("%s has no service %q", host.Name, o.service)
	case len(services) != 1:
		fmt.Fprintf(e.stderr, "deploy: %s has %d services; the image has no entrypoint (choose one with --service NAME)\n", host.Name, len(services))
		return cfg, nil
	}
	unit, err := os.ReadFile(b.Store.RealPath(services[0].Source))
	if err != nil {
		return cfg, err
	}
	run, notes, err := oci.ServiceConfig(string(unit))
	if err != nil {
		return cfg, &exitError{code: ExitConfig, err: fmt.Errorf("service %s: %w", services[0].Name, err)}
	}
	for _, n := range notes {
		fmt.Fprintf(e.stderr, "deploy: service %s: %s\n", services[0].Name, n)
	}
	cfg.Entrypoint, cfg.Env, cfg.WorkingDir = run.Entrypoint, run.Env, run.WorkingDir
	cfg.Labels["dev.deploy.service"] = services[0].Name
	return cfg, nil
}

// writeImageFile writes path through a temporary file beside it, renamed
// into place only when complete.
func writeImageFile(path string, write func(*os.File) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
