package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/deploy"
	"github.com/declarative/deploy/mesh"
)

// hostFlags are the flags of commands that act on hosts' generations.
type hostFlags struct {
	ssh         fleetSSHFlags
	asJSON      bool
	remoteState string
}

func (hf *hostFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&hf.asJSON, "json", false, "print JSON on stdout")
	fs.StringVar(&hf.remoteState, "remote-state-dir", deploy.DefaultStateDir, "the agent's state `directory` on targets")
}

// parseHosts parses a host command's flags (the common ones, plus what
// extra registers) and loads the selected hosts.
func (hf *hostFlags) parseHosts(e *env, name, argsUsage string, args []string, extra func(*flag.FlagSet)) ([]*builder.Host, error) {
	fs := newFlags(e, name, argsUsage)
	hf.ssh.register(fs)
	hf.register(fs)
	if extra != nil {
		extra(fs)
	}
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return nil, err
	}
	_, hosts, err := loadSelected(e, targets)
	return hosts, err
}

// eachHost runs fn for every selected host in parallel (each with its own
// connection) and reports unreachable hosts (exit 4) after all are done.
func eachHost(ctx context.Context, e *env, cfg *mesh.Config, hosts []*builder.Host, fn func(h *builder.Host, c *mesh.Client) error) error {
	var mu sync.Mutex
	var unreachable, failed []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := cfg.Connect(ctx, meshTarget(h))
			if err == nil {
				defer c.Close()
				err = fn(h, c)
			}
			if err != nil {
				mu.Lock()
				defer mu.Unlock()
				fmt.Fprintf(e.stderr, "deploy: %s: %v\n", h.Name, err)
				var ue *mesh.UnreachableError
				var rb *deploy.RolledBackError
				switch {
				case errors.As(err, &ue):
					unreachable = append(unreachable, h.Name)
				case errors.As(err, &rb):
					failed = append(failed, h.Name)
				default:
					var hke *mesh.HostKeyError
					var uhe *mesh.UnknownHostError
					if errors.As(err, &hke) || errors.As(err, &uhe) {
						unreachable = append(unreachable, h.Name)
					} else {
						failed = append(failed, h.Name)
					}
				}
			}
		}()
	}
	wg.Wait()
	switch {
	case len(failed) > 0:
		return &exitError{code: ExitRolledBack, err: fmt.Errorf("failed on %s", strings.Join(failed, ", "))}
	case len(unreachable) > 0:
		return &exitError{code: ExitUnreachable, err: fmt.Errorf("unreachable: %s", strings.Join(unreachable, ", "))}
	}
	return nil
}

