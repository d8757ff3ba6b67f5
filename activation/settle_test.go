package activation

import (
	"context"
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
func TestUnitsFailed(t *testing.T) {
	ctx := context.Background()
	log := fakeShow(t, "ActiveState=active\nSubState=running\nResult=success\n\nActiveState=activating\nSubState=auto-restart\nResult=exit-code\n")
	err := unitsFailed(ctx, []string{"a.service", "b.service"})
	if err == nil || !strings.Contains(err.Error(), "unit b.service failed (activating/auto-restart, result exit-code)") {
		t.Errorf("unitsFailed = %v, want b.service named as failed", err)
	}
	calls, _ := os.ReadFile(log)
	if got := strings.TrimSpace(string(calls)); got != "show -p ActiveState -p SubState -p Result -- a.service b.service" {
		t.Errorf("systemctl calls %q, want one show of both units", got)
	}

	fakeShow(t, "ActiveState=active\nSubState=running\nResult=success\n\nActiveState=active\nSubState=running\nResult=success\n")
	if err := unitsFailed(ctx, []string{"a.service", "b.service"}); err != nil {
		t.Errorf("two running units: %v", err)
	}
	// An answer that does not have a block per unit is not read as healthy.
	fakeShow(t, "ActiveState=active\nSubState=running\nResult=success\n")
	if err := unitsFailed(ctx, []string{"a.service", "b.service"}); err == nil {
		t.Error("one answer for two units: no error")
	}
}
