package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestHosts is the self-test of the harness: three real hosts, each
// property checked against sshd and systemd inside them.
func TestHosts(t *testing.T) {
	nw := Start(t, 3)
	h1, h2, h3 := nw.Hosts[0], nw.Hosts[1], nw.Hosts[2]

	t.Run("BootAndSSH", func(t *testing.T) {
		for _, h := range nw.Hosts {
			h := h.With(t)
			if state := strings.TrimSpace(runOutput(t, h, "systemctl is-system-running")); state != "running" {
				t.Errorf("%s: systemctl is-system-running = %q, want running; failed units:\n%s",
					h.Name(), state, h.Succeed("systemctl --failed --no-legend --plain"))
			}
			if got := strings.TrimSpace(h.Succeed("hostname")); got != h.Name() {
				t.Errorf("%s: hostname = %q, want %q", h.Name(), got, h.Name())
			}
			if got := strings.TrimSpace(h.Succeed("ip -br addr show dev eth0")); !strings.Contains(got, h.Addr().String()+"/16") {
				t.Errorf("%s: eth0 = %q, want address %s/16", h.Name(), got, h.Addr())
			}
			if got := strings.TrimSpace(h.Succeed("cat /sys/class/net/eth0/address")); got != h.MAC().String() {
				t.Errorf("%s: eth0 MAC = %q, want %q", h.Name(), got, h.MAC())
			}
			out := sshRun(t, h, "id -un; hostname; cat /etc/ssh/ssh_host_ed25519_key.pub")
			if want := "root\n" + h.Name() + "\n" + h.HostKeyLine(); !strings.HasPrefix(out, want) {
				t.Errorf("%s: over ssh got %q, want prefix %q", h.Name(), out, want)
			}
		}
		// The pin is real: a client that expects h2's key refuses h1.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		conn, err := nw.Dial(ctx, "h1", 22)
		if err != nil {
			t.Fatal(err)
		}
		cfg := h1.SSHConfig()
		cfg.HostKeyCallback = ssh.FixedHostKey(h2.HostKey())
		if c, _, _, err := ssh.NewClientConn(conn, "h1:22", cfg); err == nil {
			c.Close()
			t.Errorf("ssh to h1 pinned to h2's host key succeeded, want a host key mismatch")
		}
		conn.Close()
		// And the hosts reach one another by name.
		h2.With(t).Succeed("timeout 10 bash -c '</dev/tcp/h1/22'")
	})

	t.Run("Isolation", func(t *testing.T) {
		h1 := h1.With(t)
		h1.Succeed("echo secret >/root/only-on-h1 && mkdir -p /var/lib/probe && echo x >/var/lib/probe/file")
		for _, h := range []*Host{h2.With(t), h3.With(t)} {
			h.Fail("test -e /root/only-on-h1")
			h.Fail("test -e /var/lib/probe/file")
		}
		ids := map[string]string{}
		for _, h := range nw.Hosts {
			id := strings.TrimSpace(h.With(t).Succeed("cat /etc/machine-id"))
			if other, ok := ids[id]; ok {
				t.Errorf("%s and %s share machine-id %s", h.Name(), other, id)
			}
			ids[id] = h.Name()
		}
	})

	t.Run("Unit", func(t *testing.T) {
		h1 := h1.With(t)
		installUnit(t, h1, "echo-sshd", "ExecStart=/usr/sbin/sshd -D -p 2222\n")
		h1.WaitForUnit("echo-sshd.service")
		h1.WaitForOpenPort(2222)
		// The unit's sshd answers the controller on the host's address.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		conn, err := h1.Dial(ctx, 2222)
		if err != nil {
			t.Fatalf("dial h1:2222: %v", err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		banner, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
			t.Errorf("h1:2222 said %q, %v; want an SSH banner", banner, err)
		}
		// Not on the other hosts.
		h2.With(t).Fail("systemctl cat echo-sshd.service")
	})

	t.Run("CutAndRestore", func(t *testing.T) {
		h1 := h1.With(t)
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		c, err := h1.SSH(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		dead := make(chan error, 1)
		go func() { dead <- keepalive(c, 200*time.Millisecond, 2*time.Second) }()
		select {
		case err := <-dead:
			t.Fatalf("keepalive failed before the cut: %v", err)
		case <-time.After(time.Second):
		}

		h1.Cut()
		cut := time.Now()
		select {
		case err := <-dead:
			t.Logf("session with keepalive failed %v after the cut: %v", time.Since(cut).Round(time.Millisecond), err)
		case <-time.After(15 * time.Second):
			t.Fatalf("session with keepalive still alive 15s after the cut")
		}
		// Nobody reaches it: not the controller, not its peers.
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		if conn, err := h1.Dial(dctx, 22); err == nil {
			conn.Close()
			t.Errorf("dial h1:22 while cut: succeeded")
		}
		dcancel()
		h2.With(t).Fail("timeout 3 bash -c '</dev/tcp/h1/22'")

		h1.Restore()
		c2, err := h1.SSH(ctx)
		if err != nil {
			t.Fatalf("ssh after restore: %v", err)
		}
		defer c2.Close()
		if err := keepaliveOnce(c2, 10*time.Second); err != nil {
			t.Errorf("keepalive after restore: %v", err)
		}
		h2.With(t).Succeed("timeout 10 bash -c '</dev/tcp/h1/22'")
	})

	t.Run("Throttle", func(t *testing.T) {
		h3 := h3.With(t)
		const rate = 1 << 20 // bytes per second
		const size = 3 << 20
		h3.Throttle(rate)
		down := transferRate(t, h3, "head -c "+strconv.Itoa(size)+" /dev/zero", nil, size)
		up := transferRate(t, h3, "cat >/dev/null", bytes.NewReader(make([]byte, size)), size)
		t.Logf("throttled to %d B/s: download %.0f B/s, upload %.0f B/s", rate, down, up)
		for dir, got := range map[string]float64{"download": down, "upload": up} {
			if got > 2*rate {
				t.Errorf("%s at %.0f B/s, want at most twice the limit %d B/s", dir, got, rate)
			}
		}
		h3.Throttle(0)
		free := transferRate(t, h3, "head -c "+strconv.Itoa(size)+" /dev/zero", nil, size)
		t.Logf("unthrottled: download %.0f B/s", free)
		if free <= 2*rate {
			t.Errorf("unthrottled download at %.0f B/s, want more than %d B/s once the limit is removed", free, 2*rate)
		}
	})

	t.Run("CrashAndBoot", func(t *testing.T) {
		h2 := h2.With(t)
		installUnit(t, h2, "marker", "ExecStart=/bin/sh -c 'echo $$ >/run/marker.pid; exec sleep infinity'\n")
		h2.WaitForUnit("marker.service")
		h2.Succeed("echo survives >/var/lib/marker")
		// A command the test is running inside the host dies with it.
		sleeper, err := h2.Command(t.Context(), "sleep", "600")
		if err != nil {
			t.Fatal(err)
		}
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		sleeperDone := make(chan error, 1)
		go func() { sleeperDone <- sleeper.Wait() }()
		// Crash only once it has moved itself into the host's cgroup.
		for deadline := time.Now().Add(10 * time.Second); ; {
			pids, _ := h2.m.current().execCg.pids()
			if slices.Contains(pids, sleeper.Process.Pid) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("command %d never joined the host's cgroup (it has %v)", sleeper.Process.Pid, pids)
			}
			time.Sleep(5 * time.Millisecond)
		}
		h2.Crash()
		select {
		case err := <-sleeperDone:
			if err == nil {
				t.Errorf("command inside the crashed host exited cleanly, want it killed")
			}
		case <-time.After(10 * time.Second):
			t.Errorf("command inside the host still running 10s after the crash")
		}
		if pop, err := h2.m.cg.populated(); err != nil || pop {
			t.Errorf("after crash: cgroup populated = %v, %v; want no process left", pop, err)
		}
		if _, err := h2.Run(t.Context(), "true"); err == nil {
			t.Errorf("run in crashed host: succeeded, want an error")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		if c, err := h2.SSH(ctx); err == nil {
			c.Close()
			t.Errorf("ssh to crashed host: succeeded")
		}
		cancel()

		h2.Boot()
		if got := h2.Succeed("cat /var/lib/marker"); got != "survives\n" {
			t.Errorf("after crash and boot: /var/lib/marker = %q, want %q", got, "survives\n")
		}
		h2.WaitForUnit("marker.service")
		h2.Succeed("test -s /run/marker.pid")
		if out := sshRun(t, h2, "systemctl is-active marker.service"); out != "active\n" {
			t.Errorf("over ssh after boot: marker.service is %q", out)
		}
	})

	t.Run("Reboot", func(t *testing.T) {
		h3 := h3.With(t)
		h3.Succeed("echo volatile >/run/volatile && echo durable >/var/lib/durable")
		h3.Reboot()
		h3.Fail("test -e /run/volatile")
		if got := h3.Succeed("cat /var/lib/durable"); got != "durable\n" {
			t.Errorf("after reboot: /var/lib/durable = %q", got)
		}
		if !strings.Contains(h3.Logs(), "systemd-nspawn exited: exit status 133") {
			t.Errorf("log of h3 does not show the reboot")
		}
		sshRun(t, h3, "true")
	})

	// A reboot that the harness did not start (a program in the host,
	// over SSH) boots the host again too, with its own boot id, and the
	// new boot answers Run as soon as its PID 1 is found.
	t.Run("RebootFromInside", func(t *testing.T) {
		h3 := h3.With(t)
		old := h3.Succeed("cat /proc/sys/kernel/random/boot_id")
		boot := h3.m.current()
		// The command's own outcome is not checked: the shutdown may end
		// the session before it reports; the boot id says what happened.
		// Nor is the session waited for without a bound: when the
		// container goes down before sshd closes the connection, nothing
		// ever answers it.
		c, err := h3.SSH(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if s, err := c.NewSession(); err == nil && s.Start("systemctl reboot") == nil {
			ended := make(chan error, 1)
			go func() { ended <- s.Wait() }()
			select {
			case <-ended:
			case <-time.After(30 * time.Second):
			}
		}
		c.Close()
		// Wait as an outside observer: for this boot's end and the next
		// one, running nothing in the host while it shuts down (a command
		// started in it then could hold its nspawn up). The limit only
		// keeps a broken reboot from hanging the suite.
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		if err := h3.awaitReboot(ctx, boot); err != nil {
			t.Fatalf("h3 did not come back from a reboot from inside: %v", err)
		}
		if got := h3.Succeed("cat /proc/sys/kernel/random/boot_id"); got == old {
			t.Fatalf("h3 has boot id %q after a reboot from inside, as before it", got)
		}
		h3.WaitForUnit("multi-user.target")
		sshRun(t, h3, "true")
	})
}

// runOutput runs script and returns its output even when it fails.
func runOutput(t *testing.T, h *Host, script string) string {
	t.Helper()
	out, err := h.Run(t.Context(), script)
	var ce *CommandError
	if err != nil && !errors.As(err, &ce) {
		t.Fatal(err)
	}
	return out
}

// installUnit writes, enables and starts a simple service.
func installUnit(t *testing.T, h *Host, name, service string) {
	t.Helper()
	unit := "[Unit]\nDescription=vmtest " + name + "\n[Service]\n" + service + "[Install]\nWantedBy=multi-user.target\n"
	h.Succeed("cat >/etc/systemd/system/" + name + ".service <<'EOF'\n" + unit + "EOF\nsystemctl daemon-reload && systemctl enable --now " + name + ".service")
}

// sshRun runs cmd over a fresh SSH connection with the pinned host key.
func sshRun(t *testing.T, h *Host, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := h.SSH(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Output(cmd)
	if err != nil {
		t.Fatalf("ssh %s %q: %v", h.Name(), cmd, err)
	}
	return string(out)
}

// keepalive sends OpenSSH keepalives every interval and closes the client
// when one is not answered within timeout, as a deploy's connection does.
func keepalive(c *ssh.Client, interval, timeout time.Duration) error {
	for {
		if err := keepaliveOnce(c, timeout); err != nil {
			c.Close()
			return err
		}
		time.Sleep(interval)
	}
}

func keepaliveOnce(c *ssh.Client, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(timeout):
		return errors.New("keepalive unanswered for " + timeout.String())
	}
}

// transferRate runs cmd over SSH, feeding it stdin, reads its output and
// returns the bytes per second of whichever direction carries size bytes.
func transferRate(t *testing.T, h *Host, cmd string, stdin io.Reader, size int) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := h.SSH(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Stdin = stdin
	out, err := s.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Start(cmd); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, out)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(); err != nil {
		t.Fatalf("ssh %q: %v", cmd, err)
	}
	elapsed := time.Since(start)
	if stdin == nil && n != int64(size) {
		t.Fatalf("ssh %q: read %d bytes, want %d", cmd, n, size)
	}
	return float64(size) / elapsed.Seconds()
}
