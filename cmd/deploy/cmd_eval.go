package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/modules"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// evalJSON is the --json form of an evaluated host (stable schema).
type evalJSON struct {
	Host      hostJSON          `json:"host"`
	Packages  map[string]string `json:"packages"`
	Resources []resourceJSON    `json:"resources"`
}

type hostJSON struct {
	Name      string            `json:"name"`
	Address   string            `json:"address"`
	SSHUser   string            `json:"ssh_user"`
	Port      int               `json:"port"`
	HostKey   string            `json:"host_key,omitempty"`
	Transport string            `json:"transport"`
	Sudo      bool              `json:"sudo"`
	Arch      string            `json:"arch"`
	Tags      []string          `json:"tags"`
	Meta      map[string]string `json:"meta"`
}

type resourceJSON struct {
	Kind       string                     `json:"kind"`
	Name       string                     `json:"name"`
	Attributes map[string]json.RawMessage `json:"attributes"`
	DefinedAt  []string                   `json:"defined_at"`
}

func runEval(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var asJSON bool
	fs := newFlags(e, "eval", "DIR#NAME...")
	bf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	s := &fleet.Session{Targets: pos, Diagnostics: e.printDiags}
	if err := s.Open(); err != nil {
		return err
	}
	f := s.Fleet
	var out []evalJSON
	for _, h := range s.Selected {
		cfg, diags := b.Evaluate(ctx, f, h.Name)
		e.printDiags(f, diags)
		if diags.HasErrors() {
			return configError(diags)
		}
		ev, err := toEvalJSON(h, cfg)
		if err != nil {
			return err
		}
		out = append(out, ev)
	}
	if asJSON {
		return writeJSON(e.stdout, out)
	}
	for _, ev := range out {
		fmt.Fprintf(e.stdout, "host %s (%s)\n", ev.Host.Name, ev.Host.Address)
		for _, r := range ev.Resources {
			fmt.Fprintf(e.stdout, "  %s %q\t%s\n", r.Kind, r.Name, r.DefinedAt[0])
		}
	}
	return nil
}

func toEvalJSON(h *builder.Host, cfg *modules.Config) (evalJSON, error) {
	tags := h.Tags
	if tags == nil {
		tags = []string{}
	}
	ev := evalJSON{
		Host: hostJSON{Name: h.Name, Address: h.Address, SSHUser: h.SSHUser, Port: h.Port, HostKey: h.HostKey,
			Transport: h.Transport, Sudo: h.Sudo, Arch: h.Arch, Tags: tags, Meta: h.Meta},
		Packages:  cfg.Packages,
		Resources: []resourceJSON{},
	}
	for _, r := range cfg.Resources {
		rj := resourceJSON{Kind: r.Kind.Name, Name: r.Name, Attributes: map[string]json.RawMessage{}}
		names := make([]string, 0, len(r.Attrs))
		for n := range r.Attrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			v := r.Attrs[n].V
			data, err := ctyjson.Marshal(v, v.Type())
			if err != nil {
				return evalJSON{}, fmt.Errorf("encoding %s attribute %q: %w", r.Key(), n, err)
			}
			rj.Attributes[n] = data
		}
		for _, d := range r.Defs {
			rj.DefinedAt = append(rj.DefinedAt, fmt.Sprintf("%s:%d:%d", d.Filename, d.Start.Line, d.Start.Column))
		}
		ev.Resources = append(ev.Resources, rj)
	}
	return ev, nil
}
