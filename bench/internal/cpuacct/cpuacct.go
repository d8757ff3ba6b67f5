// Package cpuacct measures the CPU time of an experiment apart from
// whatever else runs on the machine: a cgroup (v1 cpuacct) that holds the
// benchmark's process and every process it starts.
package cpuacct

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Group is a cgroup (v1 cpuacct) holding this process and every process
// it starts (MinIO, a proxy, deploy, the hosts' agents and sshd).
type Group struct{ dir string }

// Join moves this process into a new cpuacct group named after name;
// nil when the machine has none (then the report says so).
func Join(name string) *Group {
	root := "/sys/fs/cgroup/cpuacct"
	if _, err := os.Stat(filepath.Join(root, "cpuacct.usage")); err != nil {
		return nil
	}
	dir := filepath.Join(root, fmt.Sprintf("%s-%d", name, os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.Remove(dir)
		return nil
	}
	return &Group{dir: dir}
}

// Usage is the group's CPU time so far (0 for nil).
func (g *Group) Usage() time.Duration {
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

// Leave moves every process left in the group back to the root group and
// removes it.
func (g *Group) Leave() {
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
