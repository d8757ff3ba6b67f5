package vmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// run is the state of one [Network] on disk and in the cgroup tree. It holds
// an exclusive flock on <dir>/lock while it lives; a run whose lock can be
// taken belongs to a dead process and may be swept.
type run struct {
	id   string
	dir  string // <cache>/runs/<id>
	lock *os.File
	cg   cgroup // deploy-vmtest/<id>
}

// runsDir is where the runs of every process live.
func runsDir(cache string) string { return filepath.Join(cache, "runs") }

// newRun sweeps stale runs and creates a new one, both under the global
// runs lock, so that no sweeper ever sees a run before its owner locked it.
func newRun(ctx context.Context, cache string, cg cgroupMounts, logf func(string, ...any)) (*run, error) {
	dir := runsDir(cache)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create run: %w", err)
	}
	global, err := lockFile(ctx, filepath.Join(cache, "runs.lock"), logf)
	if err != nil {
		return nil, fmt.Errorf("create run: %w", err)
	}
	defer global.Close()

	sweep(ctx, cache, cg, logf)

	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("create run: %w", err)
	}
	r := &run{id: hex.EncodeToString(b[:])}
	r.dir = filepath.Join(dir, r.id)
	r.cg = cgroup{mounts: cg, rel: cgroupRoot + "/" + r.id}
	if err := os.Mkdir(r.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create run: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(r.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		os.RemoveAll(r.dir)
		return nil, fmt.Errorf("lock run %q: %w", r.dir, err)
	}
	fmt.Fprintf(f, "pid %d\nstarted %s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	r.lock = f
	return r, nil
}

// release removes the run's state and unlocks it. Its cgroups must be
// empty.
func (r *run) release() error {
	err := r.cg.removeAll()
	if err == nil {
		// Keep the directory (and the lock) when cgroups are left, so that a
		// later sweep still finds this run.
		if rerr := os.RemoveAll(r.dir); rerr != nil {
			err = fmt.Errorf("remove run state: %w", rerr)
		}
	}
	r.lock.Close()
	return err
}

// lockFile takes an exclusive flock on path, waiting for ctx. The caller
// unlocks by closing the file.
func lockFile(ctx context.Context, path string, logf func(string, ...any)) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	logged := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %q: %w", path, err)
		}
		if !logged {
			logf("vmtest: waiting for lock %s", path)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %q: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sweep removes what killed runs left behind: processes and cgroups, then
// state directories. Runs whose lock is held, by this process or another,
// are alive and left alone. The caller holds the global runs lock.
func sweep(ctx context.Context, cache string, cg cgroupMounts, logf func(string, ...any)) {
	stale := map[string]*os.File{} // run id → its lock, held while sweeping
	defer func() {
		for _, f := range stale {
			if f != nil {
				f.Close()
			}
		}
	}()
	alive := map[string]bool{}

	entries, _ := os.ReadDir(runsDir(cache))
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		f, err := os.OpenFile(filepath.Join(runsDir(cache), e.Name(), "lock"), os.O_RDWR, 0)
		if errors.Is(err, fs.ErrNotExist) {
			stale[e.Name()] = nil // created under the global lock, so never half-made by a live run
			continue
		}
		if err != nil {
			alive[e.Name()] = true // unknown: leave it
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close()
			alive[e.Name()] = true
			continue
		}
		stale[e.Name()] = f
	}
	// Cgroups of runs whose directory is already gone are stale too.
	for _, root := range []string{cg.v2, cg.v1systemd} {
		if root == "" {
			continue
		}
		entries, _ := os.ReadDir(filepath.Join(root, cgroupRoot))
		for _, e := range entries {
			if e.IsDir() && !alive[e.Name()] {
				if _, ok := stale[e.Name()]; !ok {
					stale[e.Name()] = nil
				}
			}
		}
	}

	for id := range stale {
		c := cgroup{mounts: cg, rel: cgroupRoot + "/" + id}
		kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.kill(kctx)
		cancel()
		c.killLegacy()
		if err == nil {
			err = c.removeAll()
		}
		if err == nil {
			err = os.RemoveAll(filepath.Join(runsDir(cache), id))
		}
		if err != nil {
			logf("vmtest: sweep stale run %s: %v", id, err)
			continue
		}
		logf("vmtest: swept stale run %s", id)
	}
}

// validPathForOverlay reports whether p can appear in overlayfs mount
// options, which use ',' and ':' as separators.
func validPathForOverlay(p string) error {
	if strings.ContainsAny(p, ",:\n") {
		return fmt.Errorf("path %q: overlayfs options cannot contain ',' or ':'", p)
	}
	return nil
}
