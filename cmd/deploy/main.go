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
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
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
}

func commands() []command {
	return []command{
		{"build", "build the system closures of hosts (DIR#NAME...); prints their store paths", runBuild},
		{"eval", "print the evaluated configuration of hosts (DIR#NAME...)", runEval},
		{"check", "validate a whole fleet without building (for CI)", runCheck},
		{"closure", "list a host's system closure with sizes, or its SBOM with --format cyclonedx|spdx (DIR#HOST)", runClosure},
		{"why-depends", "show the chain of references by which a host's system needs a path (DIR#HOST PATH)", runWhyDepends},
		{"image", "write an OCI image of a host's or role's closure, one layer per store path (DIR#NAME -o FILE.tar | --push REF)", runImage},
		{"diff", "show what deploying a host changes, against what it runs now or --from SYSTEM (DIR#HOST)", runDiff},
		{"lock", "pin every external input of a fleet in deploy.lock", runLock},
		{"store", "operate on the local store (add, path-info, closure, verify, gc)", runStore},
		{"nar", "write or restore Nix archives (dump, restore)", runNar},
		{"copy", "copy store paths and their closure to a host over SSH", runCopy},
		{"cache", "the fleet's binary cache: key generate NAME, push DIR#NAME...", runCache},
		{"publish", "build hosts, push their closures and publish signed releases to a channel for pull mode (DIR#TARGET... --channel NAME [--wait])", runPublish},
		{"secrets", "edit, rekey and list the fleet's age-encrypted secrets (list, edit NAME, rekey)", runSecrets},
		{"keyscan", "print the SSH host keys of HOST[:PORT] (for host_key or known_hosts)", runKeyscan},
		{"exec", "run a command on hosts in parallel (TARGET... -- CMD)", runExec},
		{"rollback", "return hosts to an earlier generation (TARGET... [--to N | --to-commit SHA]), or publish an earlier release again (--channel NAME)", runRollback},
		{"generations", "list hosts' generations with time, operator and commit (TARGET...)", runGenerations},
		{"status", "the fleet at a glance: each host's generation, commit, age, pending/failed, reachability, drift (TARGET... [--drift] [--watch D]), or their reports to a channel (--channel NAME)", runStatus},
		{"verify", "compare hosts' live state with their current generation: files, units, users, secrets, store paths (TARGET...)", runVerify},
		{"reboot", "reboot hosts batch by batch, waiting for each to come back healthy (TARGET...)", runReboot},
		{"gc", "delete old generations and unreferenced store paths on hosts (TARGET... --keep K)", runGC},
		{"demo", "the main job on local test hosts: deploy, change, break, roll back, clean up", runDemo},
		{"completion", "print the shell completion script (bash, zsh or fish)", runCompletion},
		{"version", "print the version", runVersion},
	}
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
	for _, c := range commands() {
		if c.name == args[0] {
			return report(stderr, c.run(ctx, e, args[1:]))
		}
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
