package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/internal/e2e"
)

// A deployment outside its maintenance window: deploy and reboot refuse
// with exit 9 before contacting any host, naming when it opens; with
// --ignore-window the run goes on (and here meets the unreachable host:
// exit 4); inside the window it goes on too.
func TestWindowExitCode(t *testing.T) {
	bins := e2e.Binaries(t)
	now := time.Now().UTC()
	hhmm := func(t time.Time) string { return t.Format("15:04") }
	closed := fmt.Sprintf("%s-%s UTC", hhmm(now.Add(2*time.Hour)), hhmm(now.Add(3*time.Hour)))
	open := fmt.Sprintf("%s-%s", hhmm(now.Add(-time.Hour)), hhmm(now.Add(time.Hour)))
	dir := t.TempDir()
	fleet := fmt.Sprintf(`host "web1" {
  address = "127.0.0.1"
  port    = 1
}
deployment "closed" {
  hosts  = ["web1"]
  window = %q
}
deployment "open" {
  hosts  = ["web1"]
  window = %q
}
`, closed, open)
	os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(fleet), 0o644)
	run := func(want int, args ...string) string {
		t.Helper()
		home := t.TempDir()
		c := exec.Command(bins.Deploy, args...)
		c.Env = append([]string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache"), "PATH=" + os.Getenv("PATH")}, e2e.GoCaches(t)...)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		err := c.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != want {
			t.Fatalf("deploy %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, stderr.String())
		}
		return stderr.String()
	}
	ssh := []string{"--ssh-config", "none", "--identity", "/dev/null"}
	out := run(9, append(ssh, dir+"#closed")...)
	for _, w := range []string{`deployment "closed" may change hosts only in its window (` + closed + `): it is closed now; it next opens `, "hint: --wait-window waits for it to open; --ignore-window goes on now"} {
		if !strings.Contains(out, w) {
			t.Errorf("deploy outside the window does not say %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "web1: lock") || strings.Contains(out, "build started") {
		t.Errorf("deploy outside the window went on:\n%s", out)
	}
	run(9, append([]string{"reboot"}, append(ssh, dir+"#closed")...)...)
	if out := run(4, append(ssh, "--ignore-window", dir+"#closed")...); !strings.Contains(out, "going on (--ignore-window)") {
		t.Errorf("--ignore-window does not say it goes on:\n%s", out)
	}
	run(4, append(ssh, dir+"#open")...)
	// A dry run changes nothing: no window applies.
	run(4, append(ssh, "--dry-run", dir+"#closed")...)
}
