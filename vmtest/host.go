package vmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Host is one test machine. Its methods that do not return an error fail the
// test on error, so call them from the test's goroutine; [Host.With] gives
// a handle for a subtest. A Host is a handle: copies made by With share the
// machine.
type Host struct {
	m  *machine
	tb testing.TB
}

// machine is the state shared by every handle of a host.
type machine struct {
	net  *Network
	name string
	addr netip.Addr
	port string // its interface in the switch namespace
	dir  string
	// ns holds the host's end of its link, named eth0, until nspawn moves
	// it into the container's own network namespace at boot.
	ns      *netns
	cg      cgroup
	hostKey keyPair

	mu       sync.Mutex
	inst     *instance // nil when the host is down
	stopping bool      // Crash or cleanup is killing it on purpose
	boots    int
	cut      bool  // see Cut; survives boots
	rate     int64 // see Throttle; survives boots
}

// instance is one boot of a host: one systemd-nspawn process. Each boot
// has fresh cgroups: the kernel may kill a process cloned straight into a
// cgroup that cgroup.kill has been used on.
type instance struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed when nspawn has exited
	err    error         // nspawn's exit, valid after done
	execCg cgroup        // the cgroup for commands run by the test
	leader int           // the container's PID 1 in our PID namespace, once found; m.mu
}

func (i *instance) exited() bool {
	select {
	case <-i.done:
		return true
	default:
		return false
	}
}

// With returns a handle of the same host whose failing methods report to tb.
func (h *Host) With(tb testing.TB) *Host { return &Host{m: h.m, tb: tb} }

// Name returns the host's name and hostname ("h1").
func (h *Host) Name() string { return h.m.name }

// Addr returns the host's IPv4 address.
func (h *Host) Addr() netip.Addr { return h.m.addr }

// MAC returns the MAC address of the host's eth0, derived from its address.
func (h *Host) MAC() net.HardwareAddr { return macFor(0, h.m.addr) }

// Network returns the network the host belongs to.
func (h *Host) Network() *Network { return h.m.net }

func (n *Network) newMachine(i int) (*machine, error) {
	m := &machine{
		net:  n,
		name: "h" + strconv.Itoa(i),
		addr: hostAddr(i),
		port: "vh" + strconv.Itoa(i),
	}
	m.dir = filepath.Join(n.run.dir, m.name)
	m.cg = n.run.cg.child(m.name)
	var err error
	if m.hostKey, err = newKeyPair("root@" + m.name); err != nil {
		return nil, err
	}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.MkdirAll(filepath.Join(m.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("%s: create state: %w", m.name, err)
		}
	}
	if err := m.cg.create(); err != nil {
		return nil, fmt.Errorf("%s: %w", m.name, err)
	}
	if m.ns, err = newNetns(); err != nil {
		return nil, fmt.Errorf("%s: %w", m.name, err)
	}
	return m, nil
}

// linkLocked connects a new link for the next boot: eth0 in m.ns, its peer
// on the switch. The previous boot's link died with that boot's network
// namespace. The MAC addresses depend only on the host's address, so peers
// never hold a stale ARP entry for it. m.mu is held.
func (m *machine) linkLocked(ctx context.Context) error {
	sw := m.net.sw
	// The kernel destroys a dead namespace's links asynchronously, and a
	// failed boot may leave eth0 behind: delete both, if present.
	_, _ = sw.run(ctx, "ip", "link", "del", m.port)
	_, _ = m.ns.run(ctx, "ip", "link", "del", "eth0")
	err := m.ns.ip(ctx, fmt.Sprintf("link add eth0 address %s type veth peer name %s address %s netns NETNS:0\n",
		macFor(0, m.addr), m.port, macFor(1, m.addr)), sw)
	if err != nil {
		return fmt.Errorf("%s: create link: %w", m.name, err)
	}
	state := "up"
	if m.cut {
		state = "down"
	}
	if err := sw.ip(ctx, fmt.Sprintf("link set %s master br0\nlink set %s %s\n", m.port, m.port, state)); err != nil {
		return fmt.Errorf("%s: connect to switch: %w", m.name, err)
	}
	if m.rate > 0 {
		if err := setRate(ctx, sw, m.port, m.rate); err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
	}
	return nil
}

