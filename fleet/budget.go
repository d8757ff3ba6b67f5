package fleet

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/declarative/deploy/builder"
)

// BudgetError is a host left alone because a disruption budget of its
// deployment (max_unavailable) is spent by hosts that may be down: they
// failed in this run, or could not be reached or locked before it.
type BudgetError struct {
	Budget builder.Budget
	Down   []string
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("max_unavailable for %s is %s (%d %s) and %s may be down (%s): not changed",
		e.Budget.Name(), e.Budget.Spec, e.Budget.Max, plural(e.Budget.Max, "host", "hosts"),
		plural(len(e.Down), "this host", "these hosts"), strings.Join(e.Down, ", "))
}

// announceBudgets says a run's budgets at its start: at most so many of a
// group's hosts do what (activate, reboot) at once.
func announceBudgets(bs []builder.Budget, what string, emit func(Event)) {
	for _, b := range bs {
		emit(Event{Type: EventLog, Hosts: b.Hosts, Message: fmt.Sprintf("max_unavailable: at most %d of %s %s (%s) %s at once, counting hosts that may be down",
			b.Max, plural(len(b.Hosts), "the host of", "the hosts of"), b.Name(), strings.Join(b.Hosts, ", "), what)})
	}
}

// budgets are a run's disruption budgets. A host takes a slot in each
// budget of its groups, in the budgets' order (so no two hosts each hold
// what the other waits for), before the step that takes it down
// (activation, reboot), waiting while the budget is full, and gives its
// slots back when that step leaves it up (ok, unchanged, rolled back). A
// host that failed otherwise, or was down before the run, keeps its slots
// for the rest of the run: it may be down. When a budget's kept slots
// alone fill it, its other hosts are not changed ([BudgetError]).
type budgets struct {
	mu   sync.Mutex
	wake chan struct{} // closed, and made again, when a slot is given back
	of   map[string][]*budget
}

type budget struct {
	builder.Budget
	used int      // slots of hosts in their disruptive step now
	down []string // hosts that keep their slot for the run
}

func newBudgets(bs []builder.Budget) *budgets {
	if len(bs) == 0 {
		return nil
	}
	t := &budgets{wake: make(chan struct{}), of: map[string][]*budget{}}
	for _, b := range bs {
		bb := &budget{Budget: b}
		for _, h := range b.Hosts {
			t.of[h] = append(t.of[h], bb)
		}
	}
	return t
}

// down records host as down for the whole run (it failed before it).
func (t *budgets) markDown(host string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.of[host] {
		b.down = append(b.down, host)
	}
}

// spent returns a *[BudgetError] when a budget of host's groups is spent
// by hosts that may be down: the host would never get its slot.
func (t *budgets) spent(host string) error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.of[host] {
		if len(b.down) >= b.Max {
			return &BudgetError{Budget: b.Budget, Down: slices.Clone(b.down)}
		}
	}
	return nil
}

// acquire takes a slot in each of host's budgets, waiting for them; it
// returns a *[BudgetError] when one is spent by down hosts, or ctx's
// error. The release function gives the slots back, or with keep (the
// host may be down) keeps them for the run.
func (t *budgets) acquire(ctx context.Context, host string) (release func(keep bool), err error) {
	if t == nil || len(t.of[host]) == 0 {
		return func(bool) {}, nil
	}
	mine := t.of[host]
	t.mu.Lock()
	taken := 0
	for taken < len(mine) {
		b := mine[taken]
		if len(b.down) >= b.Max {
			err := &BudgetError{Budget: b.Budget, Down: slices.Clone(b.down)}
			t.giveBack(mine[:taken], "", false)
			t.mu.Unlock()
			return nil, err
		}
		if b.used+len(b.down) < b.Max {
			b.used++
			taken++
			continue
		}
		wake := t.wake
		t.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			t.mu.Lock()
			t.giveBack(mine[:taken], "", false)
			t.mu.Unlock()
			return nil, ctx.Err()
		}
		t.mu.Lock()
	}
	t.mu.Unlock()
	var once sync.Once
	return func(keep bool) {
		once.Do(func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			t.giveBack(mine, host, keep)
		})
	}, nil
}

// giveBack frees the slots of bs, or keeps them as host's for the run;
// either wakes every waiting host (a kept slot may spend a budget).
// t.mu is held.
func (t *budgets) giveBack(bs []*budget, host string, keep bool) {
	for _, b := range bs {
		b.used--
		if keep {
			b.down = append(b.down, host)
		}
	}
	close(t.wake)
	t.wake = make(chan struct{})
}

// keepsSlot reports whether a host that ended with result may be down:
// every result but those that leave it running a known-good generation.
func keepsSlot(r Result) bool {
	switch r {
	case ResultOK, ResultUnchanged, ResultPlanned, ResultRolledBack, ResultSkipped:
		return false
	}
	return true
}

// SplitWaves splits each of waves so that none holds more hosts of a
// budget's group than the budget allows, keeping the hosts' order: a host
// that would overfill a budget goes into the next part of its wave. Pull
// mode's waves go one after another, so a budget holds across them; a
// host down before its wave is not counted (max_failures and the wave
// gate see to failures).
func SplitWaves(waves [][]string, bs []builder.Budget) [][]string {
	if len(bs) == 0 {
		return waves
	}
	of := map[string][]int{}
	for i, b := range bs {
		for _, h := range b.Hosts {
			of[h] = append(of[h], i)
		}
	}
	var out [][]string
	for _, wave := range waves {
		rest := slices.Clone(wave)
		for len(rest) > 0 {
			used := make([]int, len(bs))
			var part, later []string
			for _, h := range rest {
				fits := true
				for _, i := range of[h] {
					if used[i] >= bs[i].Max {
						fits = false
					}
				}
				if !fits {
					later = append(later, h)
					continue
				}
				for _, i := range of[h] {
					used[i]++
				}
				part = append(part, h)
			}
			out = append(out, part)
			rest = later
		}
	}
	return out
}
