// Command deploy-agent runs on the target. It is shipped inside every system
// closure and is static (CGO_ENABLED=0), without tsnet or lipgloss: it
// receives store paths, verifies the store, and activates generations.
//
// It parses command lines (each verb's in a parseVERB function; the
// operator builds them with agentapi's command types), calls package
// activation (or closure, pull), prints the result and maps the outcome
// to agentapi's exit codes (exit.go); it decides nothing else.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Main runs the agent and returns its exit code (agentapi/exit.go): 0
// success, 1 failure, 2 usage (also an unknown verb), 3 rolled back, 5
// lock held. `VERB -h` exits 0 for every verb it knows.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: deploy-agent {version|verify|receive|install-self|activate|confirm|status|generations|rollback|gc|boot|boot-guard|boot-confirm|run-lock|run-lease|pull|drift|health} [flags]")
		return agentapi.ExitUsage
	}
	var err error
	switch args[0] {
	case agentapi.VerbVersion:
		fmt.Fprintln(stdout, "deploy-agent", version)
	case agentapi.VerbVerify:
		err = runVerify(ctx, args[1:], stdout, stderr)
	case agentapi.VerbReceive:
		err = runReceive(ctx, args[1:], os.Stdin, stdout, stderr)
	case agentapi.VerbInstallSelf:
		err = runInstallSelf(ctx, args[1:], stdout, stderr)
	case agentapi.VerbActivate:
		err = runActivate(ctx, args[1:], os.Stdin, stdout, stderr)
	case agentapi.VerbActivateWorker:
		err = runActivateWorker(ctx, args[1:], stderr)
	case agentapi.VerbWatchdog:
		err = runWatchdog(ctx, args[1:], stderr)
	case agentapi.VerbConfirm:
		err = runConfirm(ctx, args[1:], os.Stdin, stdout, stderr)
	case agentapi.VerbStatus:
		err = runStatus(ctx, args[1:], stdout, stderr)
	case agentapi.VerbGenerations:
		err = runGenerations(ctx, args[1:], stdout, stderr)
	case agentapi.VerbRollback:
		err = runRollback(ctx, args[1:], os.Stdin, stdout, stderr)
	case agentapi.VerbGC:
		err = runGC(ctx, args[1:], stdout, stderr)
	case agentapi.VerbBoot:
		err = runBoot(ctx, args[1:], stderr)
	case agentapi.VerbApply:
		err = runApply(ctx, args[1:], stderr)
	case agentapi.VerbRunLock:
		err = runRunLock(ctx, args[1:], os.Stdin, stdout, stderr)
	case agentapi.VerbPull:
		err = runPull(ctx, args[1:], stdout, stderr)
	case agentapi.VerbDrift:
		err = runDrift(ctx, args[1:], stdout, stderr)
	case agentapi.VerbHealth:
		err = runHealth(ctx, args[1:], stdout, stderr)
	case agentapi.VerbBootGuard:
		err = runBootGuard(ctx, args[1:], stderr)
	case agentapi.VerbBootConfirm:
		err = runBootConfirm(ctx, args[1:], stdout, stderr)
	case agentapi.VerbRunLease:
		err = runRunLease(ctx, args[1:], stderr)
	default:
		fmt.Fprintf(stderr, "deploy-agent: unknown command %q\n", args[0])
		return agentapi.ExitUsage
	}
	code := exitCode(err)
	if code != agentapi.ExitOK {
		fmt.Fprintf(stderr, "deploy-agent: %v\n", err)
	}
	return code
}

// verifyArgs is the command line of verify.
type verifyArgs struct{ stateDir string }

func parseVerify(args []string, stderr io.Writer) (*verifyArgs, error) {
	fs := newFlagSet(agentapi.VerbVerify, stderr)
	a := &verifyArgs{}
	stateDirVar(fs, &a.stateDir)
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	return a, nil
}

// runVerify rehashes every valid store path.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseVerify(args, stderr)
	if err != nil {
		return err
	}
	s := closure.NewTargetStore(a.stateDir)
	problems, err := s.Verify(ctx)
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintf(stdout, "%s\t%v\n", p.Path, p.Err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("verify: %d problems in %q", len(problems), s.StoreDir)
	}
	return nil
}
