package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/internal/atomicfile"
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
	host, diags, err := f.ImageHost(sel.Names[0], o.arch)
	e.printDiags(f, diags)
	switch {
	case err != nil:
		return &exitError{code: ExitUsage, err: err}
	case diags.HasErrors():
		return configError(diags)
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
	cfg, notes, err := b.ImageConfig(res, o.service)
	var nse *builder.NoServiceError
	if errors.As(err, &nse) {
		return &exitError{code: ExitUsage, err: err}
	} else if err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintf(e.stderr, "deploy: %s\n", n)
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
		if err := atomicfile.WriteFunc(o.out, 0o644, func(w io.Writer) error { return oci.WriteArchive(w, img, tag) }); err != nil {
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
