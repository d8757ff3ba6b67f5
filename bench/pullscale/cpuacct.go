package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cpuGroup is a cgroup (v1 cpuacct) holding this process and every process
// it starts (MinIO, the proxy, deploy, the hosts' agents): the CPU time of
// the whole experiment, apart from whatever else runs on the machine.
type cpuGroup struct{ dir string }

// joinCPUGroup moves this process into a new cpuacct group; nil when the
// machine has none (then the report says so).
func joinCPUGroup() *cpuGroup {
	root := "/sys/fs/cgroup/cpuacct"
	if _, err := os.Stat(filepath.Join(root, "cpuacct.usage")); err != nil {
		return nil
	}
	dir := filepath.Join(root, fmt.Sprintf("pullscale-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.Remove(dir)
		return nil
	}
	return &cpuGroup{dir: dir}
}

// usage is the group's CPU time so far.
func (g *cpuGroup) usage() time.Duration {
	if g == nil {
		return 0
	}
	data, err := os.ReadFile(filepath.Join(g.dir, "cpuacct.usage"))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return time.Duration(n)
}

// leave moves every process left in the group back to the root group and
// removes it.
func (g *cpuGroup) leave() {
	if g == nil {
		return
	}
	root := filepath.Dir(g.dir)
	for range 3 {
		data, _ := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
		for _, pid := range strings.Fields(string(data)) {
			os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0o644)
		}
		if os.Remove(g.dir) == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
