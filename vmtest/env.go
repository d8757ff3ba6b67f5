package vmtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/declarative/deploy/internal/testenv"
	"golang.org/x/sys/unix"
)

// Packages lists the Debian packages that provide the programs this package
// runs on the machine that runs the tests.
var Packages = []string{"systemd-container", "debootstrap", "util-linux", "iproute2"}

// ErrUnavailable is wrapped by the error of [Available] when this machine
// cannot run test hosts.
var ErrUnavailable = errors.New("vmtest: test hosts unavailable")

// programs are the executables the harness runs; debootstrap is only needed
// while the image cache is empty, but is checked always so that a missing
// package shows up on the first run of a fresh machine rather than later.
var programs = []struct{ name, pkg string }{
	{"systemd-nspawn", "systemd-container"},
	{"debootstrap", "debootstrap"},
	{"nsenter", "util-linux"},
	{"mount", "mount"},
	{"ip", "iproute2"},
	{"tc", "iproute2"},
}

// Available reports whether this machine can run test hosts. The error says
// exactly what is missing and wraps [ErrUnavailable].
func Available() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, fmt.Sprintf("root (running as uid %d)", os.Geteuid()))
	}
	for _, p := range programs {
		if _, err := exec.LookPath(p.name); err != nil {
			missing = append(missing, fmt.Sprintf("program %q (Debian package %q)", p.name, p.pkg))
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		missing = append(missing, "network namespaces (/proc/self/ns/net)")
	}
	if fs, err := os.ReadFile("/proc/filesystems"); err != nil || !bytes.Contains(fs, []byte("\toverlay\n")) {
		missing = append(missing, "overlayfs (not in /proc/filesystems)")
	}
	if cg, err := findCgroups(); err != nil {
		missing = append(missing, err.Error())
	} else if _, err := os.Stat(cg.v2 + "/cgroup.procs"); err != nil {
		missing = append(missing, fmt.Sprintf("cgroup v2 at %q: %v", cg.v2, err))
	} else if !kernelHasCgroupKill() {
		missing = append(missing, "cgroup.kill (Linux 5.14 or later)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s", ErrUnavailable, strings.Join(missing, "; "))
	}
	return nil
}

// requireAvailable skips tb when the machine cannot run test hosts, or fails
// it when the environment says CI=true: CI must never skip these tests.
func requireAvailable(tb testing.TB) {
	tb.Helper()
	err := Available()
	if err == nil {
		return
	}
	testenv.Missing(tb, fmt.Sprintf("%v (install: apt-get install %s, and run as root)", err, strings.Join(Packages, " ")))
}

// cgroupMounts locates the cgroup hierarchies the harness uses.
type cgroupMounts struct {
	v2 string // the cgroup2 mount point
	// v1systemd is the legacy name=systemd hierarchy of a "hybrid" host, or
	// empty. On such hosts nspawn places the container by its path there, so
	// the harness mirrors its cgroup into it.
	v1systemd string
}

// findCgroups reads /proc/self/mountinfo for the cgroup mounts.
func findCgroups() (cgroupMounts, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return cgroupMounts{}, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var cg cgroupMounts
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 || pf[3] != "/" {
			continue
		}
		switch {
		case qf[0] == "cgroup2" && cg.v2 == "":
			cg.v2 = pf[4]
		case qf[0] == "cgroup" && hasOption(qf[2], "name=systemd") && cg.v1systemd == "":
			cg.v1systemd = pf[4]
		}
	}
	if err := sc.Err(); err != nil {
		return cgroupMounts{}, fmt.Errorf("read mounts: %w", err)
	}
	if cg.v2 == "" {
		return cgroupMounts{}, errors.New("a cgroup2 mount (cgroup v2)")
	}
	return cg, nil
}

func hasOption(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// kernelHasCgroupKill reports whether the kernel has cgroup.kill: Linux
// 5.14 or later.
func kernelHasCgroupKill() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || major == 5 && minor >= 14
}
