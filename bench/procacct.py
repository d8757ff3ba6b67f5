#!/usr/bin/python3
"""Counts the processes that ran in vmtest hosts, with BSD process accounting.

  bench/procacct.py on  CGROUP DIR   # start accounting in each host's PID namespace
  bench/procacct.py off CGROUP       # stop it
  bench/procacct.py count DIR        # processes per host by command name

CGROUP is a vmtest run's cgroup directory (/sys/fs/cgroup/unified/deploy-vmtest/RUN):
each host hN under it has a container whose init is systemd. Accounting is
per PID namespace (acct(2) records the processes of the caller's namespace),
so a process that enters a host's namespace and calls acct(2) there counts
exactly that host's processes, each once, when it exits, under the name it
last exec'd (a shell that execs the agent counts as deploy-agent). Each host
writes DIR/hN.acct. Root only. Prints, for count, one line per host:
NAME=PROCESSES/CPU-SECONDS per command name, then the same averaged over the
hosts. Processes still running (systemd, sshd's listener, services) are
not counted; python3 is this tool's own (one per on).
"""
import collections
import ctypes
import os
import struct
import sys

CLONE_NEWPID = 0x20000000


def hosts(cgroup):
    """Yields (name, pid of the container's init) for each host."""
    for name in sorted(os.listdir(cgroup)):
        d = os.path.join(cgroup, name)
        if not os.path.isdir(d):
            continue
        mine = os.readlink("/proc/self/ns/pid")
        for root, _, files in os.walk(d):
            if "cgroup.procs" not in files:
                continue
            for line in open(os.path.join(root, "cgroup.procs")):
                pid = line.strip()
                try:
                    comm = open(f"/proc/{pid}/comm").read().strip()
                    ns = os.readlink(f"/proc/{pid}/ns/pid")
                    ppid = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("PPid:")][0]
                    pns = os.readlink(f"/proc/{ppid}/ns/pid")
                except OSError:
                    continue
                if comm == "systemd" and ns != mine and pns != ns:
                    yield name, int(pid)
                    break
            else:
                continue
            break


def in_ns(pid, fn):
    """Runs fn in a child that is in pid's PID namespace; returns its exit status."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)
    child = os.fork()
    if child == 0:
        try:
            if libc.setns(fd, CLONE_NEWPID) != 0:
                os._exit(2)
            # setns for PID namespaces applies to children only.
            grand = os.fork()
            if grand == 0:
                os._exit(fn(libc))
            _, st = os.waitpid(grand, 0)
            os._exit(os.waitstatus_to_exitcode(st))
        except BaseException:
            os._exit(3)
    os.close(fd)
    _, st = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(st)


def on(cgroup, out):
    os.makedirs(out, exist_ok=True)
    for name, pid in hosts(cgroup):
        path = os.path.join(out, name + ".acct").encode()
        open(path, "wb").close()
        rc = in_ns(pid, lambda libc: 0 if libc.acct(path) == 0 else 1)
        if rc != 0:
            sys.exit(f"procacct: acct on {name}: exit {rc}")


def off(cgroup):
    for name, pid in hosts(cgroup):
        in_ns(pid, lambda libc: 0 if libc.acct(None) == 0 else 1)


def comp_t(v):
    """Decodes a comp_t: 13-bit mantissa, 3-bit base-8 exponent."""
    return (v & 0x1FFF) << (3 * (v >> 13))


def count(out):
    """Prints per host, then per host on average: NAME=processes/CPU seconds."""
    total = collections.Counter()
    cpu_total = collections.Counter()
    n = 0
    for f in sorted(os.listdir(out)):
        if not f.endswith(".acct"):
            continue
        n += 1
        c = collections.Counter()
        cpu = collections.Counter()
        data = open(os.path.join(out, f), "rb").read()
        for i in range(0, len(data) - 63, 64):
            rec = data[i:i + 64]
            if rec[1] != 3:  # acct_v3
                continue
            utime, stime = struct.unpack("<HH", rec[32:36])
            comm = rec[48:64].split(b"\0")[0].decode(errors="replace")
            if comm.startswith(".upload-"):
                comm = ".upload-*"
            c[comm] += 1
            cpu[comm] += (comp_t(utime) + comp_t(stime)) / 100  # AHZ is 100
        total.update(c)
        cpu_total.update(cpu)
        print(f[:-5], " ".join(f"{k}={v}/{cpu[k]:.2f}s" for k, v in sorted(c.items())))
    if n:
        print("per host:", " ".join(f"{k}={v / n:g}/{cpu_total[k] / n:.2f}s" for k, v in sorted(total.items())),
              f"(all: {sum(total.values()) / n:g} processes, {sum(cpu_total.values()) / n:.2f}s)")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "on":
        on(sys.argv[2], sys.argv[3])
    elif cmd == "off":
        off(sys.argv[2])
    elif cmd == "count":
        count(sys.argv[2])
    else:
        sys.exit(__doc__)
