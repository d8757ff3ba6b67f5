package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/google/go-cmp/cmp"
)

// scriptedOps is a HostOps for the rollout logic's unit tests: each host
// behaves as the test says, and every call is recorded.
type scriptedOps struct {
	mu         sync.Mutex
	pushFail   map[string]error
	actFail    map[string]error
	lockFail   map[string]error
	current    map[string]string
	calls      []string
	inCopy     atomic.Int32
	maxInCopy  atomic.Int32
	generation map[string]int
	// locks are the hosts' run locks, shared by the scriptedOps of runs
	// that contend (nil: every lock is free).
	locks *fakeLocks
	// pushDelay makes each push take this long.
	pushDelay time.Duration
	// warnings are the agent's warnings per host.
	warnings map[string][]string
	runs     map[string]*agentapi.RunHolder // the locks this run holds
}

// fakeLocks are run locks as the hosts keep them: one holder per host.
type fakeLocks struct {
	mu   sync.Mutex
	held map[string]*agentapi.RunHolder
}

func (l *fakeLocks) try(host string, run *agentapi.RunHolder) *agentapi.LockReply {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]*agentapi.RunHolder{}
	}
	h := l.held[host]
	if h != nil && h.Run != run.Run && h.Run != run.TakeOver {
		return &agentapi.LockReply{Locked: false, Holder: h}
	}
	l.held[host] = run
	if h != nil && h.Run != run.Run {
		return &agentapi.LockReply{Locked: true, TookOver: h}
	}
	return &agentapi.LockReply{Locked: true}
}

func (l *fakeLocks) release(host string, run *agentapi.RunHolder) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h := l.held[host]; h != nil && h.Run == run.Run {
		delete(l.held, host)
	}
}

