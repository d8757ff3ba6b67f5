package vmtest

import (
	"context"
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
	"testing"
	"time"
)

// ControllerAddr is the test process's own address on the switch: hosts
// reach a listener from [Network.Listen] there.
var ControllerAddr = netip.MustParseAddr("10.231.0.1")

// prefixLen is the length of the test subnet 10.231.0.0/16.
const prefixLen = 16

// MaxHosts is the largest number of hosts one [Network] can have.
const MaxHosts = 250

// hostAddr is the address of the i-th host, counting from 1: 10.231.1.i.
func hostAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 231, 1, byte(i)}) }

// macFor derives a locally administered MAC address from an IPv4 address,
// so an interface made again for the same address has the same MAC.
// kind tells apart the two ends of a link.
func macFor(kind byte, a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02 | kind<<2, 0x00, b[0], b[1], b[2], b[3]}
}

// Network is a set of test hosts on one switch, made by [Start]. Its
// methods may be called from any goroutine.
type Network struct {
	// Hosts are the hosts, named h1, h2, ... with addresses 10.231.1.1,
	// 10.231.1.2, ... Their failing methods report to the test given to
	// [Start]; use [Host.With] in subtests.
	Hosts []*Host

	tb     testing.TB
	ctx    context.Context // the test's context, canceled when it ends
	logf   func(format string, args ...any)
	cfg    config
	rootfs string
	run    *run
	sw     *netns // the switch namespace: bridge br0 and the controller address
	client keyPair

	closeOnce sync.Once
}

// Option configures [Start].
type Option func(*config)

type config struct {
	cacheDir       string
	bootTimeout    time.Duration
	commandTimeout time.Duration
}

// WithCacheDir sets the directory for the image cache and the run state,
// instead of $DEPLOY_VMTEST_CACHE or [DefaultCacheDir]. It must be on a file
// system that can hold an overlayfs upper layer (ext4, xfs, btrfs, tmpfs).
func WithCacheDir(dir string) Option { return func(c *config) { c.cacheDir = dir } }

// WithBootTimeout bounds how long hosts may take to boot (default two
// minutes; building the image on the first run is not counted).
func WithBootTimeout(d time.Duration) Option { return func(c *config) { c.bootTimeout = d } }

// WithTimeout bounds each [Host.Succeed], [Host.Fail] and wait (default five
// minutes).
func WithTimeout(d time.Duration) Option { return func(c *config) { c.commandTimeout = d } }

// Start boots n hosts (1 to [MaxHosts]) and returns when each runs systemd
// to completion of its boot, with sshd listening. Everything is torn down
// by tb.Cleanup. When this machine cannot run test hosts, Start skips the
// test saying what is missing, or fails it if the environment has CI=true.
func Start(tb testing.TB, n int, opts ...Option) *Network {
	tb.Helper()
	requireAvailable(tb)
	if n < 1 || n > MaxHosts {
		tb.Fatalf("vmtest: Start(%d): want 1 to %d hosts", n, MaxHosts)
	}
	nw := &Network{tb: tb, ctx: tb.Context(), logf: tb.Logf, cfg: newConfig(opts)}
	if err := nw.start(n); err != nil {
		tb.Fatalf("vmtest: %v", err)
	}
	return nw
}

