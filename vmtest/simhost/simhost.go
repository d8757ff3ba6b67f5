// Package simhost runs tier 2 of the scale harness: lightweight simulated
// hosts, hundreds to thousands of them on one machine.
//
// Tier 2 is a simulation of systemd, not of the agent, the store, the
// network or S3. Each host runs the real deploy-agent with its own store
// and state directory, in its own mount and network namespace, with its
// own address on a bridge and its own SSH ed25519 host key; only the
// systemd calls the agent makes are answered by a recording stand-in, and
// deploy-pull.timer is played by [Timers].
//
// # A host
//
// A host is a holder process (`unshare --mount --net --propagation private
// sleep infinity`) whose namespaces the host's commands join with nsenter.
// Its mount namespace has private /etc (a copy of what the agent and a
// shell need: passwd, group, the dynamic loader's cache, the host key),
// /var/lib/deploy (store, db, profiles), /root, and tmpfs /run and /tmp.
// There is no /run/systemd/system, so the agent runs its activation worker
// and watchdog with setsid, as it does on a machine without systemd.
//
// # The systemd stand-in
//
// A shell script bind-mounted over /usr/bin/systemctl and
// /usr/bin/systemd-run appends each call's argv to
// /run/simhost/systemd-calls.log in the host ([Host.Calls]) and answers as
// a system whose every unit is loaded, enabled and active (is-active:
// active; show: ActiveState=active, SubState=running, Result=success;
// is-system-running: running; every other verb succeeds). systemd-run is
// never expected (the agent does not use it without /run/systemd/system):
// the stand-in records it and fails.
//
// # The network
//
// Each host has a veth into a bridge of the root namespace (at most
// [HostsPerBridge] per bridge: a Linux bridge takes 1024 ports) and an
// address of the bridge's /16; services for the hosts (an S3 server, a
// proxy in front of it) listen on [Network.ServiceAddr], an address of the
// root namespace that every host routes to through its bridge.
//
// # SSH
//
// [Host.StartSSHD] runs the real OpenSSH server in a host, on its address
// with its host key, for push deploys ([PushFleet]).
//
// # Bootstrap
//
// [Host.Bootstrap] gives a host its first generation the way a push deploy
// does on the target, without SSH: the transfer protocol
// ([closure.Send]) into `deploy-agent receive` over the host's stdin and
// stdout, then the system's own `deploy-agent activate --confirm-timeout
// 0` (the health checks confirm, as in pull mode). [Network.SeedStores]
// gives the other hosts the store paths the first one received as hard
// links (store paths are immutable), as an image with the agent would, so
// that a thousand hosts do not hold a thousand copies of the agent.
package simhost

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"
)

// HostsPerBridge is how many hosts share one bridge.
const HostsPerBridge = 500

// Options configure a [Network]. The zero value is ready for use: one
// host in a fresh directory under /var/tmp.
type Options struct {
	// Hosts is how many hosts to start (default 1).
	Hosts int
	// Prefix starts each host's name; its number follows (default "h":
	// h1, h2, ...).
	Prefix string
	// Dir is the work directory: the hosts' directories and the stand-in
	// (default a new directory under /var/tmp; it must not be on a tmpfs
	// that the hosts mount over, such as /tmp).
	Dir string
	// Parallel bounds the set-up commands run at once (default 16).
	Parallel int
	// Logf, if set, logs the harness's steps.
	Logf func(format string, args ...any)
}

// Network is a set of running simulated hosts and the bridges that join
// them to the root namespace.
type Network struct {
	opts    Options
	base    int // bridge k is 10.(base+k).0.0/16
	id      string
	dir     string
	svc     netip.Addr
	bridges []string
	hosts   []*Host
	ownDir  bool
}

// Host is one simulated host.
type Host struct {
	name   string
	index  int
	addr   netip.Addr
	gw     netip.Addr
	dir    string
	key    ed25519.PrivateKey
	pub    ssh.PublicKey
	holder *exec.Cmd
	exited chan struct{}
	veth   string
}

