package main

import (
	"bufio"
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

	// --wait-window waits, contacting no host, and says until when; an
	// interrupt ends the wait with exit 1, nothing touched. (That the run
	// goes on once the window opens: fleet's TestAwaitWindow, on the
	// test's clock.)
	home := t.TempDir()
	c := exec.Command(bins.Deploy, append(ssh, "--wait-window", dir+"#closed")...)
	c.Env = append([]string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache"), "PATH=" + os.Getenv("PATH")}, e2e.GoCaches(t)...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stderr = pw
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var stderr strings.Builder
	sc := bufio.NewScanner(pr)
	waiting := `waiting for deployment "closed"'s window (` + closed + `): it opens `
	for sc.Scan() {
		stderr.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), waiting) {
			break
		}
	}
	if !strings.Contains(stderr.String(), waiting) {
		c.Process.Kill()
		c.Wait()
		t.Fatalf("--wait-window does not say it waits (%q):\n%s", waiting, stderr.String())
	}
	c.Process.Signal(os.Interrupt)
	for sc.Scan() {
		stderr.WriteString(sc.Text() + "\n")
	}
	err = c.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("--wait-window interrupted: %v, want exit 1\n%s", err, stderr.String())
	}
	out = stderr.String()
	if !strings.Contains(out, `interrupted while waiting for deployment "closed"'s window: no host was contacted`) {
		t.Errorf("the interrupted wait does not say so:\n%s", out)
	}
	if strings.Contains(out, "web1: lock") || strings.Contains(out, "unreachable") {
		t.Errorf("deploy contacted a host while it waited for the window:\n%s", out)
	}
}
