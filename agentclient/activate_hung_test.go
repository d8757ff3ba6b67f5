package agentclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// A hung (not dead) activation worker: SIGSTOP its main process at a step,
// and its watchdog, once the heartbeat has stood still for its bound
// (20 s), kills the worker's unit, confirms it gone, and takes over. Hung
// while applying, the host ends on the old system (rolled back); hung
// while awaiting a confirmation that the operator then sends, it ends on
// the new one. Before that, a health check that takes longer than the
// bound (25 s) does not look hung. Each time state and result say what
// happened, the lock is free, nothing of the worker runs, and the metrics
// read what the host is.
func TestActivateHungWorker(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := newSecretFleet(f)
	db := "db-" + rand2()
	s.put("db", db)
	secret := appUser + secretDecl("db", "app")
	check := "  health_check \"ok\" {\n    command = [\"/bin/true\"]\n  }\n"
	sysA := &killSystem{name: "A", conf: "A\n", only: "/etc/app/only-a", absent: "/etc/app/only-b",
		units: map[string]bool{"a.service": true, "b.service": false}, secrets: map[string]string{"db": db}}
	sysA.path = s.build(secret + svc("a", "1", "1") + file("/etc/app/conf", sysA.conf) + file(sysA.only, "a\n") + check)
	// B's activation script says when it runs, then takes 3 s.
	sysB := &killSystem{name: "B", conf: "B\n", only: "/etc/app/only-b", absent: "/etc/app/only-a",
		units: map[string]bool{"a.service": true, "b.service": true}, secrets: map[string]string{"db": db}}
	sysB.path = s.build(secret + svc("a", "2", "1") + svc("b", "1", "1") + file("/etc/app/conf", sysB.conf) + file(sysB.only, "b\n") + check +
		"  activation_script \"mark\" {\n    script = \"touch /run/hung-test-applying; sleep 3\"\n  }\n")
	// C is B with a health check of 25 s, longer than the watchdog's bound.
	sysC := &killSystem{name: "C", conf: "C\n", only: "/etc/app/only-b", absent: "/etc/app/only-a",
		units: map[string]bool{"a.service": true, "b.service": true}, secrets: map[string]string{"db": db}}
	sysC.path = s.build(secret + svc("a", "3", "1") + svc("b", "1", "1") + file("/etc/app/conf", sysC.conf) + file(sysC.only, "c\n") +
		"  health_check \"slow\" {\n    command = [\"/bin/sleep\", \"25\"]\n    timeout = \"60s\"\n    attempt_timeout = \"40s\"\n  }\n")
	f.mustActivate(sysA.path) // generation 1
	f.hostRuns(sysA)

	t.Run("applying ends old", func(t *testing.T) {
		f.t = t
		f.h.Succeed("rm -f /run/hung-test-applying")
		done := make(chan error, 1)
		go func() {
			_, err := f.activate(sysB.path, ActivateOptions{ConfirmTimeout: 30 * time.Second})
			done <- err
		}()
		f.waitFile("/run/hung-test-applying")
		id, pid := f.stopWorker()
		if ph := f.phaseNow(); ph != "applying" {
			t.Fatalf("stopped the worker in phase %q, want applying", ph)
		}
		var err error
		select {
		case err = <-done:
		case <-time.After(3 * time.Minute):
			t.Fatal("the operator's Activate did not end")
		}
		var rb *RolledBackError
		if !errors.As(err, &rb) || rb.Generation != 2 || !strings.Contains(err.Error(), "hung (no heartbeat for") {
			t.Fatalf("Activate = %v, want generation 2 rolled back because its worker hung", err)
		}
		f.waitSettled()
		f.hostRuns(sysA)
		f.wantStatus(1, 1, 2)
		f.wantTakenOver(id, pid, "applying", "rolled-back")
		f.wantMetrics(t, "after the takeover", map[string]float64{
			"deploy_current_generation":                           1,
			"deploy_last_activation_generation":                   2,
			"deploy_last_activation_success":                      0,
			"deploy_last_activation_outcome{outcome=rolled-back}": 1,
			"deploy_last_rollback_generation":                     1,
			"deploy_last_rollback_success":                        1,
			"deploy_last_check_generation":                        1,
			"deploy_checks_failing":                               0,
			"deploy_check_failing{check=ok}":                      0,
		})
	})

	t.Run("slow check then awaiting ends new", func(t *testing.T) {
		f.t = t
		var id string
		var pid int
		res, err := f.activate(sysC.path, ActivateOptions{ConfirmTimeout: time.Minute,
			Check: func(context.Context) error {
				// The worker awaits the confirmation: stop it, then confirm.
				id, pid = f.stopWorker()
				return nil
			}})
		if err != nil {
			t.Logf("agent log:\n%s", f.h.Succeed("tail -n 40 $(ls -1v /var/lib/deploy/log/activate-*.log | tail -1)"))
			t.Fatalf("Activate = %v, want done", err)
		}
		if res.Generation != 3 {
			t.Fatalf("Activate = %+v, want generation 3", res)
		}
		f.waitSettled()
		f.hostRuns(sysC)
		f.wantStatus(3, 3, 2)
		// Taken over once, while awaiting: the 25 s check was not.
		f.wantTakenOver(id, pid, "awaiting-confirmation", "done")
		f.wantMetrics(t, "after the takeover", map[string]float64{
			"deploy_current_generation":                    3,
			"deploy_last_activation_generation":            3,
			"deploy_last_activation_success":               1,
			"deploy_last_activation_outcome{outcome=done}": 1,
			"deploy_last_check_generation":                 3,
			"deploy_checks_failing":                        0,
			"deploy_check_failing{check=slow}":             0,
		})
	})
}

