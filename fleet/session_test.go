package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/procid"
	"github.com/hashicorp/hcl/v2"
)

// testFleet writes a fleet of hosts (each with a file resource) and a
// deployment "all" of them with the given extra attributes.
func testFleet(t *testing.T, hosts []string, deployment string) string {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&b, "host %q {\n  address = \"192.0.2.1\"\n  file \"/etc/%s\" {\n    content = \"%s\\n\"\n  }\n}\n", h, h, h)
	}
	fmt.Fprintf(&b, "deployment \"all\" {\n  hosts = [%s]\n%s\n}\n", `"`+strings.Join(hosts, `", "`)+`"`, deployment)
	if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func testBuilder(t *testing.T) *builder.Builder {
	t.Helper()
	cache := t.TempDir()
	s, err := closure.NewLocalStore(cache, closure.DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "deploy-agent")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\necho stand-in deploy-agent\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &builder.Builder{Store: s, CacheDir: filepath.Join(cache, "build"), Agent: builder.Agent{Binary: agent}}
}

// eventLog collects a session's events.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) emit(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *eventLog) types() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, e := range l.events {
		out = append(out, e.Type)
	}
	return out
}

func (l *eventLog) has(f func(Event) bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.events, f)
}

func openSession(t *testing.T, dir, target string, ops HostOps, log *eventLog) *Session {
	t.Helper()
	s := &Session{Targets: []string{dir + "#" + target}, Command: "deploy", Builder: testBuilder(t), Ops: ops, Emit: log.emit}
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// A run ends with run.done whatever happens, and begins with run.start;
// every event is versioned and stamped.
func checkRunBrackets(t *testing.T, log *eventLog) {
	t.Helper()
	types := log.types()
	if len(types) < 2 || types[0] != EventRunStart || types[len(types)-1] != EventRunDone {
		t.Fatalf("events %v: want run.start first and run.done last", types)
	}
	for _, e := range log.events {
		if e.V != EventSchemaVersion || e.Time.IsZero() {
			t.Fatalf("event %+v lacks version or time", e)
		}
	}
}

func TestSessionDeploy(t *testing.T) {
	dir := testFleet(t, []string{"a", "b", "c"}, `batch_size = 2`)
	ops := &scriptedOps{}
	log := &eventLog{}
	s := openSession(t, dir, "all", ops, log)
	rep, err := s.Deploy(context.Background(), DeployOptions{Mode: ModeSwitch})
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.With(ResultOK); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("ok hosts %v, want all", got)
	}
	checkRunBrackets(t, log)
	// The run lock is taken on every host before the first push, and
	// released at the end.
	firstPush := slices.IndexFunc(ops.calls, func(c string) bool { return strings.HasPrefix(c, "push") })
	for _, h := range []string{"a", "b", "c"} {
		i := slices.Index(ops.calls, "lock "+h+" wait=0s")
		if i < 0 || i > firstPush {
			t.Errorf("calls %v: want lock %s before the first push", ops.calls, h)
		}
	}
	s.Close()
	for _, h := range []string{"a", "b", "c"} {
		if !slices.Contains(ops.calls, "unlock "+h) {
			t.Errorf("calls %v: %s's run lock not released", ops.calls, h)
		}
	}
	// The canary goes first by default, then batches of batch_size.
	start := log.events[0]
	if want := [][]string{{"a"}, {"b", "c"}}; fmt.Sprint(start.Batches) != fmt.Sprint(want) || start.Command != "deploy" || start.DryRun {
		t.Errorf("run.start %+v, want command deploy, batches %v, not a dry run", start, want)
	}
}