func (m *machine) consolePath() string { return filepath.Join(m.dir, "console.log") }

// prepareLayer writes the host's own files into its upper layer before its
// first boot: identity, keys, and names of its peers.
func (m *machine) prepareLayer(rootfs string, hosts []*Host) error {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("%s: machine id: %w", m.name, err)
	}
	var etcHosts strings.Builder
	fmt.Fprintf(&etcHosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&etcHosts, "%s\tcontroller\n", ControllerAddr)
	for _, h := range hosts {
		fmt.Fprintf(&etcHosts, "%s\t%s\n", h.Addr(), h.Name())
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{"etc/hostname", []byte(m.name + "\n"), 0o644},
		{"etc/machine-id", []byte(hex.EncodeToString(id[:]) + "\n"), 0o444},
		{"etc/hosts", []byte(etcHosts.String()), 0o644},
		{"etc/vmtest/network.env", []byte(fmt.Sprintf("ADDRESS=%s/%d\n", m.addr, prefixLen)), 0o644},
		{"etc/ssh/ssh_host_ed25519_key", m.hostKey.privatePEM, 0o600},
		{"etc/ssh/ssh_host_ed25519_key.pub", []byte(m.hostKey.authorizedLine() + " root@" + m.name + "\n"), 0o644},
		{"root/.ssh/authorized_keys", []byte(m.net.client.authorizedLine() + " vmtest-client\n"), 0o600},
	}
	upper := filepath.Join(m.dir, "upper")
	for _, f := range files {
		if err := writeLayerFile(rootfs, upper, f.path, f.data, f.mode); err != nil {
			return fmt.Errorf("%s: write %q: %w", m.name, f.path, err)
		}
	}
	return nil
}

// writeLayerFile writes rel into an overlayfs upper layer. Missing parent
// directories get the owner and mode of the lower layer's, so the merged
// tree looks as it would if the file had been written through the overlay.
func writeLayerFile(lower, upper, rel string, data []byte, mode os.FileMode) error {
	parts := strings.Split(filepath.Dir(rel), "/")
	for i := range parts {
		sub := filepath.Join(parts[:i+1]...)
		up := filepath.Join(upper, sub)
		if _, err := os.Lstat(up); err == nil {
			continue
		}
		perm, uid, gid := os.FileMode(0o700), 0, 0
		st, err := os.Lstat(filepath.Join(lower, sub))
		switch {
		case err == nil && !st.IsDir():
			return fmt.Errorf("lower layer: %q is not a directory", sub)
		case err == nil:
			perm = st.Mode().Perm()
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				uid, gid = int(sys.Uid), int(sys.Gid)
			}
		case !os.IsNotExist(err):
			return err
		}
		if err := os.Mkdir(up, perm); err != nil {
			return err
		}
		if err := os.Chmod(up, perm); err != nil {
			return err
		}
		if err := os.Lchown(up, uid, gid); err != nil {
			return err
		}
	}
	p := filepath.Join(upper, rel)
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// bootScript runs as the host's first process, already in the host's
// outer network namespace, in a private mount namespace and in the boot's
// cgroup: it joins the legacy name=systemd cgroup of hybrid hosts, mounts
// the overlay, hides nspawn's runtime directory from the real /run, makes
// its view of /sys read-only, and becomes systemd-nspawn.
//
// With /sys writable, nspawn assumes udev runs and refuses to move an
// interface udev has not initialized; udev does not run where the tests do.
const bootScript = `set -e
exec 3<&-
if [ -n "$VMTEST_LEGACY_PROCS" ]; then echo $$ >"$VMTEST_LEGACY_PROCS"; fi
mount -o remount,bind,ro /sys
mount -t overlay vmtest -o "lowerdir=$VMTEST_LOWER,upperdir=$VMTEST_UPPER,workdir=$VMTEST_WORK,index=off" "$VMTEST_ROOT"
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755,size=1m vmtest /run/systemd/nspawn
unset VMTEST_LEGACY_PROCS VMTEST_LOWER VMTEST_UPPER VMTEST_WORK VMTEST_ROOT
exec "$@"
`

