// Package procid names a process so that another process can later tell,
// safely, that it no longer runs: a run on the operator's machine whose
// run lock is still held on a host by a run that died there.
//
// # Which process table
//
// A PID means something only in its PID namespace, on one boot of one
// kernel. An [ID] therefore records its Space: the kernel's boot id
// (/proc/sys/kernel/random/boot_id, 128 random bits drawn at every boot, so
// two machines never share one by accident, unlike a host name, and unlike
// /etc/machine-id, which cloned VM and container images share) and the PID
// namespace (/proc/self/ns/pid: containers of one kernel differ unless they
// share their process table). A persistent id in the operator's state
// directory was not chosen: a home directory shared over NFS, or a CI cache
// restored on another runner, would make two machines one.
//
// # Reused PIDs
//
// An ID also records the process's start time (/proc/PID/stat, field 22,
// clock ticks since boot): a PID that now names a process started at
// another time is not the one recorded.
package procid

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ID names one process.
type ID struct {
	// Space is the process table of PID: "BOOT_ID/pid:[INODE]".
	Space string
	PID   int
	// Start is the process's start time in clock ticks since boot.
	Start uint64
}

// procRoot is where procfs is mounted (a test may point it elsewhere).
var procRoot = "/proc"

// Self is the calling process. It fails where there is no procfs, or when
// /proc is not of this process's PID namespace (its view of the process
// would be another's).
func Self() (*ID, error) {
	space, err := space()
	if err != nil {
		return nil, err
	}
	pid, start, _, err := stat("self")
	if err != nil {
		return nil, err
	}
	if pid != os.Getpid() {
		return nil, fmt.Errorf("procid: %s is not of this PID namespace (it says this process is %d, not %d)", procRoot, pid, os.Getpid())
	}
	return &ID{Space: space, PID: pid, Start: start}, nil
}

// Gone reports whether the process id named has certainly ended: it is of
// this process table, and no process has its PID, or the one that has it
// started at another time or is a zombie. Any doubt (another table, a
// process hidden by procfs's hidepid) is not gone.
func Gone(id ID) bool {
	self, err := Self()
	if err != nil || id.Space == "" || id.Space != self.Space || id.PID <= 0 {
		return false
	}
	// kill(2), unlike /proc with hidepid, sees every process.
	if err := syscall.Kill(id.PID, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	_, start, state, err := stat(strconv.Itoa(id.PID))
	if err != nil {
		return false
	}
	return start != id.Start || state == 'Z' || state == 'X'
}

// Running reports whether the process pid of this process table is the one
// that started at start (a start of 0, unknown, matches any). It is what an
// agent checks before it signals a PID it recorded.
func Running(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	_, got, state, err := stat(strconv.Itoa(pid))
	if err != nil {
		return false
	}
	return (start == 0 || got == start) && state != 'Z' && state != 'X'
}

func space() (string, error) {
	boot, err := os.ReadFile(procRoot + "/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("procid: %w", err)
	}
	ns, err := os.Readlink(procRoot + "/self/ns/pid")
	if err != nil {
		return "", fmt.Errorf("procid: %w", err)
	}
	return strings.TrimSpace(string(boot)) + "/" + ns, nil
}

// stat reads /proc/WHO/stat: the PID, the start time and the state.
func stat(who string) (pid int, start uint64, state byte, err error) {
	data, err := os.ReadFile(procRoot + "/" + who + "/stat")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("procid: %w", err)
	}
	return parseStat(data)
}

// parseStat parses a /proc/PID/stat line: "PID (COMM) STATE ...", where
// COMM may hold spaces and parentheses, and field 22 is the start time.
func parseStat(data []byte) (pid int, start uint64, state byte, err error) {
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 1 || end < open {
		return 0, 0, 0, fmt.Errorf("procid: malformed stat %q", data)
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(data[:open])))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("procid: malformed stat %q", data)
	}
	// Fields from 3 (the state) on.
	f := strings.Fields(string(data[end+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, 0, fmt.Errorf("procid: malformed stat %q", data)
	}
	start, err = strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("procid: malformed stat %q", data)
	}
	return pid, start, f[0][0], nil
}
