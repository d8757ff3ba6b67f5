// Command deploy-agent runs on the target. It is shipped inside every system
// closure and is static (CGO_ENABLED=0), without tsnet or lipgloss: it
// receives store paths, verifies the store, and activates generations.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

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

// Main runs the agent and returns its exit code: 0 success, 1 failure,
// 2 usage, 3 rolled back, 5 lock held (see exit.go).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: deploy-agent {version|verify|receive|install-self|activate|confirm|status|generations|rollback|gc|boot|run-lock|pull|drift|health} [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "deploy-agent", version)
	case "verify":
		err = runVerify(ctx, args[1:], stdout, stderr)
	case "receive":
		err = runReceive(ctx, args[1:], os.Stdin, stdout, stderr)
	case "install-self":
		err = runInstallSelf(ctx, args[1:], stdout, stderr)
	case "activate":
		err = runActivate(ctx, args[1:], os.Stdin, stdout, stderr)
	case "activate-worker":
		err = runActivateWorker(ctx, args[1:], stderr)
	case "watchdog":
		err = runWatchdog(ctx, args[1:], stderr)
	case "confirm":
		err = runConfirm(ctx, args[1:], os.Stdin, stdout, stderr)
	case "status":
		err = runStatus(ctx, args[1:], stdout, stderr)
	case "generations":
		err = runGenerations(ctx, args[1:], stdout, stderr)
	case "rollback":
		err = runRollback(ctx, args[1:], os.Stdin, stdout, stderr)
	case "gc":
		err = runGC(ctx, args[1:], stdout, stderr)
	case "boot":
		err = runBoot(ctx, args[1:], stderr)
	case "apply":
		err = runApply(ctx, args[1:], stderr)
	case "run-lock":
		err = runRunLock(ctx, args[1:], os.Stdin, stdout, stderr)
	case "pull":
		err = runPull(ctx, args[1:], stdout, stderr)
	case "drift":
		err = runDrift(ctx, args[1:], stdout, stderr)
	case "health":
		err = runHealth(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "deploy-agent: unknown command %q\n", args[0])
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "deploy-agent: %v\n", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return exitFailed
	}
	return 0
}

// runVerify rehashes every valid store path.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := stateDirFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	s := closure.NewTargetStore(*stateDir)
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
