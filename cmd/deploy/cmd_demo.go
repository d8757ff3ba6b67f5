package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/secrets"
	"github.com/declarative/deploy/vmtest"
)

// runDemo is the main job on a built-in default: it starts two local test
// hosts, deploys examples/quickstart to them, shows the service answering,
// deploys a change, deploys a broken change that rolls back by itself, runs
// a rollback, and cleans up.
func runDemo(ctx context.Context, e *env, args []string) error {
	var fleetSrc string
	var keep bool
	fs := newFlags(e, "demo", "")
	fs.StringVar(&fleetSrc, "fleet", "", "the example fleet `directory` (default: examples/quickstart here or beside the deploy binary)")
	fs.BoolVar(&keep, "keep-store", false, "keep the demo's local store (printed at the end)")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	src, err := findQuickstart(fleetSrc)
	if err != nil {
		return err
	}
	if err := vmtest.Available(); err != nil {
		return withHint(fmt.Errorf("demo: cannot start test hosts: %w", err), ExitUsage, "run 'make demo' as root: it installs systemd-container, debootstrap and the rest")
	}
	say := func(format string, args ...any) { fmt.Fprintf(e.stderr, "\ndeploy demo: "+format+"\n", args...) }
	work, err := os.MkdirTemp("", "deploy-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if !keep {
			nar.RemoveTree(work)
		}
	}()

	say("1/6 starting 2 test hosts (systemd-nspawn containers with systemd and OpenSSH, on a private network)")
	nw, err := vmtest.Boot(ctx, 2, func(format string, args ...any) { fmt.Fprintf(e.stderr, "  "+format+"\n", args...) })
	if err != nil {
		return err
	}
	defer func() {
		say("6/6 cleaning up: stopping the hosts and removing their namespaces, cgroups and disks")
		nw.Close()
	}()
	fleetDir := filepath.Join(work, "fleet")
	if err := demoFleet(src, fleetDir, nw); err != nil {
		return err
	}
	key := filepath.Join(work, "id_ed25519")
	if err := os.WriteFile(key, nw.ClientKeyPEM(), 0o600); err != nil {
		return err
	}
	bf := buildFlags{store: storeFlags{storeDir: closure.DefaultStoreDir, cacheDir: filepath.Join(work, "cache")}}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	hf := hostFlags{ssh: fleetSSHFlags{identities: stringList{key}, sshConfig: "none"}, remoteState: agentapi.DefaultStateDir}
	// session is a fleet session of the demo's command over target, on the
	// test hosts' network, rendered like the CLI's.
	session := func(command, target string) (*fleet.Session, view) {
		v := newView(e, false, true)
		s := hf.session(e, command, []string{target}, v)
		s.Mesh.Dialer = nw
		s.Builder = b
		return s, v
	}
	run := func(mode fleet.Mode, target string) error {
		s, v := session("deploy", target)
		rep, err := runSession(s, v, func() (*fleet.Report, error) {
			return s.Deploy(ctx, fleet.DeployOptions{Mode: mode, ConfirmTimeout: 15 * time.Second})
		})
		resultLines(e, s, rep)
		return err
	}
	answer := func() {
		for _, h := range nw.Hosts {
			fmt.Fprintf(e.stderr, "  %s: GET http://%s:8080/ -> %s\n", h.Name(), h.Addr(), httpGet(ctx, nw, h))
		}
	}

	say("2/6 deploy %s#prod: build both hosts, copy their closures, activate, confirm over a new connection", src)
	if err := run(fleet.ModeSwitch, fleetDir+"#prod"); err != nil {
		return fmt.Errorf("demo: the first deployment failed: %w", err)
	}
	answer()

	say("3/6 a change: the role's greeting; only what changed is copied, and the service restarts")
	if err := editFile(filepath.Join(fleetDir, "web.hcl"), `default = "hello"`, `default = "hello again"`); err != nil {
		return err
	}
	if err := run(fleet.ModeSwitch, fleetDir+"#prod"); err != nil {
		return fmt.Errorf("demo: the second deployment failed: %w", err)
	}
	answer()

	say("4/6 a broken change: the service is pointed at a configuration file that does not exist; it cannot start, its health check fails, and the agent rolls back by itself")
	if err := editFile(filepath.Join(fleetDir, "web.hcl"), "-config /etc/hello/config.json", "-config /etc/hello/missing.json"); err != nil {
		return err
	}
	err = run(fleet.ModeSwitch, fleetDir+"#prod")
	if code, _ := exitCode(err); code != ExitRolledBack {
		return fmt.Errorf("demo: the broken deployment should have rolled back (exit %d), got exit %d: %v", ExitRolledBack, code, err)
	}
	fmt.Fprintf(e.stderr, "  exit code %d: rolled back, as expected; the hosts still run the second deployment:\n", ExitRolledBack)
	answer()
	if err := editFile(filepath.Join(fleetDir, "web.hcl"), "-config /etc/hello/missing.json", "-config /etc/hello/config.json"); err != nil {
		return err
	}

	say("5/6 deploy rollback %s#prod: back to the first generation, with the same confirmation", src)
	s, v := session("rollback", fleetDir+"#prod")
	rep, err := runSession(s, v, func() (*fleet.Report, error) {
		return s.Rollback(ctx, fleet.RollbackOptions{To: 1, ConfirmTimeout: 15 * time.Second})
	})
	resultLines(e, s, rep)
	if err != nil {
		return fmt.Errorf("demo: rollback failed: %w", err)
	}
	answer()
	if keep {
		say("the demo's store is kept in %s", work)
	}
	return nil
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
	return "", withHint(fmt.Errorf("demo: no example fleet at %q", cands), ExitUsage, "run it from the repository (make demo), or pass --fleet DIR")
}

