package main

import (
	"io"
	"testing"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/google/go-cmp/cmp"
)

// parsers are the agent's command-line parsers by verb, for the tests.
var parsers = map[string]func(args []string) (any, error){
	agentapi.VerbVerify:      parseAny(parseVerify),
	agentapi.VerbReceive:     parseAny(parseReceive),
	agentapi.VerbInstallSelf: parseAny(parseInstallSelf),
	agentapi.VerbActivate:    parseAny(parseActivate),
	agentapi.VerbConfirm:     parseAny(parseConfirm),
	agentapi.VerbRollback:    parseAny(parseRollback),
	agentapi.VerbStatus:      parseAny(parseStatus),
	agentapi.VerbGenerations: parseAny(parseGenerations),
	agentapi.VerbGC:          parseAny(parseGC),
	agentapi.VerbBoot:        parseAny(parseBoot),
	agentapi.VerbApply:       parseAny(parseApply),
	agentapi.VerbRunLock:     parseAny(parseRunLock),
	agentapi.VerbPull:        parseAny(parsePull),
	agentapi.VerbDrift:       parseAny(parseDrift),
	agentapi.VerbHealth:      parseAny(parseHealth),
	agentapi.VerbRunLease:    parseAny(parseRunLease),
	agentapi.VerbBootGuard: func(args []string) (any, error) {
		return parseBootTrial(agentapi.VerbBootGuard, args, io.Discard)
	},
	agentapi.VerbBootConfirm: func(args []string) (any, error) {
		return parseBootTrial(agentapi.VerbBootConfirm, args, io.Discard)
	},
	agentapi.VerbActivateWorker: func(args []string) (any, error) {
		return parseID(agentapi.VerbActivateWorker, args, io.Discard)
	},
	agentapi.VerbWatchdog: func(args []string) (any, error) {
		return parseID(agentapi.VerbWatchdog, args, io.Discard)
	},
}

func parseAny[T any](parse func([]string, io.Writer) (*T, error)) func([]string) (any, error) {
	return func(args []string) (any, error) { return parse(args, io.Discard) }
}