// Boot is [Start] for programs rather than tests (cmd/deploy-demo): it boots n
// hosts and returns the network, which the caller must Close. The hosts'
// test helpers that fail a test (Succeed, Fail, WaitForUnit, Cut, ...) need
// a test; use [Host.Run], [Host.Command] and [Network.DialContext].
func Boot(ctx context.Context, n int, logf func(format string, args ...any), opts ...Option) (*Network, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if n < 1 || n > MaxHosts {
		return nil, fmt.Errorf("vmtest: Boot(%d): want 1 to %d hosts", n, MaxHosts)
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	nw := &Network{ctx: ctx, logf: logf, cfg: newConfig(opts)}
	if err := nw.start(n); err != nil {
		nw.close()
		return nil, fmt.Errorf("vmtest: %w", err)
	}
	return nw, nil
}

// Close tears down a network made by [Boot]: hosts, namespaces, cgroups
// and state. (Networks made by [Start] are torn down by the test.)
func (n *Network) Close() { n.close() }

func newConfig(opts []Option) config {
	cfg := config{
		cacheDir:       os.Getenv("DEPLOY_VMTEST_CACHE"),
		bootTimeout:    2 * time.Minute,
		commandTimeout: 5 * time.Minute,
	}
	if cfg.cacheDir == "" {
		cfg.cacheDir = DefaultCacheDir
	}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

func (n *Network) start(count int) error {
	begin := time.Now()
	cacheDir, err := filepath.Abs(n.cfg.cacheDir)
	if err != nil {
		return fmt.Errorf("cache dir: %w", err)
	}
	if err := validPathForOverlay(cacheDir); err != nil {
		return err
	}
	cgm, err := findCgroups()
	if err != nil {
		return fmt.Errorf("find cgroups: missing %w", err)
	}
	imgCtx, cancel := context.WithTimeout(n.ctx, 15*time.Minute)
	n.rootfs, err = ensureImage(imgCtx, cacheDir, n.logf)
	cancel()
	if err != nil {
		return err
	}
	raiseInotify(count, n.logf)
	n.run, err = newRun(n.ctx, cacheDir, cgm, n.logf)
	if err != nil {
		return err
	}
	// From here on, everything made is undone by close.
	if n.tb != nil {
		n.tb.Cleanup(n.close)
	}
	n.logf("vmtest: run %s: state in %s", n.run.id, n.run.dir)

	if n.client, err = newKeyPair("vmtest-client"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.bootTimeout)
	defer cancel()
	if n.sw, err = newNetns(); err != nil {
		return err
	}
	err = n.sw.ip(ctx, fmt.Sprintf(`link set lo up
link add br0 address %s type bridge
addr add %s/%d dev br0
link set br0 up
`, macFor(0, ControllerAddr), ControllerAddr, prefixLen))
	if err != nil {
		return fmt.Errorf("create switch: %w", err)
	}
	for i := 1; i <= count; i++ {
		m, err := n.newMachine(i)
		if err != nil {
			return err
		}
		n.Hosts = append(n.Hosts, &Host{m: m, tb: n.tb})
	}
	for _, h := range n.Hosts {
		if err := h.m.prepareLayer(n.rootfs, n.Hosts); err != nil {
			return err
		}
	}
	booted := time.Now()
	errs := make([]error, len(n.Hosts))
	var wg sync.WaitGroup
	for i, h := range n.Hosts {
		wg.Go(func() { errs[i] = h.m.boot(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	n.logf("vmtest: run %s: %d hosts up in %v (setup %v, boot %v)", n.run.id, count,
		time.Since(begin).Round(time.Millisecond), booted.Sub(begin).Round(time.Millisecond),
		time.Since(booted).Round(time.Millisecond))
	return nil
}

// close tears everything down; it is the run's t.Cleanup.
func (n *Network) close() {
	n.closeOnce.Do(func() {
		if n.run == nil {
			return // start failed before making anything to undo
		}
		// The test's context is canceled by now.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if n.tb != nil && n.tb.Failed() {
			for _, h := range n.Hosts {
				n.logf("vmtest: %s: last lines of its log:\n%s", h.Name(), tailFile(h.m.consolePath(), 40))
			}
		}
		var errs []error
		for _, h := range n.Hosts {
			errs = append(errs, h.m.shutdown(ctx))
		}
		// Anything left in the run's cgroup, whatever its host, goes too.
		errs = append(errs, n.run.cg.kill(ctx))
		if n.sw != nil {
			errs = append(errs, n.sw.close())
		}
		errs = append(errs, n.run.release())
		if err := errors.Join(errs...); err != nil {
			if n.tb != nil {
				n.tb.Errorf("vmtest: clean up run %s: %v", n.run.id, err)
			} else {
				n.logf("vmtest: clean up run %s: %v", n.run.id, err)
			}
		}
	})
}

// Host returns the host with the given name, or nil.
func (n *Network) Host(name string) *Host {
	for _, h := range n.Hosts {
		if h.Name() == name {
			return h
		}
	}
	return nil
}

// resolve turns a host name into its address; other strings pass through.
func (n *Network) resolve(host string) string {
	if h := n.Host(host); h != nil {
		return h.Addr().String()
	}
	return host
}

// Dial connects with TCP to port on host (a host name such as "h1", or an
// address) from the switch namespace. The connection works from any
// goroutine; the root network namespace has no route to the hosts.
func (n *Network) Dial(ctx context.Context, host string, port int) (net.Conn, error) {
	return n.sw.dial(ctx, "tcp", net.JoinHostPort(n.resolve(host), strconv.Itoa(port)))
}

// DialContext is [Network.Dial] with the signature of
// [net.Dialer.DialContext], for clients that take a dial function. The host
// part of address may be a host name.
func (n *Network) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %q: %w", address, err)
	}
	return n.sw.dial(ctx, network, net.JoinHostPort(n.resolve(host), port))
}

// Listen listens in the switch namespace, where hosts reach the test process
// at [ControllerAddr]; address is as for [net.Listen], e.g. ":0".
func (n *Network) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	return n.sw.listen(ctx, network, address)
}

// RunID identifies the run in cgroup names and state directories.
func (n *Network) RunID() string { return n.run.id }

// ControllerCommand returns a command that runs the program name inside the
// switch namespace, where the hosts' addresses are reachable as they are for
// [Network.Dial]: for running the real deploy CLI against test hosts. The
// namespace is passed as file descriptor 3; ExtraFiles the caller appends
// start at 4.
func (n *Network) ControllerCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/proc/self/fd/3", "--", name}, args...)...)
	cmd.ExtraFiles = []*os.File{n.sw.f}
	return cmd
}

// SwitchNetNS returns a path naming the switch namespace for as long as the
// Network lives ("/proc/PID/fd/N" of this process), for programs that must
// enter it themselves, such as an SSH ProxyCommand or a benchmark script
// (`nsenter --net=PATH -- ...`).
func (n *Network) SwitchNetNS() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), n.sw.f.Fd())
}

// inotifySysctls are the per-user inotify limits that every host's systemd
// (and everything in it) draws from: all hosts' processes run as the same
// root, so with the usual 128 instances the 16th host's systemd fails with
// "Failed to create control group inotify object: Too many open files".
var inotifySysctls = []struct {
	path string
	per  int // needed per host, generously
	base int
}{
	{"/proc/sys/fs/inotify/max_user_instances", 64, 1024},
	{"/proc/sys/fs/inotify/max_user_watches", 8192, 65536},
}

// raiseInotify raises the machine's inotify limits to what count hosts
// (beside whatever else runs) need, never lowering them, and says so.
func raiseInotify(count int, logf func(string, ...any)) {
	for _, s := range inotifySysctls {
		want := s.base + s.per*count
		data, err := os.ReadFile(s.path)
		if err != nil {
			continue
		}
		have, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || have >= want {
			continue
		}
		if err := os.WriteFile(s.path, []byte(strconv.Itoa(want)), 0o644); err != nil {
			logf("vmtest: cannot raise %s from %d to %d for %d hosts: %v", filepath.Base(s.path), have, want, count, err)
			continue
		}
		logf("vmtest: raised %s from %d to %d for %d hosts (a machine-wide setting, kept after the run)", filepath.Base(s.path), have, want, count)
	}
}
