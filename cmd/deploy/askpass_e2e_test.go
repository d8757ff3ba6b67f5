package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/vmtest"
)

// askSudoPasswordE2E runs the real CLI on a terminal (a pseudo-terminal as
// its controlling terminal) against two test hosts whose user needs its
// password for sudo: it asks once, without echo, and both hosts run the
// command as root. (It adds that user, op, to the hosts.)
func askSudoPasswordE2E(t *testing.T, nw *vmtest.Network) {
	const password = "hunter2 correct"
	for _, h := range nw.Hosts {
		h.With(t).Succeed(fmt.Sprintf(`useradd -m -s /bin/sh op && echo 'op:%s' | chpasswd &&
echo 'op ALL=(ALL) ALL' > /etc/sudoers.d/op && chmod 0440 /etc/sudoers.d/op &&
install -d -o op -m 700 /home/op/.ssh && install -o op -m 600 /root/.ssh/authorized_keys /home/op/.ssh/`, password))
	}
	fl := e2e.NewFleet(t, nw)
	fl.WriteHosts(t, "  ssh_user = \"op\"\n  sudo     = true\n", "")
	r := cli.New(t, nw, fl)

	run := func(typed string) (stdout, stderr, shown string, code int) {
		t.Helper()
		master, slave := openPTY(t)
		cmd := r.Command(t, "exec", "--ask-sudo-password", "--identity", fl.Key, "--ssh-config", "none", fl.Target("@test"), "--", "id", "-u")
		var out, errb bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, &out, &errb
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var term bytes.Buffer
		var mu sync.Mutex
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 256)
			sent := false
			for {
				n, err := master.Read(buf)
				mu.Lock()
				term.Write(buf[:n])
				s := term.String()
				mu.Unlock()
				if !sent && strings.Contains(s, "sudo password") {
					// Bounded only so that a CLI that never turns echo
					// off fails the test instead of hanging it.
					for i := 0; i < 10000; i++ {
						tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
						if err != nil || tio.Lflag&unix.ECHO == 0 {
							break
						}
						time.Sleep(time.Millisecond)
					}
					sent = true
					master.Write([]byte(typed + "\r"))
				}
				if err != nil {
					return
				}
			}
		}()
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		slave.Close()
		master.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return out.String(), errb.String(), term.String(), code
	}

	stdout, stderr, out, code := run(password)
	if code != 0 {
		t.Fatalf("deploy exec --ask-sudo-password: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	got := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(got) != 2 || !contains(got, "h1: 0") || !contains(got, "h2: 0") {
		t.Errorf("deploy exec output %q, want root (uid 0) on h1 and h2", got)
	}
	if strings.Count(out, "sudo password") != 1 {
		t.Errorf("the terminal showed %q, want the prompt once", out)
	}
	if strings.Contains(out, "hunter2") || strings.Contains(stdout+stderr, "hunter2") {
		t.Errorf("the password was shown: terminal %q, stdout %q, stderr %q", out, stdout, stderr)
	}

	// sudo does ask: a wrong password fails on both hosts.
	stdout, stderr, _, code = run("wrong password")
	if code != ExitCommandFailed || !strings.Contains(stderr, "password rejected") || strings.Contains(stdout, ": 0") {
		t.Errorf("deploy exec with a wrong sudo password: exit %d, stdout %q, stderr %q; want exit %d saying the password was rejected", code, stdout, stderr, ExitCommandFailed)
	}
}
