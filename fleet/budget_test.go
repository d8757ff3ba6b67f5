package fleet

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/builder"
	"github.com/google/go-cmp/cmp"
)

// countingOps records, per group, the most hosts activating at once.
type countingOps struct {
	*scriptedOps
	groups map[string][]string // group → hosts
	mu     sync.Mutex
	now    map[string]int
	most   map[string]int
}

func (o *countingOps) Activate(ctx context.Context, host, system string, mode Mode, logf func(string)) (*ActivateOutcome, error) {
	o.mu.Lock()
	for g, hosts := range o.groups {
		if slices.Contains(hosts, host) {
			o.now[g]++
			o.most[g] = max(o.most[g], o.now[g])
		}
	}
	o.mu.Unlock()
	// Long enough for every host of the batch to get here while this one
	// still activates, were nothing holding them back.
	time.Sleep(30 * time.Millisecond)
	defer func() {
		o.mu.Lock()
		for g, hosts := range o.groups {
			if slices.Contains(hosts, host) {
				o.now[g]--
			}
		}
		o.mu.Unlock()
	}()
	return o.scriptedOps.Activate(ctx, host, system, mode, logf)
}

// A batch of five hosts goes at once, but no more of a group activate at
// once than its budget allows.
func TestRunBudgetLimitsActivations(t *testing.T) {
	db, web := []string{"db1", "db2", "db3"}, []string{"web1", "web2", "web3"}
	ops := &countingOps{scriptedOps: &scriptedOps{}, groups: map[string][]string{"@db": db, "@web": web},
		now: map[string]int{}, most: map[string]int{}}
	all := append(slices.Clone(db), web...)
	for _, tt := range []struct {
		name    string
		budgets []builder.Budget
		want    map[string]int
	}{
		{"none", nil, map[string]int{"@db": 3, "@web": 3}},
		{"db-1-web-2", []builder.Budget{{Group: "@db", Hosts: db, Max: 1, Spec: "1"}, {Group: "@web", Hosts: web, Max: 2, Spec: "2"}},
			map[string]int{"@db": 1, "@web": 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clear(ops.most)
			rep := (&Runner{Ops: ops, Mode: ModeSwitch}).Run(context.Background(), systemsFor(all...),
				Rollout{Batches: [][]string{all}, Budgets: tt.budgets})
			if got := rep.With(ResultOK); !slices.Equal(got, all) {
				t.Fatalf("ok hosts %v, want all of %v", got, all)
			}
			if diff := cmp.Diff(tt.want, ops.most); diff != "" {
				t.Errorf("most hosts of a group activating at once (-want +got):\n%s", diff)
			}
		})
	}
}

// A host that may be down (unreachable before the run, or failed without
// rolling back) keeps its budget's slot: the group's other hosts are not
// changed once the budget is spent, and say why. A host that rolled back
// by itself gives its slot back.
func TestRunBudgetDownHosts(t *testing.T) {
	db := []string{"db1", "db2", "db3"}
	budget := []builder.Budget{{Group: "@db", Hosts: db, Max: 1, Spec: "1"}}
	for _, tt := range []struct {
		name      string
		failed    map[string]error
		actFail   map[string]error
		wantCalls []string
		want      map[Result][]string
	}{
		{"unreachable-before", map[string]error{"db1": errors.New(`reach "db1": dial tcp: i/o timeout`)}, nil,
			[]string{"push web1", "activate web1"},
			map[Result][]string{ResultUnreachable: {"db1"}, ResultSkipped: {"db2", "db3"}, ResultOK: {"web1"}}},
		{"failed-in-run", nil, map[string]error{"db1": &HostFailure{Result: ResultFailed, Err: errors.New("connection lost")}},
			[]string{"push db1", "activate db1", "push web1", "activate web1"},
			map[Result][]string{ResultFailed: {"db1"}, ResultSkipped: {"db2", "db3"}, ResultOK: {"web1"}}},
		{"rolled-back", nil, map[string]error{"db1": &HostFailure{Result: ResultRolledBack, Err: errors.New("health check failed")}},
			[]string{"push db1", "activate db1", "push db2", "activate db2", "push db3", "activate db3", "push web1", "activate web1"},
			map[Result][]string{ResultRolledBack: {"db1"}, ResultOK: {"db2", "db3", "web1"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ops := &scriptedOps{actFail: tt.actFail}
			var events []Event
			var mu sync.Mutex
			r := &Runner{Ops: ops, Mode: ModeSwitch, Failed: tt.failed, Emit: func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }}
			// db1 alone first, then the rest in one batch, one at a
			// time so the calls' order is the test's.
			r.Parallel.Copy = 1
			rep := r.Run(context.Background(), systemsFor("db1", "db2", "db3", "web1"),
				Rollout{Batches: [][]string{{"db1"}, {"db2", "db3", "web1"}}, MaxFailures: 3, Budgets: budget})
			for res, hosts := range tt.want {
				if got := rep.With(res); !slices.Equal(got, hosts) {
					t.Errorf("hosts %s = %v, want %v", res, got, hosts)
				}
			}
			var calls []string
			for _, c := range ops.calls {
				if strings.HasPrefix(c, "push") || strings.HasPrefix(c, "activate") {
					calls = append(calls, c)
				}
			}
			slices.Sort(calls)
			wantCalls := slices.Clone(tt.wantCalls)
			slices.Sort(wantCalls)
			if diff := cmp.Diff(wantCalls, calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			for _, h := range tt.want[ResultSkipped] {
				var be *BudgetError
				if !errors.As(rep.Hosts[h].Err, &be) || !slices.Equal(be.Down, []string{"db1"}) {
					t.Errorf("%s: error %v, want the budget spent by db1", h, rep.Hosts[h].Err)
					continue
				}
				msg := rep.Hosts[h].Err.Error()
				if !strings.Contains(msg, "max_unavailable for @db is 1") || !strings.Contains(msg, "db1") {
					t.Errorf("%s: message %q does not name the budget and the down host", h, msg)
				}
			}
		})
	}
}

func TestSplitWaves(t *testing.T) {
	db := builder.Budget{Group: "@db", Hosts: []string{"db1", "db2", "db3"}, Max: 1}
	web := builder.Budget{Group: "@web", Hosts: []string{"web1", "web2", "web3", "web4"}, Max: 2}
	waves := [][]string{{"db1"}, {"db2", "db3", "web1", "web2", "web3", "web4", "x"}}
	got := SplitWaves(waves, []builder.Budget{db, web})
	want := [][]string{{"db1"}, {"db2", "web1", "web2", "x"}, {"db3", "web3", "web4"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("SplitWaves (-want +got):\n%s", diff)
	}
	if got := SplitWaves(waves, nil); !cmp.Equal(got, waves) {
		t.Errorf("no budgets: %v, want the waves unchanged", got)
	}
}
