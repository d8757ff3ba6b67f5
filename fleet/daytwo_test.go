package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// dayTwoOps is a scriptedOps that also reboots and compares hosts with
// their generation, as SSHOps does.
type dayTwoOps struct {
	scriptedOps
	boot       map[string]string // the boot default, when it is not the current system
	drift      map[string][]agentapi.DriftItem
	rebootFail map[string]error
}

func (o *dayTwoOps) Push(ctx context.Context, host, system string, dryRun bool, progress func(closure.Progress)) (*PushResult, error) {
	pr, err := o.scriptedOps.Push(ctx, host, system, dryRun, progress)
	if pr != nil && o.boot[host] != "" {
		pr.BootDefault = o.boot[host]
	}
	return pr, err
}

func (o *dayTwoOps) Drift(ctx context.Context, host string) (*agentapi.Drift, error) {
	o.record("drift " + host)
	return &agentapi.Drift{V: 1, Generation: 3, Items: o.drift[host]}, nil
}

func (o *dayTwoOps) Reboot(ctx context.Context, host string, opts RebootOptions, logf func(string)) (*agentapi.Health, error) {
	o.record("reboot " + host)
	if err := o.rebootFail[host]; err != nil {
		return &agentapi.Health{V: 1, Message: err.Error()}, &HostFailure{Result: ResultFailed, Err: err}
	}
	return &agentapi.Health{V: 1, Healthy: true, Current: o.generation[host] + 1, Boot: o.generation[host] + 1}, nil
}

// A host that runs the system already but drifted from it is activated
// again (to repair it), with a warning naming what is overwritten; one
// that did not drift stays unchanged.
func TestRunDriftReapplies(t *testing.T) {
	sys := systemsFor("a", "b")
	ops := &dayTwoOps{
		scriptedOps: scriptedOps{current: sys},
		drift:       map[string][]agentapi.DriftItem{"a": {{Kind: "file", Name: "/etc/a", Problem: "content"}}},
	}
	var warnings []Event
	rep := (&Runner{Ops: ops, Mode: ModeSwitch, Emit: func(e Event) {
		if e.Type == EventWarning {
			warnings = append(warnings, e)
		}
	}}).Run(context.Background(), sys, Rollout{Batches: [][]string{{"a", "b"}}})
	if rep.Hosts["a"].Result != ResultOK || rep.Hosts["b"].Result != ResultUnchanged {
		t.Errorf("results a=%s b=%s, want ok (re-applied) and unchanged", rep.Hosts["a"].Result, rep.Hosts["b"].Result)
	}
	if !slices.Contains(ops.calls, "activate a") || slices.Contains(ops.calls, "activate b") {
		t.Errorf("calls %v: want a activated again, b not", ops.calls)
	}
	if len(warnings) != 1 || warnings[0].Host != "a" || warnings[0].Phase != PhaseVerify || warnings[0].Drift == nil ||
		!strings.Contains(warnings[0].Message, "file /etc/a: content") {
		t.Errorf("warnings %+v, want one for a naming the drifted file", warnings)
	}
	// A dry run says what a deploy would overwrite, and changes nothing.
	ops.calls, warnings = nil, nil
	(&Runner{Ops: ops, Mode: ModeSwitch, DryRun: true, Emit: func(e Event) {
		if e.Type == EventWarning {
			warnings = append(warnings, e)
		}
	}}).Run(context.Background(), sys, Rollout{Batches: [][]string{{"a", "b"}}})
	if slices.ContainsFunc(ops.calls, func(c string) bool { return strings.HasPrefix(c, "activate") }) {
		t.Errorf("dry run calls %v", ops.calls)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0].Message, "a deploy would overwrite it") {
		t.Errorf("dry run warnings %+v, want one for a", warnings)
	}
}

// runningOps is a dayTwoOps whose run lock also says what each host runs
// and boots, as the agent's run-lock reply does.
type runningOps struct {
	dayTwoOps
	running map[string][2]string // current, boot default
}

func (o *runningOps) Running(host string) (string, string, bool) {
	r, ok := o.running[host]
	return r[0], r[1], ok
}