// startLocked starts systemd-nspawn for a new boot. m.mu is held.
func (m *machine) startLocked(ctx context.Context) error {
	// The empty cgroups of earlier boots go; a failure here only leaves
	// them for the final cleanup.
	_ = m.cg.removeChildren()
	m.boots++
	bootCg := m.cg.child("boot" + strconv.Itoa(m.boots))
	execCg := m.cg.child("exec" + strconv.Itoa(m.boots))
	if err := bootCg.create(); err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	if err := os.Mkdir(execCg.path(), 0o755); err != nil {
		return fmt.Errorf("%s: create cgroup: %w", m.name, err)
	}
	if err := m.linkLocked(ctx); err != nil {
		return err
	}
	cgdir, err := os.Open(bootCg.path())
	if err != nil {
		return fmt.Errorf("%s: open cgroup: %w", m.name, err)
	}
	defer cgdir.Close()
	console, err := os.OpenFile(m.consolePath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("%s: open log: %w", m.name, err)
	}
	fmt.Fprintf(console, "vmtest: %s: boot %d at %s\n", m.name, m.boots, time.Now().Format(time.RFC3339Nano))
	legacy := ""
	if p := bootCg.legacyPath(); p != "" {
		legacy = filepath.Join(p, "cgroup.procs")
	}
	root := filepath.Join(m.dir, "root")
	cmd := exec.Command("nsenter", "--net=/proc/self/fd/3", "--",
		"/bin/sh", "-c", bootScript, "vmtest-boot",
		"systemd-nspawn",
		"--boot",
		"--register=no",
		"--keep-unit",
		"--directory="+root,
		"--machine="+m.name,
		// Moves eth0 into a private network namespace of the container,
		// which then also gets its own sysfs and a writable /proc/sys/net.
		"--network-interface=eth0",
		"--link-journal=no",
		"--resolv-conf=off",
		"--timezone=off",
		"--console=read-only",
	)
	cmd.ExtraFiles = []*os.File{m.ns.f}
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"VMTEST_LEGACY_PROCS=" + legacy,
		"VMTEST_LOWER=" + m.net.rootfs,
		"VMTEST_UPPER=" + filepath.Join(m.dir, "upper"),
		"VMTEST_WORK=" + filepath.Join(m.dir, "work"),
		"VMTEST_ROOT=" + root,
		// The container sees a plain cgroup v2 tree even on a hybrid host.
		"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1",
		// No lock files next to the image: the run owns its directories.
		"SYSTEMD_NSPAWN_LOCK=0",
	}
	cmd.Stdout, cmd.Stderr = console, console
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:       true,
		Unshareflags: syscall.CLONE_NEWNS, // Go makes / private in it
		UseCgroupFD:  true,
		CgroupFD:     int(cgdir.Fd()),
	}
	if err := cmd.Start(); err != nil {
		console.Close()
		return fmt.Errorf("%s: start systemd-nspawn: %w", m.name, err)
	}
	inst := &instance{cmd: cmd, done: make(chan struct{}), execCg: execCg}
	m.inst = inst
	go m.monitor(inst, console)
	return nil
}

// monitor waits for one boot's nspawn to exit. A reboot from inside the
// host (nspawn's exit status 133) boots it again, as a real machine would.
func (m *machine) monitor(inst *instance, console *os.File) {
	inst.err = inst.cmd.Wait()
	fmt.Fprintf(console, "vmtest: %s: systemd-nspawn exited: %v\n", m.name, inst.err)
	console.Close()
	close(inst.done)

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inst != inst || m.stopping {
		return
	}
	if inst.cmd.ProcessState != nil && inst.cmd.ProcessState.ExitCode() == 133 {
		ctx, cancel := context.WithTimeout(m.net.ctx, time.Minute)
		defer cancel()
		if err := m.startLocked(ctx); err != nil {
			m.net.logf("vmtest: %s: boot after reboot: %v", m.name, err)
			m.inst = nil
			return
		}
		// Whoever rebooted the host (a test's Reboot, or a program inside
		// it, such as deploy reboot), the new boot gets its PID 1 found
		// (for Run and Command) and its bandwidth limit, as at any boot.
		next := m.inst
		go func() {
			ctx, cancel := context.WithTimeout(m.net.ctx, m.net.cfg.bootTimeout)
			defer cancel()
			if err := m.waitReady(ctx, next); err != nil && !next.exited() && m.net.ctx.Err() == nil {
				m.net.logf("vmtest: %s: after reboot: %v", m.name, err)
			}
		}()
		return
	}
	m.net.logf("vmtest: %s: stopped: %v", m.name, inst.err)
	m.inst = nil
}

