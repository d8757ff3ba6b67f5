package activation

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/internal/atomicfile"
)

// A worker that holds the lock and whose heartbeat stands still is killed
// (the lock is still its own when the watchdog asks for that, and nothing
// was changed yet), then taken over like a dead one: here a boot-mode
// activation in phase applying, which ends rolled back with the boot
// default kept, the result and state saying the worker hung, and the lock
// free.
func TestWatchTakesOverHungWorker(t *testing.T) {
	defer func(d time.Duration) { hungAfter = d }(hungAfter)
	hungAfter = 300 * time.Millisecond
	dir := t.TempDir()
	l := Layout{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), UnitDir: filepath.Join(dir, "units")}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	sys1 := "/var/lib/deploy/store/00000000000000000000000000000000-system-web1"
	sys2 := "/var/lib/deploy/store/11111111111111111111111111111111-system-web1"
	for n, sys := range map[int]string{1: sys1, 2: sys2} {
		if _, err := l.createGeneration(n, sys, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.setCurrent(sys1); err != nil {
		t.Fatal(err)
	}
	const id = "7"
	st := &State{Current: 1, CurrentSystem: sys1, Activation: &ActivationState{}}
	st.Activation.ID, st.Activation.Generation, st.Activation.Previous = id, 2, 1
	st.Activation.Mode, st.Activation.Phase, st.Activation.PID = ModeBoot, PhaseApplying, os.Getpid()
	if err := l.writeState(st); err != nil {
		t.Fatal(err)
	}
	// The worker: it holds the lock, and its heartbeat stopped at 5.
	workerLock, err := l.TryLock(Holder{PID: os.Getpid(), User: "root", Activation: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(l.heartbeatFile(id), []byte("5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stopped []string
	w := &Worker{Layout: l, Logf: t.Logf, StopWorker: func(sid string, pid int) error {
		stopped = append(stopped, sid)
		if len(stopped) == 1 {
			if err := l.CheckLock(); err == nil {
				t.Errorf("StopWorker called when the lock was free")
			}
			if cur, _ := l.ReadState(); cur.Activation.Phase != PhaseApplying {
				t.Errorf("phase %s when StopWorker was called: the watchdog acted before the worker was gone", cur.Activation.Phase)
			}
			if pid != os.Getpid() {
				t.Errorf("StopWorker(%q, %d), want the worker's pid %d", sid, pid, os.Getpid())
			}
			workerLock.Unlock() // the worker's death releases its lock
		}
		return nil
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Watch(ctx, id); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if len(stopped) == 0 || stopped[0] != id {
		t.Fatalf("StopWorker calls %q, want the hung worker %q stopped", stopped, id)
	}
	res, err := l.ReadResult(id)
	if err != nil || res == nil {
		t.Fatalf("result: %v, %v", res, err)
	}
	if res.Outcome != OutcomeRolledBack || !strings.Contains(res.Message, "hung (no heartbeat for") {
		t.Errorf("result %s %q, want rolled-back saying the worker hung", res.Outcome, res.Message)
	}
	cur, err := l.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	if cur.Activation.Phase != PhaseRolledBack || cur.Activation.Message != res.Message {
		t.Errorf("state: phase %s %q, want rolled-back with the result's message", cur.Activation.Phase, cur.Activation.Message)
	}
	if g, err := l.Generation(2); err != nil || !g.Failed {
		t.Errorf("generation 2: %+v, %v; want it marked failed", g, err)
	}
	if err := l.CheckLock(); err != nil {
		t.Errorf("the lock after the takeover: %v", err)
	}
	got := parseTextfile(t, l)
	wantSamples(t, got, "after the takeover", map[string]float64{
		"deploy_current_generation":                           1,
		"deploy_last_activation_generation":                   2,
		"deploy_last_activation_outcome{outcome=rolled-back}": 1,
		"deploy_last_rollback_success":                        1,
		"deploy_last_rollback_generation":                     1,
	})
}
