// Command deploy is the operator's CLI: it evaluates a fleet, builds system
// closures, copies them to hosts and activates them. See README.md and
// docs/ for the commands; exit codes are documented in exit.go.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := startProfile(os.Getenv("DEPLOY_CPUPROFILE"), os.Stderr)
	code := Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stopProfile()
	stop()
	os.Exit(code)
}

// startProfile writes a CPU profile of the whole run to file (the
// environment's DEPLOY_CPUPROFILE; "" profiles nothing) until the
// returned function is called: for `go tool pprof deploy FILE`.
func startProfile(file string, stderr io.Writer) func() {
	if file == "" {
		return func() {}
	}
	f, err := os.Create(file)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(stderr, "deploy: DEPLOY_CPUPROFILE: %v\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// env is what every subcommand gets: its streams and the environment.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	format         string // --format (ciformat.go); "" when not given
	// openTTY opens the terminal for prompts; nil means /dev/tty.
	openTTY func() (*os.File, error)
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
	// targets says that the command takes fleet targets (DIR#NAME):
	// completion offers the fleet's hosts, deployments and tags.
	targets bool
	// subs are the subcommands of a command group, which has no run of
	// its own: deploy NAME SUB [ARGS...].
	subs []command
}

func commands() []command {
	return []command{
		{name: "build", summary: "build the system closures of hosts (DIR#NAME...); prints their store paths", run: runBuild, targets: true},
		{name: "eval", summary: "print the evaluated configuration of hosts (DIR#NAME...)", run: runEval, targets: true},
		{name: "check", summary: "validate a whole fleet without building (for CI)", run: runCheck},
		{name: "closure", summary: "list a host's system closure with sizes, or its SBOM with --format cyclonedx|spdx (DIR#HOST)", run: runClosure, targets: true},
		{name: "why-depends", summary: "show the chain of references by which a host's system needs a path (DIR#HOST PATH)", run: runWhyDepends, targets: true},
		{name: "image", summary: "write an OCI image of a host's or role's closure, one layer per store path (DIR#NAME -o FILE.tar | --push REF)", run: runImage, targets: true},
		{name: "diff", summary: "show what deploying a host changes, against what it runs now or --from SYSTEM (DIR#HOST)", run: runDiff, targets: true},
		{name: "lock", summary: "pin every external input of a fleet in deploy.lock", run: runLock},
		{name: "store", summary: "operate on the local store (add, path-info, closure, verify, gc)", subs: storeCommands},
		{name: "nar", summary: "write or restore Nix archives (dump, restore, hash)", subs: narCommands},
		{name: "copy", summary: "copy store paths and their closure to a host over SSH", run: runCopy},
		{name: "cache", summary: "the fleet's binary cache: key generate NAME, push DIR#NAME...", subs: cacheCommands},
		{name: "publish", summary: "build hosts, push their closures and publish signed releases to a channel for pull mode (DIR#TARGET... --channel NAME [--wait])", run: runPublish, targets: true},
		{name: "approve", summary: "add a publisher key's signature to a channel's releases, for a root that needs more than one (DIR#TARGET... --channel NAME [--serial N])", run: runApprove, targets: true},
		{name: "console", summary: "the fleet console: publish a static page into a channel's bucket that shows its rollout, verified in the browser (publish DIR#TARGET --channel NAME)", subs: consoleCommands},
		{name: "trust", summary: "a pull channel's root of trust: init, rotate, revoke, sign, show (docs/trust.md)", subs: trustCommands},
		{name: "secrets", summary: "edit, rekey and list the fleet's age-encrypted secrets (list, edit NAME, rekey)", subs: secretsCommands},
		{name: "keyscan", summary: "print the SSH host keys of HOST[:PORT] (for host_key or known_hosts)", run: runKeyscan},
		{name: "exec", summary: "run a command on hosts in parallel (TARGET... -- CMD)", run: runExec, targets: true},
		{name: "rollback", summary: "return hosts to an earlier generation (TARGET... [--to N | --to-commit SHA]), or publish an earlier release again (--channel NAME)", run: runRollback, targets: true},
		{name: "generations", summary: "list hosts' generations with time, operator and commit (TARGET...)", run: runGenerations, targets: true},
		{name: "status", summary: "the fleet at a glance: each host's generation, commit, age, pending/failed, reachability, drift (TARGET... [--drift] [--watch D]), or their reports to a channel (--channel NAME)", run: runStatus, targets: true},
		{name: "verify", summary: "compare hosts' live state with their current generation: files, units, users, secrets, store paths (TARGET...)", run: runVerify, targets: true},
		{name: "reboot", summary: "reboot hosts batch by batch, waiting for each to come back healthy (TARGET...)", run: runReboot, targets: true},
		{name: "gc", summary: "delete old generations and unreferenced store paths on hosts (TARGET... --keep K)", run: runGC, targets: true},
		{name: "completion", summary: "print the shell completion script (bash, zsh or fish)", run: runCompletion},
		{name: "version", summary: "print the version", run: runVersion},
	}
}

// lookup returns the command called name.
func lookup(cmds []command, name string) (command, bool) {
	for _, c := range cmds {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// exec runs c, or for a group the subcommand that args name.
func (c command) exec(ctx context.Context, e *env, args []string) error {
	if c.subs == nil {
		return c.run(ctx, e, args)
	}
	if len(args) > 0 && args[0] != "-h" && args[0] != "--help" {
		if sub, ok := lookup(c.subs, args[0]); ok {
			return sub.exec(ctx, e, args[1:])
		}
	}
	names := make([]string, len(c.subs))
	for i, s := range c.subs {
		names[i] = s.name
	}
	slices.Sort(names)
	fmt.Fprintf(e.stderr, "usage: deploy %s {%s} [flags] [ARGS...]\n\n", c.name, strings.Join(names, "|"))
	for _, s := range c.subs {
		fmt.Fprintf(e.stderr, "  %-10s %s\n", s.name, s.summary)
	}
	switch {
	case len(args) == 0:
		return usageErrorf("%s: missing subcommand", c.name)
	case args[0] == "-h" || args[0] == "--help":
		return nil
	}
	return usageErrorf("%s: unknown subcommand %q", c.name, args[0])
}

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runMain(ctx, &env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv}, args)
}

// runMain runs the CLI in e and returns the process exit code.
func runMain(ctx context.Context, e *env, args []string) int {
	stderr := e.stderr
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	if args[0] == "__complete" {
		// Hidden: the completion scripts' callback.
		return report(stderr, runComplete(ctx, e, args[1:]))
	}
	if c, ok := lookup(commands(), args[0]); ok {
		return report(stderr, c.exec(ctx, e, args[1:]))
	}
	if isTarget(args[0]) || strings.HasPrefix(args[0], "-") {
		return report(stderr, runDeploy(ctx, e, args))
	}
	return report(stderr, withHint(fmt.Errorf("unknown command %q", args[0]), ExitUsage, "targets look like DIR#NAME (for example .#prod); run 'deploy help' for the commands"))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: deploy [flags] TARGET...     deploy (TARGET: DIR#NAME, a deployment, host or @tag)\n       deploy COMMAND [ARGS...]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'deploy COMMAND -h' for a command's flags.")
}

// version is set by the linker (-X main.version=...).
var version = "dev"

func runVersion(_ context.Context, e *env, _ []string) error {
	fmt.Fprintln(e.stdout, "deploy", version)
	return nil
}
