package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupRoot is the directory under each cgroup hierarchy's root that holds
// one child per run: <root>/<run id>/<host>.
const cgroupRoot = "deploy-vmtest"

// cgroup is a cgroup v2 directory, mirrored into the legacy name=systemd
// hierarchy on hybrid hosts.
type cgroup struct {
	mounts cgroupMounts
	rel    string // relative to the hierarchy roots
}

func (c cgroup) child(name string) cgroup { return cgroup{c.mounts, c.rel + "/" + name} }

// path is the cgroup v2 directory.
func (c cgroup) path() string { return filepath.Join(c.mounts.v2, c.rel) }

// legacyPath is the name=systemd directory, or "" on a pure cgroup v2 host.
func (c cgroup) legacyPath() string {
	if c.mounts.v1systemd == "" {
		return ""
	}
	return filepath.Join(c.mounts.v1systemd, c.rel)
}

// create makes the cgroup (and its parents) in every hierarchy.
func (c cgroup) create() error {
	for _, p := range []string{c.path(), c.legacyPath()} {
		if p == "" {
			continue
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
	}
	return nil
}

// populated reports whether any process is in the cgroup or below it.
func (c cgroup) populated() (bool, error) {
	b, err := os.ReadFile(filepath.Join(c.path(), "cgroup.events"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read cgroup events: %w", err)
	}
	return bytes.Contains(b, []byte("populated 1")), nil
}

// kill kills every process in the cgroup and below it with cgroup.kill and
// waits until none is left.
func (c cgroup) kill(ctx context.Context) error {
	if _, err := os.Stat(c.path()); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(c.path(), "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill cgroup %q: %w", c.rel, err)
	}
	for {
		pop, err := c.populated()
		if err != nil || !pop {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kill cgroup %q: processes left: %w", c.rel, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// killLegacy kills the processes of the name=systemd mirror. They are all in
// the v2 cgroup too, unless a run died while its wrapper was between the two
// hierarchies.
func (c cgroup) killLegacy() {
	lp := c.legacyPath()
	if lp == "" {
		return
	}
	_ = filepath.WalkDir(lp, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		pids, _ := readPids(filepath.Join(p, "cgroup.procs"))
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return nil
	})
}

// removeChildren removes the descendants of the cgroup in every
// hierarchy, keeping the cgroup itself; they must be empty.
func (c cgroup) removeChildren() error { return c.remove(false) }

// removeAll removes the cgroup and all its descendants; they must be empty.
func (c cgroup) removeAll() error { return c.remove(true) }

func (c cgroup) remove(self bool) error {
	var errs []error
	for _, root := range []string{c.path(), c.legacyPath()} {
		if root == "" {
			continue
		}
		var dirs []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !d.IsDir() {
				return nil
			}
			if p != root || self {
				dirs = append(dirs, p)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %q: %w", c.rel, err))
			continue
		}
		// Deepest first. A cgroup whose processes were just killed can be
		// busy for a moment while the kernel finishes tearing them down.
		for i := len(dirs) - 1; i >= 0; i-- {
			errs = append(errs, rmdirRetry(dirs[i]))
		}
	}
	return errors.Join(errs...)
}

func rmdirRetry(dir string) error {
	var err error
	for range 200 {
		err = syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %q: %w", dir, err)
}

// pids returns every process in the cgroup and below it.
func (c cgroup) pids() ([]int, error) {
	var all []int
	err := filepath.WalkDir(c.path(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		pids, err := readPids(filepath.Join(p, "cgroup.procs"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		all = append(all, pids...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list cgroup %q: %w", c.rel, err)
	}
	return all, nil
}

func readPids(file string) ([]int, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, sc.Err()
}