// A host whose run lock says it runs and boots the system, with no drift,
// is unchanged without a transfer session (no push); a drifted one, one
// that boots another system, and one whose agent did not say are pushed
// as before; a dry run always asks for the plan.
func TestRunUnchangedFromLock(t *testing.T) {
	sys := systemsFor("a", "b", "c", "d")
	ops := &runningOps{
		dayTwoOps: dayTwoOps{
			scriptedOps: scriptedOps{current: sys},
			boot:        map[string]string{"c": "/old"},
			drift:       map[string][]agentapi.DriftItem{"b": {{Kind: "unit", Name: "web.service", Problem: "inactive"}}},
		},
		running: map[string][2]string{"a": {sys["a"], sys["a"]}, "b": {sys["b"], sys["b"]}, "c": {sys["c"], "/old"}},
	}
	var events []Event
	rep := (&Runner{Ops: ops, Mode: ModeSwitch, Emit: func(e Event) { events = append(events, e) }}).Run(context.Background(), sys, Rollout{Batches: [][]string{{"a", "b", "c", "d"}}})
	for h, want := range map[string]Result{"a": ResultUnchanged, "b": ResultOK, "c": ResultOK, "d": ResultUnchanged} {
		if got := rep.Hosts[h].Result; got != want {
			t.Errorf("%s: %s, want %s", h, got, want)
		}
	}
	if slices.Contains(ops.calls, "push a") {
		t.Errorf("calls %v: a was pushed although its run lock said it runs and boots its system", ops.calls)
	}
	for _, c := range []string{"push b", "activate b", "push c", "activate c", "push d"} {
		if !slices.Contains(ops.calls, c) {
			t.Errorf("calls %v lack %q", ops.calls, c)
		}
	}
	if p := rep.Hosts["a"].Push; p == nil || p.Current != sys["a"] || p.BootDefault != sys["a"] {
		t.Errorf("a's push result %+v, want its current and boot systems from the lock", p)
	}
	if !slices.ContainsFunc(events, func(e Event) bool {
		return e.Type == EventResult && e.Host == "a" && e.Result == ResultUnchanged && e.System == sys["a"]
	}) {
		t.Errorf("no unchanged result event for a in %+v", events)
	}
	// In boot mode the boot default decides: c boots /old, so it is
	// pushed; a is unchanged.
	ops.calls = nil
	rep = (&Runner{Ops: ops, Mode: ModeBoot}).Run(context.Background(), sys, Rollout{Batches: [][]string{{"a", "c"}}})
	if rep.Hosts["a"].Result != ResultUnchanged || slices.Contains(ops.calls, "push a") || !slices.Contains(ops.calls, "push c") {
		t.Errorf("boot mode: a %s, calls %v; want a unchanged without a push, c pushed", rep.Hosts["a"].Result, ops.calls)
	}
	// A dry run still asks each host (the plan comes with the push).
	ops.calls = nil
	(&Runner{Ops: ops, Mode: ModeSwitch, DryRun: true}).Run(context.Background(), sys, Rollout{Batches: [][]string{{"a"}}})
	if !slices.Contains(ops.calls, "push a") {
		t.Errorf("dry run calls %v, want a push for the plan", ops.calls)
	}
}

// deploy --mode boot --reboot: a host gets the new boot default and then
// reboots; one whose boot default it already is only reboots; one that
// already runs it does neither; a host that comes back unhealthy fails in
// the reboot phase and stops the rollout.
func TestRunBootReboot(t *testing.T) {
	sys := systemsFor("a", "b", "c", "d", "e")
	ops := &dayTwoOps{
		scriptedOps: scriptedOps{current: map[string]string{"b": "/old", "c": sys["c"]}},
		boot:        map[string]string{"b": sys["b"]},
		rebootFail:  map[string]error{"d": errors.New("units not running: web.service: failed/failed")},
	}
	rep := (&Runner{Ops: ops, Mode: ModeBoot, Reboot: &RebootOptions{}}).Run(context.Background(), sys,
		Rollout{Batches: [][]string{{"a", "b", "c"}, {"d"}, {"e"}}})
	for h, want := range map[string]Result{"a": ResultOK, "b": ResultOK, "c": ResultUnchanged, "d": ResultFailed, "e": ResultSkipped} {
		if got := rep.Hosts[h].Result; got != want {
			t.Errorf("%s: %s, want %s", h, got, want)
		}
	}
	for _, h := range []string{"a", "b", "d"} {
		if rep.Hosts[h].Phase != PhaseReboot {
			t.Errorf("%s ended in phase %s, want reboot", h, rep.Hosts[h].Phase)
		}
	}
	for _, c := range []string{"activate a", "reboot a", "reboot b", "activate d", "reboot d"} {
		if !slices.Contains(ops.calls, c) {
			t.Errorf("calls %v lack %q", ops.calls, c)
		}
	}
	for _, c := range []string{"activate b", "activate c", "reboot c", "push e", "reboot e"} {
		if slices.Contains(ops.calls, c) {
			t.Errorf("calls %v include %q", ops.calls, c)
		}
	}
	if i, j := slices.Index(ops.calls, "activate a"), slices.Index(ops.calls, "reboot a"); i > j {
		t.Errorf("calls %v: a rebooted before its activation", ops.calls)
	}
}

// deploy reboot: batch by batch under the run lock; a host that does not
// come back healthy stops the rollout after its batch, the rest are
// skipped and not rebooted.
func TestSessionReboot(t *testing.T) {
	dir := testFleet(t, []string{"a", "b", "c", "d"}, "batch_size = 2\n  canary = 0")
	ops := &dayTwoOps{rebootFail: map[string]error{"b": errors.New("health check \"web\" failed")}}
	log := &eventLog{}
	s := openSession(t, dir, "all", ops, log)
	s.Command = "reboot"
	rep, err := s.Reboot(context.Background(), RebootOptions{})
	var re *RunError
	if !errors.As(err, &re) || rep.Worst() != ResultFailed {
		t.Fatalf("Reboot: %v, want a run error with b failed", err)
	}
	for h, want := range map[string]Result{"a": ResultOK, "b": ResultFailed, "c": ResultSkipped, "d": ResultSkipped} {
		if got := rep.Hosts[h].Result; got != want {
			t.Errorf("%s: %s, want %s", h, got, want)
		}
	}
	for _, h := range []string{"a", "b", "c", "d"} {
		if !slices.Contains(ops.calls, fmt.Sprintf("lock %s wait=0s", h)) {
			t.Errorf("calls %v: %s's run lock not taken", ops.calls, h)
		}
	}
	if slices.Contains(ops.calls, "reboot c") || slices.Contains(ops.calls, "reboot d") {
		t.Errorf("calls %v: rebooted a host of the batch after the failure", ops.calls)
	}
	if !log.has(func(e Event) bool { return e.Type == EventResult && e.Host == "c" && e.Result == ResultSkipped }) {
		t.Errorf("no host.result skipped for c")
	}
	checkRunBrackets(t, log)
}
