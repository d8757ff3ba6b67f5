// Command pushsim times push deploys to simulated hosts (tier 2 of the
// scale harness, vmtest/simhost: a simulation of systemd, not of the
// agent, the store, the network or SSH): N hosts, each with the real
// OpenSSH server in its own namespaces, the real deploy and deploy-agent.
// It starts the hosts and their sshd, writes a fleet (per host: a file, a
// service, a command health check), builds it (not timed), then times the
// first deploy (the agent's bootstrap over SSH, the copy, the activation
// with the magic-rollback watchdog, the confirmation) and K no-op
// redeploys, each with deploy's own CPU and peak RSS (rusage), the CPU of
// the whole experiment (deploy, sshd, the agents: one cpuacct group) and
// the 1-minute load average before it.
//
//	bench/pushsim.sh [HOSTS...]   (builds deploy and deploy-agent; root)
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/declarative/deploy/bench/internal/cpuacct"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest/simhost"
	"golang.org/x/sync/errgroup"
)

func main() {
	hosts := flag.Int("hosts", 10, "how many simulated hosts")
	noops := flag.Int("noops", 3, "how many no-op redeploys after the first deploy")
	deploy := flag.String("deploy", "", "the deploy binary (deploy-agent beside it)")
	flags := flag.String("flags", "", "more flags for every deploy run (space-separated)")
	day2 := flag.Bool("day2", true, "after the no-ops, also time deploy status, status --drift, verify and gc once each")
	flag.Parse()
	if *deploy == "" {
		log.Fatal("pushsim: -deploy is required (bench/pushsim.sh builds it)")
	}
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	if err := simhost.Check(); err != nil {
		log.Fatalf("pushsim: %v", err)
	}
	cg := cpuacct.Join("pushsim")
	defer cg.Leave()
	ctx := context.Background()
	nw, err := simhost.Start(ctx, simhost.Options{Hosts: *hosts, Logf: log.Printf})
	if err != nil {
		log.Fatal(err)
	}
	defer nw.Close()
	if err := run(ctx, nw, *deploy, strings.Fields(*flags), *noops, *day2, cg); err != nil {
		nw.Close()
		cg.Leave()
		log.Fatal(err)
	}
}