func (o *scriptedOps) Lock(ctx context.Context, host string, run *agentapi.RunHolder, wait time.Duration, agent string) (*agentapi.LockReply, error) {
	o.record(fmt.Sprintf("lock %s wait=%v", host, wait))
	if err := o.lockFail[host]; err != nil {
		return nil, err
	}
	if o.locks == nil {
		return &agentapi.LockReply{Locked: true}, nil
	}
	deadline := time.Now().Add(wait)
	for {
		r := o.locks.try(host, run)
		if r.Locked || !time.Now().Before(deadline) {
			if r.Locked {
				o.mu.Lock()
				if o.runs == nil {
					o.runs = map[string]*agentapi.RunHolder{}
				}
				o.runs[host] = run
				o.mu.Unlock()
			}
			return r, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (o *scriptedOps) Unlock(host string) {
	o.record("unlock " + host)
	o.mu.Lock()
	run := o.runs[host]
	delete(o.runs, host)
	o.mu.Unlock()
	if o.locks != nil && run != nil {
		o.locks.release(host, run)
	}
}

func (o *scriptedOps) record(s string) {
	o.mu.Lock()
	o.calls = append(o.calls, s)
	o.mu.Unlock()
}

func (o *scriptedOps) Push(ctx context.Context, host, system string, dryRun bool, progress func(closure.Progress)) (*PushResult, error) {
	n := o.inCopy.Add(1)
	defer o.inCopy.Add(-1)
	for {
		m := o.maxInCopy.Load()
		if n <= m || o.maxInCopy.CompareAndSwap(m, n) {
			break
		}
	}
	o.record("push " + host)
	time.Sleep(o.pushDelay)
	progress(closure.Progress{Path: system, Sent: 10, Total: 10, Done: true})
	if err := o.pushFail[host]; err != nil {
		return nil, err
	}
	cur := o.current[host]
	return &PushResult{Missing: 1, Bytes: 10, Current: cur, BootDefault: cur, Plan: &Plan{Restart: []string{"hello.service"}}}, nil
}

func (o *scriptedOps) Activate(ctx context.Context, host, system string, mode Mode, logf func(string)) (*ActivateOutcome, error) {
	o.record("activate " + host)
	logf("activating " + system)
	if err := o.actFail[host]; err != nil {
		return nil, err
	}
	return &ActivateOutcome{Generation: o.generation[host] + 1, Previous: o.generation[host], Warnings: o.warnings[host]}, nil
}

func (o *scriptedOps) Rollback(ctx context.Context, host string, gen int, logf func(string)) error {
	o.record(fmt.Sprintf("rollback %s to %d", host, gen))
	return nil
}

func systemsFor(hosts ...string) map[string]string {
	m := map[string]string{}
	for _, h := range hosts {
		m[h] = "/var/lib/deploy/store/" + h + "-system"
	}
	return m
}

func TestBatches(t *testing.T) {
	hosts := []string{"a", "b", "c", "d", "e"}
	for _, tt := range []struct {
		size   string
		canary int
		want   [][]string
	}{
		{"1", 1, [][]string{{"a"}, {"b"}, {"c"}, {"d"}, {"e"}}},
		{"2", 0, [][]string{{"a", "b"}, {"c", "d"}, {"e"}}},
		{"2", 1, [][]string{{"a"}, {"b", "c"}, {"d", "e"}}},
		{"2", 2, [][]string{{"a", "b"}, {"c", "d"}, {"e"}}},
		{"1", 3, [][]string{{"a", "b", "c"}, {"d"}, {"e"}}},
		{"40%", 1, [][]string{{"a"}, {"b", "c"}, {"d", "e"}}},
		{"100%", 0, [][]string{hosts}},
		{"100%", 1, [][]string{{"a"}, {"b", "c", "d", "e"}}},
		{"100%", 5, [][]string{hosts}},
		{"", 0, [][]string{{"a"}, {"b"}, {"c"}, {"d"}, {"e"}}},
	} {
		var size builder.BatchSize // "": the zero value, one host
		if tt.size != "" {
			var err error
			if size, err = builder.ParseBatchSize(tt.size); err != nil {
				t.Fatal(err)
			}
		}
		got := Batches(hosts, size, tt.canary)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Batches(%q, canary=%d) (-want +got):\n%s", tt.size, tt.canary, diff)
		}
	}
}

func TestRunFailureRollsBackAll(t *testing.T) {
	ops := &scriptedOps{
		actFail:    map[string]error{"c": &HostFailure{Result: ResultRolledBack, Err: errors.New("health check failed"), LogTail: []string{"http: 500"}}},
		generation: map[string]int{"a": 3, "b": 3, "c": 3, "d": 3, "e": 3},
	}
	var events []Event
	r := &Runner{Ops: ops, Mode: ModeSwitch, Emit: func(e Event) { events = append(events, e) }}
	rep := r.Run(context.Background(), systemsFor("a", "b", "c", "d", "e"),
		Rollout{Batches: [][]string{{"a"}, {"b", "c"}, {"d", "e"}}, RollbackAll: true})

	want := map[Result][]string{ResultRolledBack: {"a", "b", "c"}, ResultSkipped: {"d", "e"}}
	for res, hosts := range want {
		if got := rep.With(res); !slices.Equal(got, hosts) {
			t.Errorf("hosts %s = %v, want %v", res, got, hosts)
		}
	}
	if rep.Hosts["c"].Phase != PhaseActivate || rep.Hosts["c"].LogTail[0] != "http: 500" {
		t.Errorf("c: %+v, want a failure in activate with the target's log tail", rep.Hosts["c"])
	}
	for _, call := range []string{"rollback a to 3", "rollback b to 3"} {
		if !slices.Contains(ops.calls, call) {
			t.Errorf("calls %v lack %q", ops.calls, call)
		}
	}
	if slices.Contains(ops.calls, "push d") || slices.Contains(ops.calls, "rollback c to 3") {
		t.Errorf("calls %v: touched a skipped host, or rolled back the host that rolled itself back", ops.calls)
	}
	last := events[len(events)-1]
	if last.Type != EventRunDone || !slices.Equal(last.Summary[ResultRolledBack], []string{"a", "b", "c"}) {
		t.Errorf("last event %+v, want run.done with the rolled-back hosts", last)
	}
	for _, e := range events {
		if e.V != EventSchemaVersion || e.Time.IsZero() {
			t.Fatalf("event %+v lacks version or time", e)
		}
	}
}

func TestRunUnreachableOthersComplete(t *testing.T) {
	ops := &scriptedOps{pushFail: map[string]error{"b": errors.New("reach \"b\": keepalive: no reply")}}
	r := &Runner{Ops: ops, Mode: ModeSwitch}
	rep := r.Run(context.Background(), systemsFor("a", "b", "c"), Rollout{Batches: [][]string{{"a", "b", "c"}}, MaxFailures: 1, RollbackAll: true})
	if got := rep.With(ResultOK); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("ok hosts = %v, want a and c", got)
	}
	if got := rep.With(ResultUnreachable); !slices.Equal(got, []string{"b"}) || rep.Hosts["b"].Phase != PhaseCopy {
		t.Errorf("unreachable = %v (%+v), want b in copy", got, rep.Hosts["b"])
	}
}

// Hosts that failed before the rollout (their run lock could not be
// taken) count against max_failures before the first batch: with more than
// it allows, no host is touched and run.halt names them.
func TestRunFailedBeforeRollout(t *testing.T) {
	cut := errors.New(`reach "b": dial tcp: i/o timeout`)
	for _, tt := range []struct {
		name        string
		maxFailures int
		wantCalls   []string
		want        map[Result][]string
	}{
		{"max-failures-0", 0, nil, map[Result][]string{ResultUnreachable: {"b"}, ResultSkipped: {"a", "c"}}},
		{"max-failures-1", 1, []string{"push a", "activate a", "push c", "activate c"}, map[Result][]string{ResultUnreachable: {"b"}, ResultOK: {"a", "c"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ops := &scriptedOps{}
			var events []Event
			r := &Runner{Ops: ops, Mode: ModeSwitch, Failed: map[string]error{"b": cut}, Emit: func(e Event) { events = append(events, e) }}
			rep := r.Run(context.Background(), systemsFor("a", "b", "c"),
				Rollout{Batches: [][]string{{"a"}, {"b"}, {"c"}}, MaxFailures: tt.maxFailures, RollbackAll: true})
			if diff := cmp.Diff(tt.wantCalls, ops.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			for res, hosts := range tt.want {
				if got := rep.With(res); !slices.Equal(got, hosts) {
					t.Errorf("hosts %s = %v, want %v", res, got, hosts)
				}
			}
			if hr := rep.Hosts["b"]; hr.Phase != PhaseLock || !errors.Is(hr.Err, cut) {
				t.Errorf("b: %+v, want unreachable in lock with its error", hr)
			}
			// b's result comes before any batch starts.
			bResult := slices.IndexFunc(events, func(e Event) bool { return e.Type == EventResult && e.Host == "b" })
			firstBatch := slices.IndexFunc(events, func(e Event) bool { return e.Type == EventBatchStart })
			halt := slices.IndexFunc(events, func(e Event) bool { return e.Type == EventHalt })
			if bResult < 0 || (firstBatch >= 0 && bResult > firstBatch) {
				t.Errorf("b's result at event %d, first batch.start at %d: want b's result first", bResult, firstBatch)
			}
			if tt.maxFailures == 0 {
				if halt < 0 || !slices.Equal(events[halt].Hosts, []string{"b"}) || !strings.Contains(events[halt].Message, "max_failures = 0") {
					t.Fatalf("events %+v: want run.halt naming b and max_failures", events)
				}
				if firstBatch >= 0 {
					t.Errorf("batch.start at event %d after run.halt: want none", firstBatch)
				}
				for _, h := range []string{"a", "c"} {
					i := slices.IndexFunc(events, func(e Event) bool { return e.Type == EventResult && e.Host == h })
					if i < 0 || events[i].Result != ResultSkipped || events[i].Message != haltedMessage {
						t.Errorf("%s: no result skipped with %q in %+v", h, haltedMessage, events)
					}
				}
			} else if halt >= 0 {
				t.Errorf("run.halt %+v within max_failures", events[halt])
			}
		})
	}
}

func TestRunUnchangedAndDryRun(t *testing.T) {
	sys := systemsFor("a", "b")
	ops := &scriptedOps{current: map[string]string{"a": sys["a"]}}
	rep := (&Runner{Ops: ops, Mode: ModeSwitch}).Run(context.Background(), sys, Rollout{Batches: [][]string{{"a", "b"}}})
	if rep.Hosts["a"].Result != ResultUnchanged || rep.Hosts["b"].Result != ResultOK {
		t.Errorf("results a=%s b=%s, want unchanged and ok", rep.Hosts["a"].Result, rep.Hosts["b"].Result)
	}
	if slices.Contains(ops.calls, "activate a") {
		t.Error("activated a host that already runs the system")
	}
	ops = &scriptedOps{}
	var plans []Event
	dryStart := false
	rep = (&Runner{Ops: ops, Mode: ModeSwitch, DryRun: true, Emit: func(e Event) {
		if e.Type == EventPlan {
			plans = append(plans, e)
		}
		if e.Type == EventRunStart {
			dryStart = e.DryRun
		}
	}}).Run(context.Background(), sys, Rollout{Batches: [][]string{{"a", "b"}}})
	if !dryStart {
		t.Error("the dry run's run.start does not say dry_run")
	}
	if slices.ContainsFunc(ops.calls, func(c string) bool { return c[:4] != "push" }) {
		t.Errorf("dry run made calls %v, want pushes only", ops.calls)
	}
	if got := rep.With(ResultPlanned); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("dry run results: planned %v, want a and b", got)
	}
	if len(plans) != 2 || plans[0].CopyPaths != 1 || plans[0].Restart[0] != "hello.service" {
		t.Errorf("plans %+v", plans)
	}
}

func TestRunCopyParallelism(t *testing.T) {
	var hosts []string
	for i := 0; i < 12; i++ {
		hosts = append(hosts, fmt.Sprint("h", i))
	}
	ops := &scriptedOps{}
	(&Runner{Ops: ops, Mode: ModePush, Parallel: Parallelism{Copy: 3}}).Run(context.Background(), systemsFor(hosts...), Rollout{Batches: [][]string{hosts}})
	if m := ops.maxInCopy.Load(); m > 3 {
		t.Fatalf("%d copies at once, limit 3", m)
	}
}

// The agent's warnings (secrets on a tmpfs) become host.warning events.
func TestRunWarnings(t *testing.T) {
	ops := &scriptedOps{warnings: map[string][]string{"b": {"secrets: /run/deploy/secrets.d is a tmpfs: decrypted secrets can be swapped to disk"}}}
	var warnings []Event
	rep := (&Runner{Ops: ops, Mode: ModeSwitch, Emit: func(e Event) {
		if e.Type == EventWarning {
			warnings = append(warnings, e)
		}
	}}).Run(context.Background(), systemsFor("a", "b"), Rollout{Batches: [][]string{{"a", "b"}}})
	if rep.Hosts["b"].Result != ResultOK {
		t.Fatalf("b: %s, want ok (a warning does not fail the host)", rep.Hosts["b"].Result)
	}
	if len(warnings) != 1 || warnings[0].Host != "b" || warnings[0].Phase != PhaseActivate || warnings[0].Message != ops.warnings["b"][0] {
		t.Fatalf("warning events %+v, want one for b", warnings)
	}
}
