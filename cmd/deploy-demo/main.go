// Command deploy-demo is the main job on a built-in local default: it
// starts two local test hosts (systemd-nspawn containers with systemd and
// OpenSSH on a private network, package vmtest), and drives the real
// deploy binary, found beside it, against them: it deploys
// examples/quickstart, shows the service answering, deploys a change,
// deploys a broken change that rolls back by itself (deploy exits 3), runs
// deploy rollback, and removes everything it made, on every path (Ctrl-C
// too). It needs root; make demo builds bin/deploy, bin/deploy-agent and
// bin/deploy-demo and runs it.
//
// The demo's own lines go to stderr prefixed "deploy demo:"; deploy's
// output passes through, so on a terminal its live view shows. A failed
// step exits 1 with a message; a bad command line or a machine that cannot
// run test hosts exits 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/quickstart"
	"github.com/declarative/deploy/vmtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a bad command line or a machine that cannot run the demo
// (exit 2), with what to do.
type usageError struct{ err, hint string }

func (e *usageError) Error() string { return e.err }

// run runs the demo and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	d := &demo{ctx: ctx, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("deploy-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&d.fleetSrc, "fleet", "", "the example fleet `directory` (default: examples/quickstart here or beside the binary's directory)")
	fs.BoolVar(&d.keep, "keep-store", false, "keep the demo's local store (printed at the end)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: deploy-demo [flags]\n\nThe main job on two local test hosts (root): deploy, change, break (rolls back), roll back, clean up.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil {
		return 2
	} else if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	err := d.run()
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "deploy demo: %s\ndeploy demo: hint: %s\n", ue.err, ue.hint)
		return 2
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "deploy demo: interrupted (%v)\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "deploy demo: %v\n", err)
	return 1
}

// demo is one run of the demo.
type demo struct {
	ctx            context.Context
	stdout, stderr io.Writer
	fleetSrc       string
	keep           bool

	bin   string // the deploy binary
	nw    *vmtest.Network
	work  string // the demo's directory: fleet, key, deploy's cache
	fleet string
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.stderr, "\ndeploy demo: "+format+"\n", args...)
}

func (d *demo) run() error {
	src, err := findQuickstart(d.fleetSrc)
	if err != nil {
		return err
	}
	if d.bin, err = besideMe("deploy"); err != nil {
		return err
	}
	if err := vmtest.Available(); err != nil {
		return &usageError{fmt.Sprintf("cannot start test hosts: %v", err), "run 'make demo' as root: it installs systemd-container, debootstrap and the rest"}
	}
	if d.work, err = os.MkdirTemp("", "deploy-demo-"); err != nil {
		return err
	}
	defer func() {
		if !d.keep {
			nar.RemoveTree(d.work)
		}
	}()

	d.say("1/6 starting 2 test hosts (systemd-nspawn containers with systemd and OpenSSH, on a private network)")
	if d.nw, err = vmtest.Boot(d.ctx, 2, func(format string, args ...any) { fmt.Fprintf(d.stderr, "  "+format+"\n", args...) }); err != nil {
		return err
	}
	defer func() {
		d.say("6/6 cleaning up: stopping the hosts and removing their namespaces, cgroups and disks")
		d.nw.Close()
	}()
	d.fleet = filepath.Join(d.work, "fleet")
	if err := quickstart.Prepare(src, d.fleet, d.nw); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.work, "id_ed25519"), d.nw.ClientKeyPEM(), 0o600); err != nil {
		return err
	}
	web := filepath.Join(d.fleet, "web.hcl")

	d.say("2/6 deploy %s#prod: build both hosts, copy their closures, activate, confirm over a new connection", src)
	if code, err := d.deploy(); code != 0 {
		return fmt.Errorf("the first deployment failed: %v", err)
	}
	d.answer()

	d.say("3/6 a change: the role's greeting; only what changed is copied, and the service restarts")
	if err := quickstart.Edit(web, `default = "hello"`, `default = "hello again"`); err != nil {
		return err
	}
	if code, err := d.deploy(); code != 0 {
		return fmt.Errorf("the second deployment failed: %v", err)
	}
	d.answer()

	d.say("4/6 a broken change: the service is pointed at a configuration file that does not exist; it cannot start, its health check fails, and the agent rolls back by itself")
	if err := quickstart.Edit(web, "-config /etc/hello/config.json", "-config /etc/hello/missing.json"); err != nil {
		return err
	}
	if code, err := d.deploy(); code != exitRolledBack {
		return fmt.Errorf("the broken deployment should have rolled back (exit %d), got exit %d: %v", exitRolledBack, code, err)
	}
	fmt.Fprintf(d.stderr, "  exit code %d: rolled back, as expected; the hosts still run the second deployment:\n", exitRolledBack)
	d.answer()
	if err := quickstart.Edit(web, "-config /etc/hello/missing.json", "-config /etc/hello/config.json"); err != nil {
		return err
	}

	d.say("5/6 deploy rollback %s#prod: back to the first generation, with the same confirmation", src)
	if code, err := d.deploy("rollback", "--to", "1"); code != 0 {
		return fmt.Errorf("rollback failed: %v", err)
	}
	d.answer()
	if d.keep {
		d.say("the demo's store is kept in %s", d.work)
	}
	return nil
}