func runGenerations(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	hosts, err := hf.parseHosts(e, "generations", "TARGET...", args, nil)
	if err != nil {
		return err
	}
	all := map[string][]deploy.Generation{}
	var mu sync.Mutex
	err = eachHost(ctx, e, hf.ssh.config(e), hosts, func(h *builder.Host, c *mesh.Client) error {
		gens, err := deploy.Generations(ctx, c, hf.remoteState)
		mu.Lock()
		all[h.Name] = gens
		mu.Unlock()
		return err
	})
	if hf.asJSON {
		if werr := writeJSON(e.stdout, all); werr != nil {
			return werr
		}
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tGEN\tTIME\tOPERATOR\tCOMMIT\tSTATE\tMESSAGE")
	for _, h := range hosts {
		for _, g := range all[h.Name] {
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
			rev := g.GitRev
			if len(rev) > 12 {
				rev = rev[:12]
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", h.Name, g.Number, g.Time.Local().Format(time.DateTime), g.Operator, rev, strings.Join(marks, ","), g.Message)
		}
	}
	tw.Flush()
	return err
}

func runStatus(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	hosts, err := hf.parseHosts(e, "status", "TARGET...", args, nil)
	if err != nil {
		return err
	}
	all := map[string]*deploy.HostStatus{}
	var mu sync.Mutex
	err = eachHost(ctx, e, hf.ssh.config(e), hosts, func(h *builder.Host, c *mesh.Client) error {
		st, err := deploy.Status(ctx, c, hf.remoteState)
		mu.Lock()
		all[h.Name] = st
		mu.Unlock()
		return err
	})
	if hf.asJSON {
		raw := map[string]any{}
		for name, st := range all {
			if st != nil {
				raw[name] = st.Raw
			}
		}
		if werr := writeJSON(e.stdout, raw); werr != nil {
			return werr
		}
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tCURRENT\tBOOT\tPENDING\tFAILED\tCONSISTENT")
	for _, h := range hosts {
		st := all[h.Name]
		if st == nil {
			fmt.Fprintf(tw, "%s\t?\t?\t?\t?\tunreachable\n", h.Name)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%v\t%v\n", h.Name, st.Current, st.Boot, st.Pending, st.Failed, st.Consistent)
	}
	tw.Flush()
	return err
}

func runRollback(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var to int
	var toCommit string
	var confirm time.Duration
	hosts, err := hf.parseHosts(e, "rollback", "TARGET... [--to N | --to-commit SHA]", args, func(fs *flag.FlagSet) {
		fs.IntVar(&to, "to", 0, "return to generation `N` (default: the one before the current that did not fail)")
		fs.StringVar(&toCommit, "to-commit", "", "return each host to its newest generation deployed from fleet commit `SHA` (a prefix is enough)")
		fs.DurationVar(&confirm, "confirm-timeout", 30*time.Second, "roll forward again unless confirmed within this `duration`")
	})
	if err != nil {
		return err
	}
	if to > 0 && toCommit != "" {
		return usageErrorf("rollback: --to and --to-commit exclude each other")
	}
	return rollbackHosts(ctx, e, hf.ssh.config(e), hosts, to, toCommit, confirm, hf.remoteState)
}

// rollbackHosts returns each host to the chosen generation (see
// pickGeneration) under the same confirmation as an activation.
func rollbackHosts(ctx context.Context, e *env, cfg *mesh.Config, hosts []*builder.Host, to int, toCommit string, confirm time.Duration, stateDir string) error {
	var mu sync.Mutex
	return eachHost(ctx, e, cfg, hosts, func(h *builder.Host, c *mesh.Client) error {
		gens, err := deploy.Generations(ctx, c, stateDir)
		if err != nil {
			return err
		}
		g, err := pickGeneration(gens, to, toCommit)
		if err != nil {
			return err
		}
		logf := func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(e.stderr, "deploy: %s: "+format+"\n", append([]any{h.Name}, args...)...)
		}
		if g.GitRev != "" {
			logf("rolling back to generation %d (commit %s)", g.Number, g.GitRev)
		} else {
			logf("rolling back to generation %d", g.Number)
		}
		res, err := deploy.Activate(ctx, cfg, meshTarget(h), g.System, deploy.ActivateOptions{
			Client: c, RollbackTo: g.Number, ConfirmTimeout: confirm, StateDir: stateDir, Logf: logf,
		})
		if err != nil {
			return err
		}
		mu.Lock()
		fmt.Fprintf(e.stdout, "%s\tgeneration %d\t%s\n", h.Name, res.Generation, g.System)
		mu.Unlock()
		return nil
	})
}

// pickGeneration chooses the generation to return to: --to N exactly;
// --to-commit the newest generation from that commit that did not fail;
// by default the newest generation before the current that did not fail.
func pickGeneration(gens []deploy.Generation, to int, toCommit string) (*deploy.Generation, error) {
	var cur int
	for _, g := range gens {
		if g.Current {
			cur = g.Number
		}
	}
	var pick *deploy.Generation
	for i := range gens {
		g := &gens[i]
		var ok bool
		switch {
		case to > 0:
			ok = g.Number == to
		case toCommit != "":
			ok = !g.Failed && strings.HasPrefix(g.GitRev, toCommit)
		default:
			ok = !g.Failed && g.Number < cur
		}
		if ok && (pick == nil || g.Number > pick.Number) {
			pick = g
		}
	}
	switch {
	case pick != nil:
		return pick, nil
	case to > 0:
		return nil, fmt.Errorf("no generation %d", to)
	case toCommit != "":
		return nil, fmt.Errorf("no generation deployed from commit %q", toCommit)
	}
	return nil, errors.New("no earlier generation that did not fail")
}

func runGC(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var keep int
	hosts, err := hf.parseHosts(e, "gc", "TARGET... --keep K", args, func(fs *flag.FlagSet) {
		fs.IntVar(&keep, "keep", 5, "keep the newest `K` generations (and always the current and boot ones)")
	})
	if err != nil {
		return err
	}
	var mu sync.Mutex
	return eachHost(ctx, e, hf.ssh.config(e), hosts, func(h *builder.Host, c *mesh.Client) error {
		out, err := c.Output(ctx, []string{"/run/deploy/current-system/agent/bin/deploy-agent", "gc", "--keep", fmt.Sprint(keep), "--state-dir", hf.remoteState})
		mu.Lock()
		defer mu.Unlock()
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if l != "" {
				fmt.Fprintf(e.stdout, "%s\t%s\n", h.Name, l)
			}
		}
		return err
	})
}