// current returns the running boot, or nil.
func (m *machine) current() *instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inst == nil || m.inst.exited() {
		return nil
	}
	return m.inst
}

// boot starts the host and waits until it is up.
func (m *machine) boot(ctx context.Context) error {
	m.mu.Lock()
	if m.inst != nil && !m.inst.exited() {
		m.mu.Unlock()
		return fmt.Errorf("boot %s: already running", m.name)
	}
	err := m.startLocked(ctx)
	inst := m.inst
	m.mu.Unlock()
	if err != nil {
		return err
	}
	return m.waitReady(ctx, inst)
}

// findLeader finds the container's PID 1: a process in the host's cgroup
// that is PID 1 of its own PID namespace and runs systemd (before that it is
// still nspawn setting up, in the wrong root).
func (m *machine) findLeader() (int, error) {
	pids, err := m.cg.pids()
	if err != nil {
		return 0, err
	}
	for _, pid := range pids {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(status)) {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "NSpid:" && f[len(f)-1] == "1" {
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
				if strings.TrimSpace(string(comm)) == "systemd" {
					return pid, nil
				}
			}
		}
	}
	return 0, nil
}

// waitReady waits until systemd in inst has finished booting. A degraded
// system is ready too, with its failed units logged.
func (m *machine) waitReady(ctx context.Context, inst *instance) error {
	start := time.Now()
	state := "not started"
	for {
		if inst.exited() {
			return fmt.Errorf("boot %s: systemd-nspawn exited: %v\n%s", m.name, inst.err, tailFile(m.consolePath(), 30))
		}
		if ctx.Err() != nil {
			return fmt.Errorf("boot %s: not up after %v (state %q): %w\n%s", m.name,
				time.Since(start).Round(time.Millisecond), state, ctx.Err(), tailFile(m.consolePath(), 30))
		}
		m.mu.Lock()
		leader := inst.leader
		m.mu.Unlock()
		if leader == 0 {
			pid, err := m.findLeader()
			if err != nil {
				return fmt.Errorf("boot %s: %w", m.name, err)
			}
			if pid == 0 {
				sleep(ctx, 10*time.Millisecond)
				continue
			}
			m.mu.Lock()
			inst.leader = pid
			rate := m.rate
			m.mu.Unlock()
			leader = pid
			if rate > 0 {
				if err := setRate(ctx, leaderNetns(pid), "eth0", rate); err != nil {
					return fmt.Errorf("boot %s: %w", m.name, err)
				}
			}
		}
		out, _ := m.command(ctx, inst, leader, "systemctl", "is-system-running", "--wait").Output()
		state = strings.TrimSpace(string(out))
		switch state {
		case "running":
			return nil
		case "degraded":
			failed, _ := m.command(ctx, inst, leader, "systemctl", "--failed", "--no-legend", "--plain").Output()
			m.net.logf("vmtest: %s: booted degraded; failed units:\n%s", m.name, failed)
			return nil
		}
		sleep(ctx, 50*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// guestEnv is the environment of commands run in a host.
var guestEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"USER=root",
	"LOGNAME=root",
	"LANG=C.UTF-8",
	"TERM=dumb",
	"SYSTEMD_PAGER=",
}

// command runs a program in the namespaces of the host's PID 1. It first
// moves itself into the boot's cgroup for commands, so [Host.Crash] kills it
// too. (Moving, rather than cloning into the cgroup, needs no descriptor
// that would have to stay open until the caller starts the command.)
func (m *machine) command(ctx context.Context, inst *instance, leader int, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{
		"-c", `echo $$ >"$0" && exec "$@"`,
		filepath.Join(inst.execCg.path(), "cgroup.procs"),
		"nsenter",
		"--target=" + strconv.Itoa(leader),
		"--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
		"--root", "--wd", "--", name}, args...)...)
	cmd.Env = guestEnv
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Command returns a command that runs the program name inside the host, as
// root in / with a minimal environment, for callers that need streams. It
// fails when the host is not running.
func (h *Host) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	inst := h.m.current()
	if inst == nil {
		return nil, fmt.Errorf("run in %s: host is down", h.m.name)
	}
	h.m.mu.Lock()
	leader := inst.leader
	h.m.mu.Unlock()
	if leader == 0 {
		return nil, fmt.Errorf("run in %s: host is still booting", h.m.name)
	}
	return h.m.command(ctx, inst, leader, name, args...), nil
}