// exitRolledBack is deploy's exit code for a host that rolled back
// (cmd/deploy/exit.go, docs/cli.md).
const exitRolledBack = 3

// deploy runs deploy ARGS... with the demo's flags and target .#prod
// inside the test network, its output passed through, and returns its
// exit code. Ctrl-C reaches it as it reaches the demo (one process
// group); a cancel the terminal did not send (SIGTERM to the demo) is
// passed on as SIGINT, so that it ends the same way: releasing its run
// locks and saying what happened.
func (d *demo) deploy(args ...string) (int, error) {
	args = append(args, "--identity", filepath.Join(d.work, "id_ed25519"), "--ssh-config", "none",
		"--confirm-timeout", "15s", "--cache-dir", filepath.Join(d.work, "cache"), d.fleet+"#prod")
	cmd := d.nw.ControllerCommand(d.ctx, d.bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, d.stdout, d.stderr
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode(), fmt.Errorf("deploy exited with %d", ee.ExitCode())
	}
	return -1, err
}

// answer shows what each host's service answers.
func (d *demo) answer() {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.nw.DialContext}}
	for _, h := range d.nw.Hosts {
		fmt.Fprintf(d.stderr, "  %s: GET http://%s:8080/ -> %s\n", h.Name(), h.Addr(), get(d.ctx, client, fmt.Sprintf("http://%s:8080/", h.Addr())))
	}
}

func get(ctx context.Context, client *http.Client, url string) string {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Sprintf("%d %q", resp.StatusCode, strings.TrimSpace(string(body)))
}

// besideMe finds the program name in this program's directory, where make
// demo builds it.
func besideMe(name string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(exe), name)
	if _, err := os.Stat(p); err != nil {
		return "", &usageError{fmt.Sprintf("no %s beside %s", name, exe), "build both with make demo (bin/deploy, bin/deploy-agent and bin/deploy-demo)"}
	}
	return p, nil
}

// findQuickstart locates the example fleet.
func findQuickstart(flagValue string) (string, error) {
	cands := []string{flagValue}
	if flagValue == "" {
		cands = []string{"examples/quickstart"}
		if exe, err := os.Executable(); err == nil {
			cands = append(cands, filepath.Join(filepath.Dir(exe), "..", "examples", "quickstart"))
		}
	}
	for _, c := range cands {
		if fi, err := os.Stat(filepath.Join(c, "fleet.hcl")); err == nil && !fi.IsDir() {
			return filepath.Abs(c)
		}
	}
	return "", &usageError{fmt.Sprintf("no example fleet at %q", cands), "run it from the repository (make demo), or pass --fleet DIR"}
}
