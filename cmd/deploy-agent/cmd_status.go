package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
)

// runStatus prints the current and boot generations, a pending
// activation and failed generations.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbStatus, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	drift := fs.Bool("drift", false, "also compare the machine with its current generation (store paths checked for presence)")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	s, err := layout().Status()
	if err != nil {
		return err
	}
	if *drift {
		if s.Drift, err = layout().Drift(ctx, activation.DriftOptions{}); err != nil {
			return err
		}
	}
	if *asJSON {
		return writeJSON(stdout, s)
	}
	fmt.Fprintf(stdout, "current: %s\nboot:    %s\n", genName(s.Current, s.CurrentSystem), genName(s.Boot, s.BootSystem))
	if s.Pending > 0 {
		fmt.Fprintf(stdout, "pending: generation %d (%s)\n", s.Pending, s.Activation.Phase)
	}
	if a := s.Activation; a != nil && s.Pending == 0 {
		fmt.Fprintf(stdout, "last activation: %s, generation %d: %s %s\n", a.ID, a.Generation, a.Phase, a.Message)
	}
	if len(s.Failed) > 0 {
		fmt.Fprintf(stdout, "failed:  %v\n", s.Failed)
	}
	if s.RebootRequired {
		fmt.Fprintf(stdout, "reboot required: %s\n", s.RebootReason)
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

// runGenerations lists the generations.
func runGenerations(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbGenerations, flag.ContinueOnError)
	fs.SetOutput(stderr)
	layout := layoutFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	gens, err := layout().Generations()
	if err != nil {
		return err
	}
	if gens == nil {
		gens = []*activation.Generation{}
	}
	if *asJSON {
		return writeJSON(stdout, &agentapi.Generations{V: agentapi.Version, Generations: gens})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GEN\tTIME\tOPERATOR\tGIT\tMARKS\tMESSAGE")
	for _, g := range gens {
		var marks []string
		if g.Current {
			marks = append(marks, "current")
		}
		if g.Boot {
			marks = append(marks, "boot")
		}
		if g.Failed {
			marks = append(marks, "failed")
		}
		msg := g.Message
		if g.Failed {
			msg = strings.TrimSpace(msg + " [" + g.FailedReason + "]")
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", g.Number, g.Time.Format(time.DateTime), g.Operator, g.GitRev, strings.Join(marks, ","), msg)
	}
	return tw.Flush()
}