// CommandError is the error of a command that ran in a host and failed.
type CommandError struct {
	Host, Script   string
	Stdout, Stderr string
	Err            error // from os/exec: usually an *exec.ExitError
}

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("run %q in %s: %v", e.Script, e.Host, e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + tailLines([]byte(s), 10)
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

// Run runs script with /bin/sh -c inside the host and returns its standard
// output. Its error is a *[CommandError] when the script ran and failed.
func (h *Host) Run(ctx context.Context, script string) (string, error) {
	stdout, _, err := h.run(ctx, script)
	return stdout, err
}

func (h *Host) run(ctx context.Context, script string) (stdout, stderr string, err error) {
	cmd, err := h.Command(ctx, "/bin/sh", "-c", script)
	if err != nil {
		return "", "", err
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), e.String(), &CommandError{Host: h.m.name, Script: script, Stdout: o.String(), Stderr: e.String(), Err: err}
	}
	return o.String(), e.String(), nil
}

// ctx returns a context for one command or wait of the test.
func (h *Host) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(h.tb.Context(), h.m.net.cfg.commandTimeout)
}

// Succeed runs script inside the host and returns its standard output; the
// test fails if the script fails.
func (h *Host) Succeed(script string) string {
	h.tb.Helper()
	ctx, cancel := h.ctx()
	defer cancel()
	out, stderr, err := h.run(ctx, script)
	if err != nil {
		h.tb.Fatalf("vmtest: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
	}
	return out
}

// Fail runs script inside the host and returns its standard output and
// error, concatenated; the test fails if the script succeeds.
func (h *Host) Fail(script string) string {
	h.tb.Helper()
	ctx, cancel := h.ctx()
	defer cancel()
	out, stderr, err := h.run(ctx, script)
	var ce *CommandError
	if err == nil {
		h.tb.Fatalf("vmtest: run %q in %s: succeeded, want failure; stdout:\n%s", script, h.m.name, out)
	} else if !errors.As(err, &ce) {
		h.tb.Fatalf("vmtest: %v", err)
	}
	return out + stderr
}

// WaitForUnit waits until the systemd unit is active; the test fails if it
// fails or the wait times out.
func (h *Host) WaitForUnit(unit string) {
	h.tb.Helper()
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.waitForUnit(ctx, unit); err != nil {
		h.tb.Fatalf("vmtest: %v", err)
	}
}

func (h *Host) waitForUnit(ctx context.Context, unit string) error {
	state := ""
	for {
		out, err := h.Run(ctx, "systemctl show --property=ActiveState --value -- "+shellQuote(unit))
		state = strings.TrimSpace(out)
		switch {
		case err == nil && state == "active":
			return nil
		case err == nil && state == "failed":
			status, _, _ := h.run(ctx, "systemctl status --no-pager --full -n 30 -- "+shellQuote(unit))
			return fmt.Errorf("wait for unit %q on %s: it failed:\n%s", unit, h.m.name, status)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for unit %q on %s: still %q: %w", unit, h.m.name, state, ctx.Err())
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// WaitForOpenPort waits until a process in the host listens on the TCP
// port, on any address; the test fails if the wait times out.
func (h *Host) WaitForOpenPort(port int) {
	h.tb.Helper()
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.waitForOpenPort(ctx, port); err != nil {
		h.tb.Fatalf("vmtest: %v", err)
	}
}

func (h *Host) waitForOpenPort(ctx context.Context, port int) error {
	script := fmt.Sprintf("ss -Htln 'sport = :%d'", port)
	for {
		out, err := h.Run(ctx, script)
		if err == nil && strings.TrimSpace(out) != "" {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for port %d on %s: %w", port, h.m.name, ctx.Err())
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// Dial connects with TCP to port on the host from the switch namespace.
func (h *Host) Dial(ctx context.Context, port int) (net.Conn, error) {
	return h.m.net.Dial(ctx, h.Addr().String(), port)
}

// Logs returns the host's console since the run began, across boots:
// systemd's messages and, forwarded by journald, the whole journal.
func (h *Host) Logs() string {
	b, err := os.ReadFile(h.m.consolePath())
	if err != nil {
		return fmt.Sprintf("vmtest: read log of %s: %v", h.m.name, err)
	}
	return string(b)
}

// Crash kills every process of the host at once, as a power cut would stop
// a machine, but keeps its disk layer (with whatever the kernel had
// accepted: this is not a power loss for the page cache). [Host.Boot]
// starts it again.
func (h *Host) Crash() {
	h.tb.Helper()
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.m.crash(ctx); err != nil {
		h.tb.Fatalf("vmtest: %v", err)
	}
}

func (m *machine) crash(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopping = true
	defer func() { m.stopping = false }()
	if err := m.cg.kill(ctx); err != nil {
		return fmt.Errorf("crash %s: %w", m.name, err)
	}
	if inst := m.inst; inst != nil {
		select {
		case <-inst.done:
		case <-ctx.Done():
			return fmt.Errorf("crash %s: systemd-nspawn still running: %w", m.name, ctx.Err())
		}
	}
	m.inst = nil
	return m.cg.removeChildren()
}

// Boot starts a host that is down and waits until it is up.
func (h *Host) Boot() {
	h.tb.Helper()
	ctx, cancel := context.WithTimeout(h.tb.Context(), h.m.net.cfg.bootTimeout)
	defer cancel()
	if err := h.m.boot(ctx); err != nil {
		h.tb.Fatalf("vmtest: %v", err)
	}
}

// Reboot reboots the host cleanly (systemctl reboot) and waits until it is
// up again.
func (h *Host) Reboot() {
	h.tb.Helper()
	ctx, cancel := context.WithTimeout(h.tb.Context(), h.m.net.cfg.bootTimeout+time.Minute)
	defer cancel()
	if err := h.reboot(ctx); err != nil {
		h.tb.Fatalf("vmtest: %v", err)
	}
}

func (h *Host) reboot(ctx context.Context) error {
	old := h.m.current()
	if old == nil {
		return fmt.Errorf("reboot %s: host is down", h.m.name)
	}
	// It returns once the job is queued, or dies with the host: either way
	// nspawn then exits with 133 and monitor boots the host again.
	_, _ = h.Run(ctx, "systemctl reboot")
	return h.awaitReboot(ctx, old)
}

// awaitReboot waits until boot old has ended (nspawn exited) and the next
// one is ready. Nothing runs in the host meanwhile: a process started in
// it while it shuts down can keep its nspawn from exiting.
func (h *Host) awaitReboot(ctx context.Context, old *instance) error {
	select {
	case <-old.done:
	case <-ctx.Done():
		return fmt.Errorf("reboot %s: still running: %w", h.m.name, ctx.Err())
	}
	for {
		h.m.mu.Lock()
		inst := h.m.inst
		h.m.mu.Unlock()
		if inst == nil {
			return fmt.Errorf("reboot %s: host powered off instead: %v", h.m.name, old.err)
		}
		if inst != old {
			return h.m.waitReady(ctx, inst)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("reboot %s: %w", h.m.name, ctx.Err())
		}
		sleep(ctx, 5*time.Millisecond)
	}
}

// shutdown kills the host for good and releases its resources.
func (m *machine) shutdown(ctx context.Context) error {
	var errs []error
	m.mu.Lock()
	m.stopping = true // no more reboots
	m.mu.Unlock()
	if err := m.crash(ctx); err != nil {
		errs = append(errs, err)
	}
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	errs = append(errs, m.ns.close())
	return errors.Join(errs...)
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