// waitFile waits until path exists on the host.
func (f *fixture) waitFile(path string) {
	f.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := f.h.Run(context.Background(), "test -e "+path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%s did not appear", path)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopWorker sends SIGSTOP to the main process of the newest activation's
// worker and returns the activation's id and the process's pid.
func (f *fixture) stopWorker() (string, int) {
	f.t.Helper()
	out := f.h.Succeed(`id=$(ls -1v /var/lib/deploy/log/ | sed -n 's/^activate-\([0-9]*\)\.log$/\1/p' | tail -1)
pid=$(systemctl show -p MainPID --value deploy-activate-$id.service)
kill -STOP $pid && echo $id $pid`)
	var id string
	var pid int
	if _, err := fmt.Sscan(out, &id, &pid); err != nil || pid <= 0 {
		f.t.Fatalf("stopping the worker: %q", out)
	}
	f.t.Logf("SIGSTOP to the worker of activation %s (pid %d) in phase %s", id, pid, f.phaseNow())
	return id, pid
}

// wantTakenOver checks that activation id's watchdog took over from its
// hung worker (pid) exactly once, in phase, and that the activation ended
// with outcome in its result and state, the state's message saying why
// when it rolled back; the worker's process and unit are gone.
func (f *fixture) wantTakenOver(id string, pid int, phase, outcome string) {
	f.t.Helper()
	log := f.h.Succeed("cat /var/lib/deploy/log/activate-" + id + ".log")
	kill := fmt.Sprintf("watchdog: the worker of activation %s (pid %d) hung (no heartbeat for ", id, pid)
	if n := strings.Count(log, kill); n != 1 || !strings.Contains(log, "s) in phase "+phase+": killing it") {
		f.t.Errorf("the log has %d lines %q (want 1, in phase %s):\n%s", n, kill, phase, log)
	}
	var res struct {
		Outcome string `json:"outcome"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(f.h.Succeed("cat /var/lib/deploy/log/activate-"+id+".result.json")), &res); err != nil || res.Outcome != outcome {
		f.t.Errorf("result %+v (%v), want outcome %s", res, err, outcome)
	}
	var st struct {
		Activation struct {
			ID      string `json:"id"`
			Phase   string `json:"phase"`
			Message string `json:"message"`
		} `json:"activation"`
	}
	out := f.h.Succeed("cat /run/deploy/state.json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Activation.ID != id || st.Activation.Phase != outcome ||
		(outcome == "rolled-back" && !strings.Contains(st.Activation.Message, "hung (no heartbeat for")) {
		f.t.Errorf("state %s (%v): want activation %s %s, saying the worker hung when rolled back", out, err, id, outcome)
	}
	if _, err := f.h.Run(context.Background(), fmt.Sprintf("test -e /proc/%d", pid)); err == nil {
		f.t.Errorf("the hung worker's process %d is still there", pid)
	}
	if got := strings.TrimSpace(f.h.Succeed("systemctl is-active deploy-activate-" + id + ".service || true")); got == "active" || got == "activating" {
		f.t.Errorf("the worker's unit is %s", got)
	}
	f.h.Fail("test -e /run/deploy/requests/" + id + ".beat")
}
