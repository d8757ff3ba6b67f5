package main

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal pair: the master (the "user" side)
// and the slave (the terminal the program opens).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestAskSudoPassword: --ask-sudo-password asks once, on the terminal,
// with echo off, and the one answer serves every host.
func TestAskSudoPassword(t *testing.T) {
	master, slave := openPTY(t)
	opened := 0
	e := &env{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" },
		openTTY: func() (*os.File, error) {
			opened++
			// A new descriptor, as opening /dev/tty would give.
			fd, err := unix.Dup(int(slave.Fd()))
			if err != nil {
				return nil, err
			}
			return os.NewFile(uintptr(fd), "tty"), nil
		}}

	// The user: waits for the prompt, types the password, and records
	// everything the terminal shows.
	var shown bytes.Buffer
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 256)
		typed := false
		for {
			master.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := master.Read(buf)
			mu.Lock()
			shown.Write(buf[:n])
			s := shown.String()
			mu.Unlock()
			if !typed && strings.Contains(s, "sudo password") {
				// Type once the program has turned echo off (it does so
				// right after the prompt), as a person would.
				// (Bounded only so that a program that never turns echo
				// off fails the test below instead of hanging it.)
				for i := 0; i < 10000; i++ {
					tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
					if err != nil || tio.Lflag&unix.ECHO == 0 {
						break
					}
					time.Sleep(time.Millisecond)
				}
				typed = true
				master.Write([]byte("s3cret pw\r"))
			}
			if typed && strings.HasSuffix(s, "\r\n") {
				return
			}
			if err != nil {
				return
			}
		}
	}()
	f := fleetSSHFlags{askSudo: true}
	c := f.config(e)
	<-done
	for _, h := range []string{"web1", "web2", "db1"} {
		pw, err := c.SudoPassword(context.Background(), h)
		if err != nil || pw != "s3cret pw" {
			t.Errorf("SudoPassword(%q) = %q, %v; want the typed password", h, pw, err)
		}
	}
	if opened != 1 {
		t.Errorf("the terminal was opened %d times, want once", opened)
	}
	mu.Lock()
	out := shown.String()
	mu.Unlock()
	if strings.Count(out, "sudo password") != 1 {
		t.Errorf("terminal showed %q, want the prompt once", out)
	}
	if strings.Contains(out, "s3cret") {
		t.Errorf("terminal echoed the password: %q", out)
	}
	if s := e.stderr.(*bytes.Buffer).String() + e.stdout.(*bytes.Buffer).String(); s != "" {
		t.Errorf("stdout/stderr got %q, want nothing (the prompt goes to the terminal)", s)
	}
}

// Without a terminal the flag fails the hosts that need a password, with
// an error saying why.
func TestAskSudoPasswordNoTerminal(t *testing.T) {
	var stderr bytes.Buffer
	e := &env{stdout: &bytes.Buffer{}, stderr: &stderr, getenv: func(string) string { return "" },
		openTTY: func() (*os.File, error) { return os.Open(os.DevNull) }}
	c := (&fleetSSHFlags{askSudo: true}).config(e)
	if _, err := c.SudoPassword(context.Background(), "web1"); err == nil || !strings.Contains(err.Error(), "no terminal") {
		t.Errorf("SudoPassword without a terminal = %v, want a \"no terminal\" error", err)
	}
	if !strings.Contains(stderr.String(), "no terminal") {
		t.Errorf("stderr %q does not say there is no terminal", stderr.String())
	}
}
