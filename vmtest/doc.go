// Package vmtest starts real test machines for end-to-end tests: Debian
// bookworm hosts with systemd as PID 1 and the OpenSSH sshd, each booted with
// systemd-nspawn in its own network namespace, with fault injection (cut,
// throttle, crash, reboot).
//
// # Hosts
//
// [Start] boots n hosts and returns a [Network]. Each [Host] is a
// `systemd-nspawn --boot --register=no --keep-unit` container with:
//
//   - its own network namespace, made by nspawn at each boot, with an eth0
//     whose veth peer is a port of a bridge in a private "switch" namespace;
//     addresses come from 10.231.0.0/16, which exists only inside namespaces
//     this package creates (the root namespace has no interface or route
//     into it, so no test traffic can leave); the host sets its own address
//     early in boot (vmtest-network.service) and has its own sysfs and a
//     writable /proc/sys/net;
//   - a MAC address derived from its IPv4 address: the link is made anew at
//     each boot, and peers must not hold a stale ARP entry for it;
//   - a private writable overlayfs layer over a shared, read-only, cached
//     rootfs; the layer survives [Host.Crash] and [Host.Reboot];
//   - its own cgroup (cgroup v2), so [Host.Crash] can kill every process of
//     the host at once with cgroup.kill (killing nspawn alone would orphan the
//     container);
//   - freshly generated ed25519 SSH host keys ([Host.HostKey]) and the
//     network's client key ([Network.Signer]) in root's authorized_keys.
//
// Commands run inside a host through nsenter into the namespaces of its
// PID 1 ([Host.Run], [Host.Succeed], [Host.Fail]), so they work even while
// the host's network is cut. The test process reaches hosts over the network
// with [Network.Dial] or [Host.SSH]: the socket is created inside the switch
// namespace, from the controller address [ControllerAddr].
//
// # Faults
//
// [Host.Cut] drops all traffic of a host (its switch port goes down) and
// [Host.Restore] brings it back; [Host.Throttle] limits its bandwidth in both
// directions with a token bucket filter; both last across boots.
// [Host.Crash] kills everything and keeps the disk layer; [Host.Boot] starts
// it again; [Host.Reboot] reboots it cleanly through systemd, and a reboot
// from inside the host brings it back the same way. The development
// machine's kernel has no netem, so latency is not offered.
//
// # The image cache
//
// The root filesystem is made once per machine with debootstrap (variant
// minbase plus systemd, systemd-sysv, openssh-server, dbus, iproute2, udev,
// procps, sudo, nftables and rsync, the last for the copy benchmarks) under
// an flock, and reused by every later run. It lives in
// $DEPLOY_VMTEST_CACHE, by default /var/cache/deploy-vmtest, under a name that
// hashes the recipe, so a changed recipe builds a new image.
//
// # Cleanup
//
// Everything a [Network] creates is removed by t.Cleanup, also when the test
// fails or panics. Mounts live only in per-host private mount namespaces and
// network namespaces are held only by the processes and file descriptors of
// the run, so both vanish with it. Each run holds an flock on its state
// directory; [Start] first sweeps runs whose lock is free (left by a killed
// test binary): it kills their cgroups and removes their state. Runs of other
// live processes are never touched.
//
// # Requirements
//
// Root, cgroup v2 with cgroup.kill (Linux 5.14 or later; a "hybrid" host with
// the legacy name=systemd hierarchy works too), overlayfs, network
// namespaces, and the programs systemd-nspawn (Debian: systemd-container),
// debootstrap, nsenter, ip and tc (iproute2); building the image needs a
// Debian mirror: the [Mirror] that the machine's own apt sources name
// (/etc/apt/sources.list and /etc/apt/sources.list.d), unless
// $DEPLOY_VMTEST_MIRROR names another. No systemd on the machine itself:
// nspawn runs with --register=no and --keep-unit. [Available] reports what
// is missing. When something is, [Start] skips the test with that message,
// except when the environment has CI=true: then the test fails.
package vmtest
