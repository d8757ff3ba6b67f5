package agentapi

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeAgent writes an executable at dir/rel that prints its name and
// arguments.
func fakeAgent(t *testing.T, dir, rel, name string) {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho "+name+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// run runs a Command's argv locally, as the host's shell would.
func run(t *testing.T, argv []string) (string, int) {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), code
}

// Command runs the first agent of its list that is on the host, and an
// agent store path only when it is valid (its narinfo exists).
func TestCommandFindsAgent(t *testing.T) {
	state := t.TempDir()
	const agentPath = "0123456789abcdfghijklmnpqrsvwxyz-deploy-agent"
	system := filepath.Join(state, "store", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-system-web1")
	fakeAgent(t, state, "store/"+agentPath+"/"+AgentBin, "store-agent")
	fakeAgent(t, system, "agent/"+AgentBin, "system-agent")
	fakeAgent(t, state, "profiles/system-3-link/agent/"+AgentBin, "gen3-agent")

	storeAgent := AgentAt(filepath.Join(state, "store", agentPath))
	args := StatusCmd{StateDir: state}.Args()
	for _, tt := range []struct {
		name   string
		agents []Agent
		want   string
		code   int
	}{
		{"the system's agent", []Agent{AgentOfSystem(system)}, "system-agent status --state-dir " + state + " --json", 0},
		{"a generation's agent", []Agent{AgentOfGeneration(3)}, "gen3-agent status --state-dir " + state + " --json", 0},
		{"a missing generation", []Agent{AgentOfGeneration(4)}, "", ExitNoAgent},
		{"an unregistered store agent", []Agent{storeAgent}, "", ExitNoAgent},
		{"no boot default", []Agent{BootAgent}, "", ExitNoAgent},
		{"the first found", []Agent{BootAgent, AgentOfGeneration(4), AgentOfGeneration(3), AgentOfSystem(system)}, "gen3-agent status --state-dir " + state + " --json", 0},
		{"any: a generation's", []Agent{AnyAgent}, "gen3-agent status --state-dir " + state + " --json", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, Command(state, tt.agents, args...))
			if out != tt.want || code != tt.code {
				t.Errorf("Command(%s) printed %q, exit %d; want %q, exit %d", tt.name, out, code, tt.want, tt.code)
			}
		})
	}

	// Registered, the store agent counts; the boot default comes first
	// among any agents.
	if err := os.MkdirAll(filepath.Join(state, "db"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(state, "db", "0123456789abcdfghijklmnpqrsvwxyz.narinfo"), nil, 0o644)
	if out, code := run(t, Command(state, []Agent{storeAgent}, "receive")); out != "store-agent receive" || code != 0 {
		t.Errorf("a registered store agent: %q, exit %d", out, code)
	}
	fakeAgent(t, state, "profiles/system/agent/"+AgentBin, "boot-agent")
	if out, _ := run(t, Command(state, []Agent{AnyAgent}, "receive")); out != "boot-agent receive" {
		t.Errorf("any agent with a boot default: %q, want the boot default's", out)
	}
}

// Arguments reach the agent as they are, whatever they contain.
func TestCommandQuotes(t *testing.T) {
	state := t.TempDir()
	system := filepath.Join(state, "store", "it's-a-system")
	fakeAgent(t, system, "agent/"+AgentBin, "agent")
	out, code := run(t, Command(state, []Agent{AgentOfSystem(system)}, "activate", "--meta", "message=a $(b) 'c'"))
	if want := "agent activate --meta message=a $(b) 'c'"; out != want || code != 0 {
		t.Errorf("got %q (exit %d), want %q", out, code, want)
	}
}

func TestCommandLines(t *testing.T) {
	for _, tt := range []struct {
		cmd  interface{ Args() []string }
		want string
	}{
		{ActivateCmd{System: "/s", ConfirmTimeout: 30 * time.Second, Meta: map[string]string{"b": "2", "a": "1"}},
			"activate --state-dir /var/lib/deploy --mode switch --confirm-timeout 30s --meta a=1 --meta b=2 /s"},
		{ActivateCmd{StateDir: "/st", RunDir: "/r", Mode: "boot", Force: true, System: "/s"},
			"activate --state-dir /st --run-dir /r --mode boot --confirm-timeout 0s --force /s"},
		{RollbackCmd{To: 3, ConfirmTimeout: time.Minute}, "rollback --state-dir /var/lib/deploy --to 3 --confirm-timeout 1m0s"},
		{ConfirmCmd{Generation: 4}, "confirm --state-dir /var/lib/deploy 4"},
		{RunLockCmd{Wait: 0, Lease: time.Minute}, "run-lock --state-dir /var/lib/deploy --wait 0s --lease 1m0s"},
		{RunLockCmd{Wait: 0, Lease: time.Minute, Drift: true}, "run-lock --state-dir /var/lib/deploy --wait 0s --lease 1m0s --drift"},
		{GCCmd{Keep: 5}, "gc --state-dir /var/lib/deploy --json --keep 5"},
		{GCCmd{Keep: 2, KeepPushed: -1, PushedMaxAge: time.Hour, DropPushed: true},
			"gc --state-dir /var/lib/deploy --json --keep 2 --keep-pushed 0 --pushed-max-age 1h0m0s --drop-pushed"},
		{StatusCmd{Drift: true}, "status --state-dir /var/lib/deploy --json --drift"},
		{DriftCmd{VerifyStore: true}, "drift --state-dir /var/lib/deploy --json --verify-store"},
		{HealthCmd{Wait: 2 * time.Minute}, "health --state-dir /var/lib/deploy --json --wait 2m0s"},
		{ApplyCmd{StateDir: "/st", RunDir: "/r", Generation: 2, LockHeld: true}, "apply --state-dir /st --run-dir /r --generation 2 --lock-held"},
	} {
		if diff := cmp.Diff(tt.want, strings.Join(tt.cmd.Args(), " ")); diff != "" {
			t.Errorf("%T (-want +got):\n%s", tt.cmd, diff)
		}
	}
}
