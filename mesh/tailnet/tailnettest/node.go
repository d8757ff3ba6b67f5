package tailnettest

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Host is a test machine a node can run on; *vmtest.Host satisfies it.
type Host interface {
	Name() string
	Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error)
}

// Node is the test-only tailnet node (internal/tsnode) running inside a
// test host as the systemd unit tsnode.service. It is named after the host
// and forwards tailnet TCP port 22 to the host's 127.0.0.1:22.
type Node struct {
	// Name is the node's tailnet name (the host's name).
	Name string
	// Addr is the node's tailnet IPv4 address.
	Addr netip.Addr
	host Host
}

const nodePackage = "github.com/declarative/deploy/mesh/tailnet/tailnettest/internal/tsnode"

// nodeBinary builds internal/tsnode, static, once per Tailnet.
func (tn *Tailnet) nodeBinary(t testing.TB) string {
	t.Helper()
	if tn.nodeBin != "" {
		return tn.nodeBin
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("tailnettest: find the module: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "tsnode")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, nodePackage)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tailnettest: go build tsnode: %v\n%s", err, b)
	}
	tn.nodeBin = bin
	return bin
}

// InstallNode copies the node program into h, installs tsnode.service and
// starts it, and waits until the node is on the tailnet. lis and controller
// are how hosts reach the test process (vmtest's Network and
// vmtest.ControllerAddr).
func (tn *Tailnet) InstallNode(t testing.TB, lis Listener, controller netip.Addr, h Host) *Node {
	t.Helper()
	e := tn.expose(t, lis, controller.String())
	bin := tn.nodeBinary(t)
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := hostRun(h, f, "mkdir -p /usr/local/bin && cat > /usr/local/bin/tsnode.tmp && chmod 755 /usr/local/bin/tsnode.tmp && mv /usr/local/bin/tsnode.tmp /usr/local/bin/tsnode"); err != nil {
		t.Fatalf("tailnettest: copy tsnode into %s: %v", h.Name(), err)
	}
	var env []string
	for k, v := range nodeEnv {
		env = append(env, k+"="+v)
	}
	args := []string{
		"/usr/local/bin/tsnode",
		"-control", tn.ControlURL,
		"-authkey-file", "/etc/tsnode/authkey",
		"-hostname", h.Name(),
		"-forward", "127.0.0.1:" + strconv.Itoa(tn.controlPort) + "=" + e.control,
		"-forward", "127.0.0.1:" + strconv.Itoa(tn.derpPort) + "=" + e.derp,
	}
	unit := fmt.Sprintf("[Unit]\nDescription=deploy test tailnet node\n\n[Service]\nEnvironment=%s\nExecStart=%s\n",
		strings.Join(env, " "), strings.Join(args, " "))
	script := fmt.Sprintf("mkdir -p -m 700 /etc/tsnode && printf %%s %s > /etc/tsnode/authkey && printf %%s '%s' > /etc/systemd/system/tsnode.service && systemctl daemon-reload && systemctl start tsnode",
		tn.AuthKey, unit)
	if _, err := hostRun(h, nil, script); err != nil {
		t.Fatalf("tailnettest: start tsnode in %s: %v", h.Name(), err)
	}
	n := &Node{Name: h.Name(), host: h}
	n.waitUp(t)
	return n
}

// Stop stops the node (systemctl stop): the host drops off the tailnet.
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	if _, err := hostRun(n.host, nil, "systemctl stop tsnode"); err != nil {
		t.Fatalf("tailnettest: stop tsnode in %s: %v", n.Name, err)
	}
}

// Start starts a stopped node and waits until it is back on the tailnet.
func (n *Node) Start(t testing.TB) {
	t.Helper()
	if _, err := hostRun(n.host, nil, "systemctl start tsnode"); err != nil {
		t.Fatalf("tailnettest: start tsnode in %s: %v", n.Name, err)
	}
	n.waitUp(t)
}

// Logs returns the node's journal.
func (n *Node) Logs() string {
	out, err := hostRun(n.host, nil, "journalctl --no-pager -u tsnode | tail -n 200")
	if err != nil {
		return err.Error()
	}
	return out
}

func (n *Node) waitUp(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := hostRun(n.host, nil, "cat /run/tsnode.ready 2>/dev/null; true")
		if err == nil {
			if a, perr := netip.ParseAddr(strings.TrimSpace(out)); perr == nil {
				n.Addr = a
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tailnettest: node %s not up after 90s; its journal:\n%s", n.Name, n.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// hostRun runs script with sh inside h.
func hostRun(h Host, stdin *os.File, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd, err := h.Command(ctx, "/bin/sh", "-c", script)
	if err != nil {
		return "", err
	}
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%q: %w: %s", script, err, errb.String())
	}
	return out.String(), nil
}