// TestCommandLines feeds every command line the operator and pull mode
// build (agentapi's command types) through the agent's parser of its
// verb, and checks that every field came through: the operator's and the
// agent's views of the contract agree.
func TestCommandLines(t *testing.T) {
	const (
		state  = "/srv/deploy state"
		run    = "/srv/deploy run"
		system = "/srv/deploy state/store/0123456789abcdfghijklmnpqrsvwxyz-system-web1"
	)
	meta := map[string]string{"operator": "alice", "git_rev": "0a1b2c3", "message": "fix: a=b, and more"}
	defaults := activation.Layout{StateDir: agentapi.DefaultStateDir, RunDir: agentapi.DefaultRunDir}
	stateOnly := activation.Layout{StateDir: state, RunDir: agentapi.DefaultRunDir}
	both := activation.Layout{StateDir: state, RunDir: run}
	tests := []struct {
		name string
		args []string
		want any
	}{
		{"activate", agentapi.ActivateCmd{StateDir: state, RunDir: run, Mode: activation.ModeTest, ConfirmTimeout: 45 * time.Second,
			Meta: meta, Force: true, System: system}.Args(),
			&activateArgs{layout: both, mode: activation.ModeTest, confirmTimeout: 45 * time.Second, meta: meta, force: true, system: system}},
		{"activate boot trial", agentapi.ActivateCmd{StateDir: state, RunDir: run, Mode: activation.ModeBoot, ConfirmTimeout: 45 * time.Second,
			BootAttempts: 2, BootTimeout: 90 * time.Second, System: system}.Args(),
			&activateArgs{layout: both, mode: activation.ModeBoot, confirmTimeout: 45 * time.Second, meta: map[string]string{}, bootAttempts: 2, bootTimeout: 90 * time.Second, system: system}},
		{"activate defaults", agentapi.ActivateCmd{System: system}.Args(),
			&activateArgs{layout: defaults, mode: activation.ModeSwitch, meta: map[string]string{}, system: system}},
		{"activate pull", agentapi.ActivateCmd{StateDir: state, RunDir: run, Mode: activation.ModeDryActivate, ConfirmTimeout: 0,
			Meta: map[string]string{"channel": "prod", "serial": "17"}, System: system}.Args(),
			&activateArgs{layout: both, mode: activation.ModeDryActivate, meta: map[string]string{"channel": "prod", "serial": "17"}, system: system}},
		{"rollback", agentapi.RollbackCmd{StateDir: state, RunDir: run, To: 7, ConfirmTimeout: 2 * time.Minute, Meta: meta}.Args(),
			&rollbackArgs{layout: both, to: 7, confirmTimeout: 2 * time.Minute, meta: meta}},
		{"rollback defaults", agentapi.RollbackCmd{}.Args(),
			&rollbackArgs{layout: defaults, meta: map[string]string{}}},
		{"confirm", agentapi.ConfirmCmd{StateDir: state, Generation: 12}.Args(),
			&confirmArgs{layout: stateOnly, wait: 10 * time.Minute, generation: 12}},
		{"confirm --reject", agentapi.ConfirmCmd{StateDir: state, Generation: 12, Reject: "error-ratio"}.Args(),
			&confirmArgs{layout: stateOnly, wait: 10 * time.Minute, generation: 12, reject: "error-ratio"}},
		{"run-lease", agentapi.RunLeaseCmd{StateDir: state, Run: "r1", For: 7 * time.Minute}.Args(),
			&runLeaseArgs{layout: stateOnly, run: "r1", d: 7 * time.Minute}},
		{"run-lock", agentapi.RunLockCmd{StateDir: state, Wait: 90 * time.Second, Lease: 3 * time.Minute}.Args(),
			&runLockArgs{layout: stateOnly, wait: 90 * time.Second, lease: 3 * time.Minute}},
		{"status", agentapi.StatusCmd{StateDir: state}.Args(),
			&statusArgs{layout: stateOnly, json: true}},
		{"status drift", agentapi.StatusCmd{StateDir: state, Drift: true}.Args(),
			&statusArgs{layout: stateOnly, json: true, drift: true}},
		{"generations", agentapi.GenerationsCmd{StateDir: state}.Args(),
			&generationsArgs{layout: stateOnly, json: true}},
		{"gc", agentapi.GCCmd{StateDir: state, Keep: 3, KeepPushed: 4, PushedMaxAge: 48 * time.Hour, DropPushed: true}.Args(),
			&gcArgs{layout: stateOnly, keep: 3, keepPushed: 4, pushedMaxAge: 48 * time.Hour, dropPushed: true, json: true}},
		{"gc agent defaults", agentapi.GCCmd{StateDir: state, Keep: 5}.Args(),
			&gcArgs{layout: stateOnly, keep: 5, keepPushed: activation.DefaultKeepPushed, pushedMaxAge: activation.DefaultPushedMaxAge, json: true}},
		{"gc no pushed limits", agentapi.GCCmd{StateDir: state, Keep: 2, KeepPushed: -1, PushedMaxAge: -time.Hour}.Args(),
			&gcArgs{layout: stateOnly, keep: 2, keepPushed: 0, pushedMaxAge: 0, json: true}},
		{"drift", agentapi.DriftCmd{StateDir: state}.Args(),
			&driftArgs{layout: stateOnly, json: true}},
		{"drift verify store", agentapi.DriftCmd{StateDir: state, VerifyStore: true}.Args(),
			&driftArgs{layout: stateOnly, json: true, verifyStore: true}},
		{"health", agentapi.HealthCmd{StateDir: state, Wait: 5 * time.Minute}.Args(),
			&healthArgs{layout: stateOnly, json: true, wait: 5 * time.Minute}},
		{"apply", agentapi.ApplyCmd{StateDir: state, RunDir: run, Generation: 4, LockHeld: true}.Args(),
			&applyArgs{layout: both, generation: 4, lockHeld: true}},
		{"apply by hand", agentapi.ApplyCmd{StateDir: state, Generation: 9}.Args(),
			&applyArgs{layout: stateOnly, generation: 9}},
		{"install-self", agentapi.InstallSelfCmd{StateDir: state, NarHash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"}.Args(),
			&installSelfArgs{stateDir: state, narHash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"}},
		{"receive", agentapi.ReceiveCmd{StateDir: state}.Args(),
			&receiveArgs{stateDir: state}},
		{"receive default", agentapi.ReceiveCmd{}.Args(),
			&receiveArgs{stateDir: agentapi.DefaultStateDir}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parse, ok := parsers[tt.args[0]]
			if !ok {
				t.Fatalf("the agent has no parser for the verb %q of %q", tt.args[0], tt.args)
			}
			got, err := parse(tt.args[1:])
			if err != nil {
				t.Fatalf("parse(%q) = %v", tt.args, err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(activateArgs{}, rollbackArgs{}, confirmArgs{}, runLockArgs{}, runLeaseArgs{},
				statusArgs{}, generationsArgs{}, gcArgs{}, driftArgs{}, healthArgs{}, applyArgs{}, installSelfArgs{}, receiveArgs{})); diff != "" {
				t.Errorf("parse(%q) differs (-want +got):\n%s", tt.args, diff)
			}
		})
	}
}

// TestParseErrors checks that bad command lines are usage errors
// (agentapi.ExitUsage) and that -h is not an error.
func TestParseErrors(t *testing.T) {
	tests := [][]string{
		{agentapi.VerbActivate},
		{agentapi.VerbActivate, "--mode", "sideways", "/s"},
		{agentapi.VerbActivate, "--meta", "novalue", "/s"},
		{agentapi.VerbActivate, "/s", "/t"},
		{agentapi.VerbConfirm},
		{agentapi.VerbConfirm, "0"},
		{agentapi.VerbConfirm, "x"},
		{agentapi.VerbRollback, "3"},
		{agentapi.VerbGC, "--keep", "0"},
		{agentapi.VerbGC, "--keep-pushed", "-1"},
		{agentapi.VerbApply},
		{agentapi.VerbInstallSelf},
		{agentapi.VerbPull, "extra"},
		{agentapi.VerbReceive, "--no-such-flag"},
		{agentapi.VerbVerify, "--no-such-flag"},
		{agentapi.VerbStatus, "--wait", "1s"},
	}
	for _, args := range tests {
		parse := parsers[args[0]]
		_, err := parse(args[1:])
		if code := exitCode(err); code != agentapi.ExitUsage {
			t.Errorf("exit code of parse(%q) = %d (%v), want %d", args, code, err, agentapi.ExitUsage)
		}
	}
	for verb, parse := range parsers {
		if _, err := parse([]string{"-h"}); exitCode(err) != agentapi.ExitOK {
			t.Errorf("parse(%q) = %v, want flag.ErrHelp", []string{verb, "-h"}, err)
		}
	}
}