// A dry run says so in its run.start, for the views: its copy phase
// copies nothing.
func TestSessionDryRunStart(t *testing.T) {
	dir := testFleet(t, []string{"a", "b"}, "")
	log := &eventLog{}
	s := openSession(t, dir, "all", &scriptedOps{}, log)
	if _, err := s.Deploy(context.Background(), DeployOptions{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	checkRunBrackets(t, log)
	if start := log.events[0]; !start.DryRun || start.Mode != ModeSwitch {
		t.Errorf("run.start %+v, want a dry run of mode switch", start)
	}
}

func TestSessionCanaryZero(t *testing.T) {
	dir := testFleet(t, []string{"a", "b"}, `batch_size = "100%"
  canary = 0`)
	log := &eventLog{}
	s := openSession(t, dir, "all", &scriptedOps{}, log)
	if _, err := s.Deploy(context.Background(), DeployOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := log.events[0].Batches; fmt.Sprint(got) != "[[a b]]" {
		t.Errorf("batches %v, want one batch of both hosts", got)
	}
}

// A host whose run lock another run holds stops the run before anything is
// copied: that host ends locked with the holder named, the others skipped,
// and every lock taken is released.
func TestSessionLockHeld(t *testing.T) {
	dir := testFleet(t, []string{"a", "b", "c"}, "")
	locks := &fakeLocks{}
	other := &agentapi.RunHolder{Run: "other", Operator: "alice", GitRev: "abc123", Hosts: []string{"b"}, Started: time.Now()}
	locks.try("b", other)
	ops := &scriptedOps{locks: locks}
	log := &eventLog{}
	s := openSession(t, dir, "all", ops, log)
	rep, err := s.Deploy(context.Background(), DeployOptions{})
	var re *RunError
	if !errors.As(err, &re) || rep.Worst() != ResultLocked {
		t.Fatalf("Deploy = %v (worst %q), want a RunError with a locked host", err, rep.Worst())
	}
	if hr := rep.Hosts["b"]; hr.Result != ResultLocked || hr.Holder == nil || hr.Holder.Operator != "alice" || !strings.Contains(hr.Err.Error(), "alice") {
		t.Errorf("b: %+v, want locked, held by alice's run", hr)
	}
	for _, h := range []string{"a", "c"} {
		if r := rep.Hosts[h].Result; r != ResultSkipped {
			t.Errorf("%s: %s, want skipped", h, r)
		}
	}
	if slices.ContainsFunc(ops.calls, func(c string) bool { return strings.HasPrefix(c, "push") || strings.HasPrefix(c, "activate") }) {
		t.Errorf("calls %v: copied or activated although a lock was held", ops.calls)
	}
	if log.has(func(e Event) bool { return e.Phase == PhaseCopy || e.Phase == PhaseBuild }) {
		t.Error("a build or copy event although a lock was held")
	}
	locks.mu.Lock()
	defer locks.mu.Unlock()
	if len(locks.held) != 1 || locks.held["b"].Run != "other" {
		t.Errorf("locks after the run: %v, want only the other run's lock on b", locks.held)
	}
	checkRunBrackets(t, log)
}

// A run lock held by a run whose process ran on this machine and ended is
// taken over at once, saying so; one whose process still runs here, or
// that ran on another machine, holds the run off.
func TestSessionTakesOverDeadRun(t *testing.T) {
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	ended := exec.Command("true")
	if err := ended.Run(); err != nil {
		t.Fatal(err)
	}
	dead := &agentapi.RunProcess{Space: self.Space, PID: ended.Process.Pid, Start: 1}
	for _, tt := range []struct {
		name     string
		process  *agentapi.RunProcess
		takeOver bool
	}{
		{"ended-here", dead, true},
		{"running-here", &agentapi.RunProcess{Space: self.Space, PID: self.PID, Start: self.Start}, false},
		{"another-machine", &agentapi.RunProcess{Space: "another-boot/pid:[1]", PID: ended.Process.Pid, Start: 1}, false},
		{"unknown", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := testFleet(t, []string{"a", "b"}, "")
			locks := &fakeLocks{}
			old := &agentapi.RunHolder{Run: "old", Operator: "alice", Machine: "laptop", Started: time.Now(), Process: tt.process}
			locks.try("b", old)
			ops := &scriptedOps{locks: locks}
			log := &eventLog{}
			s := openSession(t, dir, "all", ops, log)
			rep, err := s.Deploy(context.Background(), DeployOptions{})
			tookOver := log.has(func(e Event) bool {
				return e.Type == EventLog && e.Host == "b" && e.TookOver != nil && e.TookOver.Run == "old" &&
					strings.Contains(e.Message, fmt.Sprintf("its process %d on this machine no longer runs", ended.Process.Pid))
			})
			if !tt.takeOver {
				if rep.Worst() != ResultLocked || rep.Hosts["b"].Holder == nil || rep.Hosts["b"].Holder.Run != "old" || tookOver {
					t.Fatalf("Deploy = %v (worst %q, b %+v): want b locked by run old, not taken over", err, rep.Worst(), rep.Hosts["b"])
				}
				return
			}
			if err != nil || rep.Hosts["b"].Result != ResultOK {
				t.Fatalf("Deploy = %v (b %+v): want the dead run's lock taken over and b deployed", err, rep.Hosts["b"])
			}
			if !tookOver {
				t.Error("no host.log saying the lock of run old was taken over because its process ended")
			}
		})
	}
}

// Two runs started together over overlapping hosts: one always gets
// through; the other stops, having pushed nothing. Run many times, so that
// both orders and the interleavings in between happen.
func TestSessionTwoRunsTogether(t *testing.T) {
	dir := testFleet(t, []string{"a", "b", "c", "d"}, "")
	for i := 0; i < 40; i++ {
		locks := &fakeLocks{}
		var wg sync.WaitGroup
		reps := make([]*Report, 2)
		opss := make([]*scriptedOps, 2)
		for j, target := range []string{"a,b,c", "b,c,d"} {
			opss[j] = &scriptedOps{locks: locks, pushDelay: 20 * time.Millisecond}
			s := openSession(t, dir, target, opss[j], &eventLog{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer s.Close()
				reps[j], _ = s.Deploy(context.Background(), DeployOptions{})
			}()
		}
		wg.Wait()
		ok := 0
		for j, rep := range reps {
			switch rep.Worst() {
			case "":
				ok++
			case ResultLocked:
				if slices.ContainsFunc(opss[j].calls, func(c string) bool { return strings.HasPrefix(c, "push") }) {
					t.Fatalf("round %d: run %d was refused but pushed: %v", i, j, opss[j].calls)
				}
			default:
				t.Fatalf("round %d: run %d ended %s", i, j, rep.Worst())
			}
		}
		if ok == 0 {
			t.Fatalf("round %d: both runs gave up: %v / %v", i, opss[0].calls, opss[1].calls)
		}
	}
}

// With WaitLock, the second run waits for the first and then runs.
func TestSessionWaitLock(t *testing.T) {
	dir := testFleet(t, []string{"a", "b"}, "")
	locks := &fakeLocks{}
	first := &scriptedOps{locks: locks, pushDelay: 200 * time.Millisecond}
	s1 := openSession(t, dir, "a,b", first, &eventLog{})
	done := make(chan *Report)
	go func() {
		rep, _ := s1.Deploy(context.Background(), DeployOptions{})
		s1.Close()
		done <- rep
	}()
	for !slices.ContainsFunc(first.snapshot(), func(c string) bool { return strings.HasPrefix(c, "push") }) {
		time.Sleep(5 * time.Millisecond)
	}
	second := &scriptedOps{locks: locks}
	s2 := openSession(t, dir, "b", second, &eventLog{})
	s2.WaitLock = time.Minute
	rep2, err := s2.Deploy(context.Background(), DeployOptions{})
	if err != nil || rep2.Hosts["b"].Result != ResultOK {
		t.Fatalf("the waiting run: %v, %+v", err, rep2.Hosts["b"])
	}
	if rep1 := <-done; rep1.Worst() != "" {
		t.Fatalf("the first run: %v", rep1.Err())
	}
	if !slices.Contains(second.calls, "lock b wait=1m0s") {
		t.Errorf("second run's calls %v: want a waiting lock", second.calls)
	}
}

func (o *scriptedOps) snapshot() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.calls)
}

// A host unreachable for its run lock fails unreachable (in the lock
// phase); the others are deployed.
func TestSessionUnreachableAtLock(t *testing.T) {
	dir := testFleet(t, []string{"a", "b"}, "")
	ops := &scriptedOps{lockFail: map[string]error{"b": &HostFailure{Result: ResultUnreachable, Err: errors.New("dial: no route")}}}
	s := openSession(t, dir, "a,b", ops, &eventLog{})
	rep, err := s.Deploy(context.Background(), DeployOptions{})
	if rep.Worst() != ResultUnreachable || err == nil {
		t.Fatalf("worst %q (%v), want unreachable", rep.Worst(), err)
	}
	if hr := rep.Hosts["b"]; hr.Phase != PhaseLock {
		t.Errorf("b ended in %s, want lock", hr.Phase)
	}
	if rep.Hosts["a"].Result != ResultOK || slices.Contains(ops.calls, "push b") {
		t.Errorf("a %s, calls %v: want a deployed and b not pushed", rep.Hosts["a"].Result, ops.calls)
	}
}

// With max_failures = 0, a host unreachable for its run lock stops the
// deploy before anything is built or copied: no host changes, run.halt
// names the host, the others are skipped and their locks released.
func TestSessionUnreachableAtLockHalts(t *testing.T) {
	dir := testFleet(t, []string{"a", "b", "c"}, "  batch_size = 1\n  max_failures = 0")
	ops := &scriptedOps{lockFail: map[string]error{"b": &HostFailure{Result: ResultUnreachable, Err: errors.New("dial: no route")}}}
	log := &eventLog{}
	s := openSession(t, dir, "all", ops, log)
	rep, err := s.Deploy(context.Background(), DeployOptions{})
	if rep.Worst() != ResultUnreachable || err == nil {
		t.Fatalf("worst %q (%v), want unreachable", rep.Worst(), err)
	}
	if got := rep.With(ResultSkipped); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("skipped %v, want a and c", got)
	}
	for _, call := range ops.snapshot() {
		if !strings.HasPrefix(call, "lock ") && !strings.HasPrefix(call, "unlock ") {
			t.Errorf("call %q: want only locks taken and released", call)
		}
	}
	if !slices.Contains(ops.calls, "unlock a") || !slices.Contains(ops.calls, "unlock c") {
		t.Errorf("calls %v: want the locks of a and c released", ops.calls)
	}
	if log.has(func(e Event) bool { return e.Phase == PhaseBuild }) {
		t.Error("a build event: the run stops before it builds")
	}
	if !log.has(func(e Event) bool { return e.Type == EventHalt && slices.Equal(e.Hosts, []string{"b"}) }) {
		t.Error("no run.halt naming b")
	}
	checkRunBrackets(t, log)
}

