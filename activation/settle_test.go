package activation

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeShow puts a systemctl on PATH that logs its arguments and prints
// answer: the unit test of the code that parses systemctl's output.
func fakeShow(t *testing.T, answer string) (log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$*\" >> " + log + "\ncat <<'EOF'\n" + answer + "EOF\n"
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return log
}

// The units an activation started are watched with one systemctl call for
// all of them per look; a unit restarting after a failure is named.
func TestSettleWatch(t *testing.T) {
	ctx := context.Background()
	look := func(w *settleWatch) error { return w.look(ctx) }
	both := []string{"a.service", "b.service"}
	log := fakeShow(t, "ActiveState=active\nSubState=running\nResult=success\nNRestarts=0\n\nActiveState=activating\nSubState=auto-restart\nResult=exit-code\nNRestarts=1\n")
	err := look(&settleWatch{units: both})
	if err == nil || !strings.Contains(err.Error(), "unit b.service failed (activating/auto-restart, result exit-code)") {
		t.Errorf("look = %v, want b.service named as failed", err)
	}
	calls, _ := os.ReadFile(log)
	if got := strings.TrimSpace(string(calls)); got != "show -p ActiveState -p SubState -p Result -p NRestarts -- a.service b.service" {
		t.Errorf("systemctl calls %q, want one show of both units", got)
	}

	running := func(a, b int) string {
		return fmt.Sprintf("ActiveState=active\nSubState=running\nResult=success\nNRestarts=%d\n\nActiveState=active\nSubState=running\nResult=success\nNRestarts=%d\n", a, b)
	}
	// Restarts counted before the first look (an earlier life of the
	// unit) are the baseline; one more since is a crash loop, although
	// the unit runs and its last result is success when looked at.
	w := &settleWatch{units: both}
	fakeShow(t, running(0, 3))
	if err := look(w); err != nil {
		t.Errorf("first look, two running units: %v", err)
	}
	if err := look(w); err != nil {
		t.Errorf("second look, nothing restarted: %v", err)
	}
	fakeShow(t, running(0, 4))
	if err := look(w); err == nil || !strings.Contains(err.Error(), "unit b.service failed: it restarted since it was started (NRestarts 3 -> 4: a crash loop; now active/running)") {
		t.Errorf("look after a restart = %v, want b.service named as crash-looping", err)
	}
	// No NRestarts (a systemd before 235, or not a service): judged by
	// state alone.
	w = &settleWatch{units: both}
	fakeShow(t, "ActiveState=active\nSubState=running\nResult=success\n\nActiveState=active\nSubState=listening\nResult=success\nNRestarts=\n")
	for range 2 {
		if err := look(w); err != nil {
			t.Errorf("units without NRestarts: %v", err)
		}
	}
	// An answer that does not have a block per unit is not read as healthy.
	fakeShow(t, "ActiveState=active\nSubState=running\nResult=success\n")
	if err := look(&settleWatch{units: both}); err == nil {
		t.Error("one answer for two units: no error")
	}
}
