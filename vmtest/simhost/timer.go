package simhost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The units a pull block installs (modules: deploy-pull.timer runs
// deploy-pull.service).
const (
	pullTimer   = "deploy-pull.timer"
	pullService = "deploy-pull.service"
)

// Timers plays systemd's part for deploy-pull.timer on hosts (part of the
// simulation of systemd): once a host's generation has installed and
// enabled the timer (timers.target.wants/deploy-pull.timer), it runs the
// ExecStart of the installed deploy-pull.service in the host, first
// OnActiveSec after it saw the timer, then OnUnitInactiveSec after each
// run ended, each plus a random delay below RandomizedDelaySec, as the
// timer unit the generation wrote says. The units are read again before
// each run, so a release that changes the interval changes it.
type Timers struct {
	// Hosts are the hosts whose timers run.
	Hosts []*Host
	// OnStart, if set, is called before each run (from the host's
	// goroutine).
	OnStart func(h *Host)
	// OnRun, if set, is called after each run (from the host's goroutine):
	// when it started, how long it took, what it printed (the service's
	// journal) and its error (a non-zero exit).
	OnRun func(h *Host, start time.Time, took time.Duration, out []byte, err error)

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start starts every host's timer.
func (t *Timers) Start(ctx context.Context) {
	ctx, t.cancel = context.WithCancel(ctx)
	for _, h := range t.Hosts {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.loop(ctx, h)
		}()
	}
}

// Stop stops the timers and waits for the runs in progress to end (they
// are killed).
func (t *Timers) Stop() {
	if t.cancel != nil {
		t.cancel()
	}
	t.wg.Wait()
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

func (t *Timers) loop(ctx context.Context, h *Host) {
	active := false
	for {
		u, err := h.pullUnits()
		if err != nil {
			active = false
			if !sleep(ctx, time.Second) {
				return
			}
			continue
		}
		if !active {
			active = true
			if !sleep(ctx, u.onActive+u.delay()) {
				return
			}
		}
		if t.OnStart != nil {
			t.OnStart(h)
		}
		start := time.Now()
		out, err := h.runService(ctx, u.execStart)
		if ctx.Err() != nil {
			return
		}
		if t.OnRun != nil {
			t.OnRun(h, start, time.Since(start), out, err)
		}
		if !sleep(ctx, u.inactive+u.delay()) {
			return
		}
	}
}

// pullUnit is what the timer and the service units say.
type pullUnit struct {
	onActive, inactive, random time.Duration
	execStart                  []string
}

func (u *pullUnit) delay() time.Duration {
	if u.random <= 0 {
		return 0
	}
	return rand.N(u.random)
}

// errNoTimer is a host without an enabled deploy-pull.timer.
var errNoTimer = errors.New("no enabled " + pullTimer)

// pullUnits reads the host's installed pull units.
func (h *Host) pullUnits() (*pullUnit, error) {
	if _, err := os.Lstat(filepath.Join(h.dir, "etc/systemd/system/timers.target.wants", pullTimer)); err != nil {
		return nil, errNoTimer
	}
	timer, err := h.readHostFile("/etc/systemd/system/" + pullTimer)
	if err != nil {
		return nil, err
	}
	service, err := h.readHostFile("/etc/systemd/system/" + pullService)
	if err != nil {
		return nil, err
	}
	u := &pullUnit{}
	for k, v := range unitKeys(timer) {
		d, err := time.ParseDuration(strings.ReplaceAll(v, " ", ""))
		if err != nil {
			continue
		}
		switch k {
		case "OnActiveSec":
			u.onActive = d
		case "OnUnitInactiveSec":
			u.inactive = d
		case "RandomizedDelaySec":
			u.random = d
		}
	}
	u.execStart = strings.Fields(unitKeys(service)["ExecStart"])
	if len(u.execStart) == 0 || u.inactive <= 0 {
		return nil, fmt.Errorf("%s: %s or %s without ExecStart or OnUnitInactiveSec", h.name, pullTimer, pullService)
	}
	return u, nil
}

func unitKeys(data []byte) map[string]string {
	kv := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			kv[k] = v
		}
	}
	return kv
}

// hostDirs map the host's private directories to the root namespace's.
var hostDirs = [][2]string{{"/etc", "etc"}, {"/var/lib/deploy", "state"}, {"/root", "root"}}

// hostPath is where path of the host is in the root namespace, following
// symbolic links as the host would; only paths in the host's private
// directories are found.
func (h *Host) hostPath(path string) (string, error) {
	for range 40 {
		local := ""
		for _, d := range hostDirs {
			if path == d[0] || strings.HasPrefix(path, d[0]+"/") {
				local = filepath.Join(h.dir, d[1], strings.TrimPrefix(path, d[0]))
			}
		}
		if local == "" {
			return "", fmt.Errorf("%s: %s is not in the host's private directories", h.name, path)
		}
		// Resolve each component's link, as the host's kernel would.
		rel := strings.TrimPrefix(local, h.dir)
		cur := h.dir
		parts := strings.Split(strings.Trim(rel, "/"), "/")
		resolved := true
		for i, p := range parts {
			next := filepath.Join(cur, p)
			target, err := os.Readlink(next)
			if err != nil {
				cur = next
				continue
			}
			// Back to the host's view of the path, then start again.
			hostCur := h.toHost(cur)
			if !filepath.IsAbs(target) {
				target = filepath.Join(hostCur, target)
			}
			path = filepath.Join(append([]string{target}, parts[i+1:]...)...)
			resolved = false
			break
		}
		if resolved {
			return cur, nil
		}
	}
	return "", fmt.Errorf("%s: too many links in %s", h.name, path)
}

// toHost is the host's path of local, a path in its directory.
func (h *Host) toHost(local string) string {
	rel := strings.TrimPrefix(local, h.dir)
	for _, d := range hostDirs {
		if rel == "/"+d[1] || strings.HasPrefix(rel, "/"+d[1]+"/") {
			return d[0] + strings.TrimPrefix(rel, "/"+d[1])
		}
	}
	return rel
}

// readHostFile reads a file of the host's private directories from the
// root namespace (no process started).
func (h *Host) readHostFile(path string) ([]byte, error) {
	p, err := h.hostPath(path)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// runService runs argv in the host as the service would, its output
// appended to the host's journal file (Dir/journal.log).
func (h *Host) runService(ctx context.Context, argv []string) ([]byte, error) {
	var out bytes.Buffer
	cmd := h.Command(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if out.Len() > 0 || err != nil {
		f, ferr := os.OpenFile(filepath.Join(h.dir, "journal.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if ferr == nil {
			fmt.Fprintf(f, "%s %s", time.Now().UTC().Format(time.StampMilli), out.Bytes())
			if err != nil {
				fmt.Fprintf(f, "%s %s: %v\n", time.Now().UTC().Format(time.StampMilli), pullService, err)
			}
			f.Close()
		}
	}
	return out.Bytes(), err
}

// Journal is what the host's pull service printed so far.
func (h *Host) Journal() string {
	data, _ := os.ReadFile(filepath.Join(h.dir, "journal.log"))
	return string(data)
}
