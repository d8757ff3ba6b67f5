package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/pull"
)

// runPull runs one poll of the host's channel (see package pull): the pull
// timer runs it every interval. With --status it prints the host's last
// status document instead. It exits 0 when the poll did its job, whatever
// the release came to (refusals and rollbacks are reported to the
// channel), and 1 when the poll could not (the channel or the cache
// unreachable).
func runPull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(agentapi.VerbPull, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", agentapi.PullConfigFile, "the pull configuration `file` the generation installed")
	stateDir := fs.String("state-dir", "", "the agent's state `directory` (default: the configuration's)")
	runDir := fs.String("run-dir", agentapi.DefaultRunDir, "the agent's runtime `directory`")
	status := fs.Bool("status", false, "print the host's last status document and exit")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() != 0 {
		return usageErr(errors.New("pull: unexpected arguments"))
	}
	cfg, err := pull.ReadConfig(*config)
	if err != nil {
		return err
	}
	if *stateDir == "" {
		*stateDir = cfg.StateDir
	}
	if *status {
		st, err := pull.ReadStatus(*stateDir, cfg)
		if err != nil {
			return err
		}
		data, _ := json.MarshalIndent(st, "", "  ")
		fmt.Fprintf(stdout, "%s\n", data)
		return nil
	}
	a := &pull.Agent{Config: cfg, Layout: activation.Layout{StateDir: *stateDir, RunDir: *runDir}, Version: version, Logf: prefixed(stderr)}
	res, err := a.Poll(ctx)
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
