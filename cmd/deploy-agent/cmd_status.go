package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// statusArgs is the command line of status (agentapi.StatusCmd).
type statusArgs struct {
	layout activation.Layout
	json   bool
	drift  bool
}

func parseStatus(args []string, stderr io.Writer) (*statusArgs, error) {
	fs := newFlagSet(agentapi.VerbStatus, stderr)
	layout := layoutFlags(fs)
	a := &statusArgs{}
	fs.BoolVar(&a.json, "json", false, "print JSON")
	fs.BoolVar(&a.drift, "drift", false, "also compare the machine with its current generation (store paths checked for presence)")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	a.layout = layout()
	return a, nil
}

// runStatus prints the current and boot generations, a pending
// activation and failed generations.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseStatus(args, stderr)
	if err != nil {
		return err
	}
	s, err := a.layout.Status()
	if err != nil {
		return err
	}
	if a.drift {
		if s.Drift, err = a.layout.Drift(ctx, activation.DriftOptions{}); err != nil {
			return err
		}
	}
	if a.json {
		return writeJSON(stdout, s)
	}
	fmt.Fprintf(stdout, "current: %s\nboot:    %s\n", genName(s.Current, s.CurrentSystem), genName(s.Boot, s.BootSystem))
	if s.Pending > 0 {
		fmt.Fprintf(stdout, "pending: generation %d (%s)\n", s.Pending, s.Activation.Phase)
	}
	if act := s.Activation; act != nil && s.Pending == 0 {
		fmt.Fprintf(stdout, "last activation: %s, generation %d: %s %s\n", act.ID, act.Generation, act.Phase, act.Message)
	}
	if len(s.Failed) > 0 {
		fmt.Fprintf(stdout, "failed:  %v\n", s.Failed)
	}
	if s.RebootRequired {
		fmt.Fprintf(stdout, "reboot required: %s\n", s.RebootReason)
	}
	if len(s.KeptSecrets) > 0 {
		fmt.Fprintf(stdout, "kept secrets: %s (the generation's own versions are revoked; the versions that ran before were kept)\n", strings.Join(s.KeptSecrets, ", "))
	}
	if d := s.Drift; d != nil {
		for _, it := range d.Items {
			fmt.Fprintf(stdout, "drift: %s\n", it)
		}
	}
	if !s.Consistent {
		fmt.Fprintln(stdout, "warning: an application is incomplete (in progress, or interrupted: a rollback or reboot repairs it)")
	}
	return nil
}

func genName(n int, system string) string {
	if n == 0 {
		return "none"
	}
	return fmt.Sprintf("generation %d (%s)", n, system)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// generationsArgs is the command line of generations
// (agentapi.GenerationsCmd).
type generationsArgs struct {
	layout activation.Layout
	json   bool
}

func parseGenerations(args []string, stderr io.Writer) (*generationsArgs, error) {
	fs := newFlagSet(agentapi.VerbGenerations, stderr)
	layout := layoutFlags(fs)
	a := &generationsArgs{}
	fs.BoolVar(&a.json, "json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	a.layout = layout()
	return a, nil
}

// runGenerations lists the generations.
func runGenerations(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseGenerations(args, stderr)
	if err != nil {
		return err
	}
	gens, err := a.layout.Generations()
	if err != nil {
		return err
	}
	if gens == nil {
		gens = []*activation.Generation{}
	}
	if a.json {
		return writeJSON(stdout, &agentapi.Generations{V: agentapi.Version, Generations: gens})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GEN\tTIME\tOPERATOR\tGIT\tMARKS\tMESSAGE")
	for _, g := range gens {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", g.Number, g.Time.Format(time.DateTime), g.Operator, g.GitRev, strings.Join(g.Marks(), ","), g.Note())
	}
	return tw.Flush()
}
