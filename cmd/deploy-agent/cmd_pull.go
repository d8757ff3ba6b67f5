package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/pull"
)

// pullArgs is the command line of pull.
type pullArgs struct {
	config   string
	stateDir string // "": the configuration's
	runDir   string
	status   bool
}

func parsePull(args []string, stderr io.Writer) (*pullArgs, error) {
	fs := newFlagSet(agentapi.VerbPull, stderr)
	a := &pullArgs{}
	fs.StringVar(&a.config, "config", agentapi.PullConfigFile, "the pull configuration `file` the generation installed")
	fs.StringVar(&a.stateDir, "state-dir", "", "the agent's state `directory` (default: the configuration's)")
	fs.StringVar(&a.runDir, "run-dir", agentapi.DefaultRunDir, "the agent's runtime `directory`")
	fs.BoolVar(&a.status, "status", false, "print the host's last status document and exit")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if fs.NArg() != 0 {
		return nil, usageErr(errors.New("pull: unexpected arguments"))
	}
	return a, nil
}

// runPull runs one poll of the host's channel (see package pull): the pull
// timer runs it every interval. With --status it prints the host's last
// status document instead. It exits 0 when the poll did its job, whatever
// the release came to (refusals and rollbacks are reported to the
// channel), and 1 when the poll could not (the channel or the cache
// unreachable).
func runPull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parsePull(args, stderr)
	if err != nil {
		return err
	}
	cfg, err := pull.ReadConfig(a.config)
	if err != nil {
		return err
	}
	stateDir := a.stateDir
	if stateDir == "" {
		stateDir = cfg.StateDir
	}
	if a.status {
		st, err := pull.ReadStatus(stateDir, cfg)
		if err != nil {
			return err
		}
		data, _ := json.MarshalIndent(st, "", "  ")
		fmt.Fprintf(stdout, "%s\n", data)
		return nil
	}
	agent := &pull.Agent{Config: cfg, Layout: activation.Layout{StateDir: stateDir, RunDir: a.runDir}, Version: version, Logf: prefixed(stderr)}
	res, err := agent.Poll(ctx)
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	if (res.Action == "none" || res.Action == "no-release") && (res.Reported || res.Status == nil || cfg.StatusURL == "") {
		// Nothing happened: an idle poll leaves the journal alone.
		return nil
	}
	line := fmt.Sprintf("deploy-agent: pull %s: %s", cfg.Channel, res.Action)
	if res.Serial != 0 {
		line += fmt.Sprintf(" (serial %d)", res.Serial)
	}
	if res.Status != nil && !res.Reported && cfg.StatusURL != "" {
		line += "; the status is not reported yet"
	}
	fmt.Fprintln(stderr, line)
	return nil
}