// demoFleet copies the example to dir, points its hosts at the test hosts
// (address and pinned host key), and encrypts its secret to their keys.
func demoFleet(src, dir string, nw *vmtest.Network) error {
	if err := copyTree(src, dir); err != nil {
		return err
	}
	f, diags := builder.Load(dir)
	if diags.HasErrors() {
		return fmt.Errorf("demo: %s", diags.Error())
	}
	var rcpts []secrets.Recipient
	data, err := os.ReadFile(filepath.Join(dir, "fleet.hcl"))
	if err != nil {
		return err
	}
	text := string(data)
	for i, h := range f.Hosts {
		if i >= len(nw.Hosts) {
			break
		}
		th := nw.Hosts[i]
		old := fmt.Sprintf("address = %q", h.Address)
		if !strings.Contains(text, old) {
			return fmt.Errorf("demo: %s: cannot find %s in fleet.hcl", h.Name, old)
		}
		text = strings.Replace(text, old, fmt.Sprintf("address  = %q\n  host_key = %q", th.Addr().String(), th.HostKeyLine()), 1)
		rcpts = append(rcpts, secrets.Recipient{Owner: "host " + h.Name, Key: th.HostKeyLine()})
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(text), 0o644); err != nil {
		return err
	}
	return filepath.WalkDir(filepath.Join(dir, "secrets"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".age") {
			return err
		}
		ct, err := secrets.Encrypt([]byte("demo-"+strings.TrimSuffix(d.Name(), ".age")+"-value\n"), rcpts)
		if err != nil {
			return err
		}
		return os.WriteFile(p, ct, 0o644)
	})
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o644)
	})
}

func editFile(p, old, new string) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if !strings.Contains(string(data), old) {
		return fmt.Errorf("demo: %s does not contain %q", p, old)
	}
	return os.WriteFile(p, []byte(strings.Replace(string(data), old, new, 1)), 0o644)
}

// httpGet fetches the service's page through the test network.
func httpGet(ctx context.Context, nw *vmtest.Network, h *vmtest.Host) string {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nw.DialContext}}
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s:8080/", h.Addr()), nil)
	resp, err := client.Do(req)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Sprintf("%d %q", resp.StatusCode, strings.TrimSpace(string(body)))
}
