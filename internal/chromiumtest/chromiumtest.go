// Package chromiumtest drives headless Chromium from tests with its
// command-line flags alone (--dump-dom, --screenshot, --virtual-time-budget):
// no DevTools client, no dependency. The Debian package is
// chromium-headless-shell (make deps installs it); a test without it skips
// with the reason, or fails under CI=true.
package chromiumtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/declarative/deploy/internal/testenv"
)

// Binary finds headless Chromium, or calls [testenv.Missing].
func Binary(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium-headless-shell", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Missing(t, "headless Chromium is not installed (apt-get install --no-install-recommends chromium-headless-shell)")
	return ""
}

// Options say how a page is loaded.
type Options struct {
	// Budget is the virtual time the page's scripts get: Chromium
	// stops the page's clock while requests are in flight and dumps the
	// DOM once the budget has passed with nothing to wait for (default
	// 30s of virtual time, which takes far less than that).
	Budget time.Duration
	// Width and Height are the window's size (default 1280×1600).
	Width, Height int
	// Command makes the browser's command (default exec.CommandContext):
	// for running it inside a test network's namespace.
	Command func(ctx context.Context, name string, args ...string) *exec.Cmd
}

// Command is the Chromium command line that loads url with extra flags.
func Command(ctx context.Context, t testing.TB, url string, opts Options, extra ...string) *exec.Cmd {
	t.Helper()
	if opts.Budget == 0 {
		opts.Budget = 30 * time.Second
	}
	if opts.Width == 0 {
		opts.Width, opts.Height = 1280, 1600
	}
	args := []string{"--headless", "--disable-gpu", "--no-first-run", "--disable-extensions", "--hide-scrollbars",
		"--disable-background-networking", "--user-data-dir=" + t.TempDir(),
		"--virtual-time-budget=" + strconv.FormatInt(opts.Budget.Milliseconds(), 10),
		"--window-size=" + strconv.Itoa(opts.Width) + "," + strconv.Itoa(opts.Height)}
	if os.Geteuid() == 0 {
		// Chromium's sandbox refuses to run as root.
		args = append(args, "--no-sandbox")
	}
	args = append(append(args, extra...), url)
	if opts.Command != nil {
		return opts.Command(ctx, Binary(t), args...)
	}
	return exec.CommandContext(ctx, Binary(t), args...)
}

// DumpDOM loads url and returns the DOM after its scripts ran.
func DumpDOM(t testing.TB, url string, opts Options) string {
	t.Helper()
	// No deadline of its own: go test's -timeout ends a browser that hangs.
	cmd := Command(context.Background(), t, url, opts, "--dump-dom")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, stderr.Bytes())
	}
	return string(out)
}

// Screenshot loads url and writes a PNG of the window to file.
func Screenshot(t testing.TB, url, file string, opts Options) {
	t.Helper()
	cmd := Command(context.Background(), t, url, opts, "--screenshot="+file)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot %s: %v\n%s", url, err, out)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("chromium --screenshot %s: %v", url, err)
	}
}