// An agent that cannot hold the run lock lets the run go on, saying so.
func TestSessionNoRunLock(t *testing.T) {
	dir := testFleet(t, []string{"a"}, "")
	ops := &scriptedOps{lockFail: map[string]error{"a": agentclient.ErrNoRunLock}}
	log := &eventLog{}
	s := openSession(t, dir, "a", ops, log)
	rep, err := s.Deploy(context.Background(), DeployOptions{})
	if err != nil || rep.Hosts["a"].Result != ResultOK {
		t.Fatalf("%v %+v", err, rep.Hosts["a"])
	}
	if !log.has(func(e Event) bool {
		return e.Type == EventLog && e.Phase == PhaseLock && strings.Contains(e.Message, "going on without the run lock")
	}) {
		t.Error("no host.log saying the run goes on without the run lock")
	}
}

// Builds fan out with Parallel.Build; a host that fails to build makes a
// ConfigError after run.start (nothing was locked or copied), and the run
// still ends with run.done.
func TestSessionBuildFailure(t *testing.T) {
	dir := testFleet(t, []string{"a", "b"}, "")
	if err := os.WriteFile(filepath.Join(dir, "bad.hcl"), []byte("host \"c\" {\n  address = \"192.0.2.3\"\n  file \"/etc/x\" {\n    content = file(\"missing\")\n  }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ops := &scriptedOps{}
	log := &eventLog{}
	var diags hcl.Diagnostics
	s := &Session{Targets: []string{dir}, Command: "build", Builder: testBuilder(t), Ops: ops, Emit: log.emit,
		Diagnostics: func(_ *builder.Fleet, d hcl.Diagnostics) { diags = append(diags, d...) }}
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Build(context.Background())
	var ce *ConfigError
	if !errors.As(err, &ce) || !diags.HasErrors() {
		t.Fatalf("Build = %v (diagnostics %v), want a ConfigError with diagnostics", err, diags)
	}
	if rep.Hosts["c"].Result != ResultFailed || rep.Hosts["c"].Phase != PhaseBuild || rep.Hosts["a"].System == "" {
		t.Errorf("reports a=%+v c=%+v, want a built and c failed in build", rep.Hosts["a"], rep.Hosts["c"])
	}
	if len(ops.calls) != 0 {
		t.Errorf("a build contacted hosts: %v", ops.calls)
	}
	checkRunBrackets(t, log)
}

// A session without a builder cannot deploy: it says so, before it
// touches a host (it used the builder before checking for it, and
// panicked).
func TestSessionDeployWithoutBuilder(t *testing.T) {
	dir := testFleet(t, []string{"a", "b"}, "")
	ops := &scriptedOps{}
	log := &eventLog{}
	s := &Session{Targets: []string{dir + "#all"}, Command: "deploy", Ops: ops, Emit: log.emit}
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, opts := range []DeployOptions{{}, {DryRun: true}, {Mode: ModeBuild}} {
		_, err := s.Deploy(context.Background(), opts)
		if !errors.Is(err, errNoBuilder) {
			t.Errorf("Deploy(%+v) without a builder: %v, want %v", opts, err, errNoBuilder)
		}
	}
	if len(ops.calls) > 0 {
		t.Errorf("the hosts were acted on: %v", ops.calls)
	}
}
