package agentapi

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BootStateCmd, run by sh as the operator runs it, reads what the host's
// agent wrote, and null where nothing is.
func TestBootStateCmd(t *testing.T) {
	dir := t.TempDir()
	run := func() *BootState {
		t.Helper()
		argv := BootStateCmd(dir)
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Fatal(err)
		}
		st := &BootState{}
		if err := json.Unmarshal(out, st); err != nil {
			t.Fatalf("%v: %q", err, out)
		}
		return st
	}
	if st := run(); st.Trial != nil || st.Rollback != nil || st.Boot != "" || st.BootID == "" {
		t.Errorf("empty state dir: %+v, want the boot id and nothing else", st)
	}
	trial := &BootTrial{V: 1, ID: "2-x", Generation: 2, Previous: 1, MaxAttempts: 3, Timeout: time.Minute,
		Attempts: []BootAttempt{{BootID: "b1", Failure: `not healthy: "ready" failed`}}}
	rb := &BootRollback{V: 1, Trial: "1-y", Generation: 1, Previous: 0, Attempts: 3, Reason: "x"}
	for p, v := range map[string]any{BootTrialFile(dir): trial, BootRollbackFile(dir): rb} {
		data, _ := json.Marshal(v)
		if err := os.WriteFile(p, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "profiles", "system-2-link"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("system-2-link", BootProfile(dir)); err != nil {
		t.Fatal(err)
	}
	st := run()
	if st.Trial == nil || st.Trial.ID != "2-x" || st.Trial.Attempts[0].Failure != trial.Attempts[0].Failure || st.Rollback == nil || st.Rollback.Trial != "1-y" ||
		st.Boot != filepath.Join(dir, "profiles", "system-2-link") {
		t.Errorf("BootStateCmd = %+v (trial %+v, rollback %+v)", st, st.Trial, st.Rollback)
	}
	if got := rb.Message(); got != "rolled back after 3 failed boots of generation 1: x" {
		t.Errorf("Message() = %q", got)
	}
}
