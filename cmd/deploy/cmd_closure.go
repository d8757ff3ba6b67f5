package main

import (
	"context"

	"github.com/declarative/deploy/sbom"
)

// runClosure builds one host and lists its system closure: every store path
// with its NAR size, references first; or, with --format cyclonedx or
// spdx, the SBOM of the closure (package sbom).
func runClosure(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var asJSON bool
	var format string
	fs := newFlags(e, "closure", "DIR#HOST")
	bf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print JSON (the schema of store closure --json)")
	fs.StringVar(&format, "format", "text", "`format`: text, cyclonedx (CycloneDX 1.6 JSON) or spdx (SPDX 2.3 JSON)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	switch format {
	case "text":
	case "cyclonedx", "spdx":
		if asJSON {
			return usageErrorf("--json and --format %s: choose one", format)
		}
	default:
		return usageErrorf("unknown format %q: want text, cyclonedx or spdx", format)
	}
	res, s, err := buildOne(ctx, e, &bf, pos[0])
	if err != nil {
		return err
	}
	cl, err := s.Closure(res.SystemPath)
	if err != nil {
		return err
	}
	if format == "text" {
		return printClosure(e, cl, asJSON, res.Host)
	}
	bom, err := sbom.Describe(cl, res.Manifest, res.SystemPath, s.RealPath)
	if err != nil {
		return err
	}
	tool := sbom.Tool{Name: "deploy", Version: version}
	var out []byte
	if format == "cyclonedx" {
		out, err = bom.CycloneDX(tool)
	} else {
		out, err = bom.SPDX(tool)
	}
	if err != nil {
		return err
	}
	_, err = e.stdout.Write(append(out, '\n'))
	return err
}