func run(ctx context.Context, nw *simhost.Network, deploy string, flags []string, noops int, day2 bool, cg *cpuacct.Group) error {
	fl := &simhost.PushFleet{Dir: filepath.Join(nw.Dir(), "fleet"), Deploy: deploy, Hosts: nw.Hosts()}
	if err := fl.Init(); err != nil {
		return err
	}
	key, err := fl.AuthorizedKey()
	if err != nil {
		return err
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, h := range nw.Hosts() {
		g.Go(func() error { return h.StartSSHD(gctx, key) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	log.Printf("pushsim: %d hosts' sshd up in %v", len(nw.Hosts()), time.Since(start).Round(time.Millisecond))
	if err := fl.Write("v1"); err != nil {
		return err
	}
	var stderr bytes.Buffer
	build := fl.Command(ctx, "build", fl.Target())
	build.Stderr = &stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("deploy build: %v\n%s", err, stderr.String())
	}
	fmt.Printf("pushsim: %d hosts (tier 2: a simulation of systemd, not of the agent, the store, the network or SSH), %s, %d cores\n",
		len(nw.Hosts()), runtime.Version(), runtime.NumCPU())
	var noopWalls []float64
	seenCalls := 0
	for i := 0; i <= noops; i++ {
		what, want := "first", "ok"
		if i > 0 {
			what, want = "noop", "unchanged"
		}
		r, err := timed(ctx, fl, nil, flags, want, len(nw.Hosts()), cg)
		if err != nil {
			return fmt.Errorf("%s deploy: %w", what, err)
		}
		fmt.Printf("  %-5s hosts=%-4d wall=%7.2fs deploy user=%6.2fs sys=%5.2fs rss=%4dMB experiment CPU=%7.2fs load1=%s%s\n",
			what, len(nw.Hosts()), r.wall.Seconds(), r.user.Seconds(), r.sys.Seconds(), r.rssMB, r.cpu.Seconds(), r.load, r.ssh)
		if i > 0 {
			noopWalls = append(noopWalls, r.wall.Seconds())
		}
		// What the run asked of the first host's systemd (the stand-in's
		// log, since the previous run): systemctl calls by verb.
		if calls, err := nw.Hosts()[0].Calls(ctx); err == nil {
			verbs := map[string]int{}
			for _, c := range calls[seenCalls:] {
				v := c[0]
				for _, w := range c[1:] {
					if !strings.HasPrefix(w, "-") {
						v += " " + w
						break
					}
				}
				verbs[v]++
			}
			fmt.Printf("        systemd calls on %s: %d %v\n", nw.Hosts()[0].Name(), len(calls)-seenCalls, verbs)
			if os.Getenv("PUSHSIM_CALLS") != "" {
				for _, c := range calls[seenCalls:] {
					fmt.Printf("          %s\n", strings.Join(c, " "))
				}
			}
			seenCalls = len(calls)
		}
	}
	if len(noopWalls) > 0 {
		sort.Float64s(noopWalls)
		fmt.Printf("  no-op median %.2fs over %d runs\n", noopWalls[len(noopWalls)/2], len(noopWalls))
	}
	if !day2 {
		return nil
	}
	// The day-two commands over the same connections' cost: one run each,
	// every host's result as named.
	for _, c := range []struct {
		what string
		cmd  []string
		want string
	}{
		{"status", []string{"status"}, "ok"},
		{"drift", []string{"status", "--drift"}, "ok"},
		{"verify", []string{"verify"}, "ok"},
		{"gc", []string{"gc", "--keep", "1"}, "ok"},
	} {
		r, err := timed(ctx, fl, c.cmd, flags, c.want, len(nw.Hosts()), cg)
		if err != nil {
			return fmt.Errorf("deploy %s: %w", strings.Join(c.cmd, " "), err)
		}
		fmt.Printf("  %-6s hosts=%-4d wall=%7.2fs deploy user=%6.2fs sys=%5.2fs rss=%4dMB experiment CPU=%7.2fs load1=%s%s\n",
			c.what, len(nw.Hosts()), r.wall.Seconds(), r.user.Seconds(), r.sys.Seconds(), r.rssMB, r.cpu.Seconds(), r.load, r.ssh)
	}
	return nil
}

type result struct {
	wall, user, sys, cpu time.Duration
	rssMB                int64
	load, ssh            string
}

// timed runs one push deploy (or, with command, that host command, such as
// status) and checks that every host's result is want.
func timed(ctx context.Context, fl *simhost.PushFleet, command, flags []string, want string, n int, cg *cpuacct.Group) (*result, error) {
	load, _ := os.ReadFile("/proc/loadavg")
	var stdout, stderr bytes.Buffer
	cmd := fl.HostCommand(ctx, command, flags...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cpu0, t0 := cg.Usage(), time.Now()
	err := cmd.Run()
	r := &result{wall: time.Since(t0), cpu: cg.Usage() - cpu0, load: strings.Fields(string(load))[0]}
	if err != nil {
		return nil, fmt.Errorf("%v\n%s", err, tailLines(stderr.String(), 20))
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.user = time.Duration(ru.Utime.Nano())
		r.sys = time.Duration(ru.Stime.Nano())
		r.rssMB = ru.Maxrss / 1024
	}
	ev, err := cli.ParseEvents(stdout.Bytes())
	if err != nil {
		return nil, err
	}
	got := 0
	for _, e := range cli.Results(ev) {
		if string(e.Result) == want {
			got++
		}
	}
	if got != n {
		return nil, fmt.Errorf("%d of %d hosts %s\n%s", got, n, want, tailLines(stderr.String(), 20))
	}
	for _, e := range ev {
		if e.Type == "run.done" && len(e.SSH) > 0 {
			minC, maxC, minS, maxS := 1<<30, 0, 1<<30, 0
			for _, c := range e.SSH {
				minC, maxC = min(minC, c.Connections), max(maxC, c.Connections)
				minS, maxS = min(minS, c.Sessions), max(maxS, c.Sessions)
			}
			r.ssh = fmt.Sprintf(" conns=%d-%d sessions=%d-%d", minC, maxC, minS, maxS)
		}
	}
	return r, nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