// Check says why this machine cannot run simulated hosts (nil when it
// can): they need root, unshare, nsenter and ip, and network and mount
// namespaces.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("simulated hosts need root (mount and network namespaces)")
	}
	for _, tool := range []string{"unshare", "nsenter", "ip", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("simulated hosts need %s: %w", tool, err)
		}
	}
	out, err := exec.Command("unshare", "--mount", "--net", "--propagation", "private", "true").CombinedOutput()
	if err != nil {
		return fmt.Errorf("this machine cannot make mount and network namespaces: unshare: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Start starts opts.Hosts simulated hosts. Close stops them, also when
// Start fails half-way.
func Start(ctx context.Context, opts Options) (*Network, error) {
	if opts.Hosts <= 0 {
		opts.Hosts = 1
	}
	if opts.Prefix == "" {
		opts.Prefix = "h"
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 16
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if err := Check(); err != nil {
		return nil, err
	}
	b := make([]byte, 2)
	rand.Read(b)
	n := &Network{opts: opts, id: fmt.Sprintf("%02x%02x", b[0], b[1]&0x3f)}
	n.dir = opts.Dir
	if n.dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "simhost-")
		if err != nil {
			return nil, err
		}
		n.dir, n.ownDir = d, true
	}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return nil, err
	}
	if err := n.start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Raise the kernel's limits that a thousand namespaces, their processes
// and the root namespace's neighbour table run into; each only upward.
var sysctls = map[string]int{
	"/proc/sys/kernel/pid_max":                    4194304,
	"/proc/sys/kernel/threads-max":                1000000,
	"/proc/sys/fs/inotify/max_user_instances":     8192,
	"/proc/sys/fs/file-max":                       4194304,
	"/proc/sys/net/ipv4/neigh/default/gc_thresh1": 4096,
	"/proc/sys/net/ipv4/neigh/default/gc_thresh2": 8192,
	"/proc/sys/net/ipv4/neigh/default/gc_thresh3": 16384,
	"/proc/sys/net/core/somaxconn":                8192,
	"/proc/sys/net/ipv4/tcp_max_syn_backlog":      8192,
	"/proc/sys/user/max_net_namespaces":           65536,
	"/proc/sys/user/max_mnt_namespaces":           65536,
}

// RaiseLimits raises the kernel limits simulated hosts run into (each only
// upward, those the kernel has) and this process's open files.
func RaiseLimits(logf func(string, ...any)) {
	for p, want := range sysctls {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		have, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || have >= want {
			continue
		}
		if err := os.WriteFile(p, []byte(strconv.Itoa(want)), 0o644); err != nil {
			logf("simhost: raising %s to %d: %v", p, want, err)
			continue
		}
		logf("simhost: raised %s from %d to %d", p, have, want)
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

func (n *Network) logf(format string, args ...any) { n.opts.Logf("simhost: "+format, args...) }

func (n *Network) start(ctx context.Context) error {
	RaiseLimits(n.opts.Logf)
	if err := os.WriteFile(filepath.Join(n.dir, "systemd-standin"), []byte(standin), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll("/var/lib/deploy", 0o755); err != nil {
		return fmt.Errorf("the mount point /var/lib/deploy: %w", err)
	}
	// The services' address: an address of the root namespace (on the
	// first bridge) that every host routes to through its own bridge.
	n.svc = netip.AddrFrom4([4]byte{10, 99, byte(n.idByte()), 1})
	bridges := (n.opts.Hosts + HostsPerBridge - 1) / HostsPerBridge
	base, err := freeSubnets(ctx, bridges)
	if err != nil {
		return err
	}
	n.base = base
	for k := 0; k < bridges; k++ {
		br := fmt.Sprintf("sim%sb%d", n.id, k)
		if err := run(ctx, "ip", "link", "add", br, "type", "bridge"); err != nil {
			return err
		}
		n.bridges = append(n.bridges, br)
		if err := run(ctx, "ip", "addr", "add", n.gateway(k).String()+"/16", "dev", br); err != nil {
			return err
		}
		if err := run(ctx, "ip", "link", "set", br, "up"); err != nil {
			return err
		}
		if k == 0 {
			if err := run(ctx, "ip", "addr", "add", n.svc.String()+"/32", "dev", br); err != nil {
				return err
			}
		}
	}
	n.hosts = make([]*Host, n.opts.Hosts)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n.opts.Parallel)
	var mu sync.Mutex
	started := 0
	for i := range n.opts.Hosts {
		g.Go(func() error {
			h, err := n.startHost(gctx, i)
			mu.Lock()
			defer mu.Unlock()
			if h != nil {
				n.hosts[i] = h
			}
			if err != nil {
				return err
			}
			started++
			if started%100 == 0 {
				n.logf("%d of %d hosts started", started, n.opts.Hosts)
			}
			return nil
		})
	}
	return g.Wait()
}

// idByte is a byte of the network's id, for its addresses.
func (n *Network) idByte() int {
	v, _ := strconv.ParseUint(n.id, 16, 16)
	return int(v % 250)
}

// gateway is bridge k's address: 10.(base+k).0.1.
func (n *Network) gateway(k int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(n.base + k), 0, 1})
}

// freeSubnets returns the first B of bridges consecutive /16s 10.B.0.0/16,
// B from 100 to 249, that no route of the root namespace uses: another
// Network running on the machine (a benchmark beside a test) keeps its
// own.
func freeSubnets(ctx context.Context, bridges int) (int, error) {
	out, err := exec.CommandContext(ctx, "ip", "-4", "-o", "route", "show").Output()
	if err != nil {
		return 0, fmt.Errorf("ip route: %w", err)
	}
	used := map[int]bool{}
	for _, f := range strings.Fields(string(out)) {
		if p, err := netip.ParsePrefix(f); err == nil {
			a := p.Addr().As4()
			if a[0] == 10 && p.Bits() <= 16 {
				for b := range 256 {
					if p.Contains(netip.AddrFrom4([4]byte{10, byte(b), 0, 0})) {
						used[b] = true
					}
				}
			} else if a[0] == 10 {
				used[int(a[1])] = true
			}
		}
	}
	for base := 100; base+bridges <= 250; base++ {
		free := true
		for k := range bridges {
			free = free && !used[base+k]
		}
		if free {
			return base, nil
		}
	}
	return 0, fmt.Errorf("simhost: no %d free /16s in 10.100.0.0-10.249.255.255 for %d bridges", bridges, bridges)
}

func (n *Network) startHost(ctx context.Context, i int) (*Host, error) {
	k, j := i/HostsPerBridge, i%HostsPerBridge
	h := &Host{
		name:  fmt.Sprintf("%s%d", n.opts.Prefix, i+1),
		index: i,
		addr:  netip.AddrFrom4([4]byte{10, byte(n.base + k), byte(1 + j/250), byte(2 + j%250)}),
		gw:    n.gateway(k),
		dir:   filepath.Join(n.dir, "hosts", fmt.Sprintf("%s%d", n.opts.Prefix, i+1)),
		veth:  fmt.Sprintf("sim%sh%d", n.id, i),
	}
	if err := h.prepareDir(); err != nil {
		return nil, err
	}
	h.holder = exec.Command("unshare", "--mount", "--net", "--propagation", "private", "sleep", "infinity")
	h.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.holder.Start(); err != nil {
		return nil, fmt.Errorf("%s: starting its holder: %w", h.name, err)
	}
	h.exited = make(chan struct{})
	go func() { h.holder.Wait(); close(h.exited) }()
	// unshare execs sleep once the namespaces exist: wait for that.
	self, _ := os.Readlink("/proc/self/ns/net")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", h.PID())); err == nil && ns != self {
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", h.PID())); err == nil && strings.HasSuffix(exe, "/sleep") {
				break
			}
		}
		if time.Now().After(deadline) {
			return h, fmt.Errorf("%s: its namespaces did not appear", h.name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := run(ctx, "ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(h.PID())); err != nil {
		return h, err
	}
	if err := run(ctx, "ip", "link", "set", h.veth, "master", n.bridges[k], "up"); err != nil {
		return h, err
	}
	standin := filepath.Join(n.dir, "systemd-standin")
	script := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755,size=64m tmpfs /run
mkdir -p /run/simhost && : > /run/simhost/systemd-calls.log
mount -t tmpfs -o mode=1777,size=64m tmpfs /tmp
mount --bind %[1]s/etc /etc
mount --bind %[1]s/state /var/lib/deploy
mount --bind %[1]s/root /root
mount --bind %[2]s /usr/bin/systemctl
mount --bind %[2]s /usr/bin/systemd-run
ip link set lo up
ip addr add %[3]s/16 dev eth0
ip link set eth0 up
ip route add default via %[4]s
`, h.dir, standin, h.addr, h.gw)
	if out, err := h.Command(ctx, "sh", "-c", script).CombinedOutput(); err != nil {
		return h, fmt.Errorf("%s: setting up its namespaces: %v: %s", h.name, err, bytes.TrimSpace(out))
	}
	return h, nil
}

// etcFiles are the files of /etc a host gets a copy of: accounts, name
// resolution, the dynamic loader's cache (for the shell and the tools of
// health checks).
var etcFiles = []string{"passwd", "group", "shadow", "gshadow", "nsswitch.conf", "hosts", "ld.so.cache", "ld.so.conf", "localtime", "login.defs"}

// prepareDir makes the host's directory: etc (with a new SSH ed25519 host
// key), state, root.
func (h *Host) prepareDir() error {
	for _, d := range []string{"etc/ssh", "etc/systemd/system", "state", "root", "etc/ld.so.conf.d"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			return err
		}
	}
	for _, f := range etcFiles {
		data, err := os.ReadFile(filepath.Join("/etc", f))
		if err != nil {
			continue
		}
		fi, _ := os.Stat(filepath.Join("/etc", f))
		if err := os.WriteFile(filepath.Join(h.dir, "etc", f), data, fi.Mode().Perm()); err != nil {
			return err
		}
	}
	os.WriteFile(filepath.Join(h.dir, "etc", "hostname"), []byte(h.name+"\n"), 0o644)
	os.WriteFile(filepath.Join(h.dir, "etc", "machine-id"), []byte(fmt.Sprintf("%032x\n", h.index+1)), 0o444)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	h.key = priv
	if h.pub, err = ssh.NewPublicKey(pub); err != nil {
		return err
	}
	blk, err := ssh.MarshalPrivateKey(priv, "root@"+h.name)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.dir, "etc/ssh/ssh_host_ed25519_key"), pem.EncodeToMemory(blk), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(h.dir, "etc/ssh/ssh_host_ed25519_key.pub"), []byte(h.HostKeyLine()+"\n"), 0o644)
}

// Hosts are the network's hosts, in order (h1 first).
func (n *Network) Hosts() []*Host { return n.hosts }

// Host returns the host named name, nil when there is none.
func (n *Network) Host(name string) *Host {
	for _, h := range n.hosts {
		if h != nil && h.name == name {
			return h
		}
	}
	return nil
}

// ServiceAddr is the address of the root namespace that every host
// reaches: services for the hosts listen there.
func (n *Network) ServiceAddr() netip.Addr { return n.svc }

// Dir is the network's work directory.
func (n *Network) Dir() string { return n.dir }

// Close stops every host (the holder and every process in its
// namespaces) and removes the bridges and, when Start made it, the work
// directory.
func (n *Network) Close() error {
	var nets = map[string]bool{}
	for _, h := range n.hosts {
		if h == nil || h.holder == nil || h.holder.Process == nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", h.PID())); err == nil {
			nets[ns] = true
		}
	}
	// Every process in a host's namespaces: the holder, and whatever the
	// agent left running (a watchdog, a poll).
	for range 3 {
		procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
		killed := 0
		for _, p := range procs {
			ns, err := os.Readlink(p)
			if err != nil || !nets[ns] {
				continue
			}
			pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
			if pid > 1 && syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
		if killed == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, h := range n.hosts {
		if h != nil && h.exited != nil {
			<-h.exited
		}
	}
	ctx := context.Background()
	for _, br := range n.bridges {
		run(ctx, "ip", "link", "del", br)
	}
	if n.ownDir {
		return os.RemoveAll(n.dir)
	}
	return nil
}

// Name is the host's name.
func (h *Host) Name() string { return h.name }

// Addr is the host's address.
func (h *Host) Addr() netip.Addr { return h.addr }

// PID is the host's holder process: its namespaces are this process's.
func (h *Host) PID() int { return h.holder.Process.Pid }

// Dir is the host's directory in the root namespace: etc/ is its /etc,
// state/ its /var/lib/deploy, root/ its /root.
func (h *Host) Dir() string { return h.dir }

// HostKeyLine is the host's SSH ed25519 public key, "ssh-ed25519 AAAA...".
func (h *Host) HostKeyLine() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(h.pub)))
}

// serviceEnv is the environment systemd gives a system service.
var serviceEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}

// Command is name with args run inside the host (its mount and network
// namespaces, through nsenter), with the environment systemd gives a
// system service.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", strconv.Itoa(h.PID()), "--mount", "--net", "--", name}, args...)...)
	cmd.Env = serviceEnv
	cmd.Dir = "/"
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs a shell command inside the host and returns its standard
// output; the error carries its standard error.
func (h *Host) Run(ctx context.Context, script string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := h.Command(ctx, "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %q: %v: %s", h.name, script, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// ReadFile reads path as the host sees it.
func (h *Host) ReadFile(ctx context.Context, path string) ([]byte, error) {
	cmd := h.Command(ctx, "cat", "--", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s: %v: %s", h.name, path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// CallsLog is where the systemd stand-in records each call, in the host.
const CallsLog = "/run/simhost/systemd-calls.log"

// Calls are the systemd calls the host's stand-in answered so far, each
// as its argv ("systemctl", "is-active", "--", "app.service"), read
// through /proc/PID/root (no process started in the host).
func (h *Host) Calls(ctx context.Context) ([][]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s", h.PID(), CallsLog))
	if err != nil {
		return nil, err
	}
	var calls [][]string
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line != "" {
			calls = append(calls, strings.Fields(line))
		}
	}
	return calls, nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Generations is how many generations the host has (its
// profiles/system-N-link), read from the root namespace.
func (h *Host) Generations() (int, error) {
	links, err := filepath.Glob(filepath.Join(h.dir, "state", "profiles", "system-*-link"))
	return len(links), err
}
