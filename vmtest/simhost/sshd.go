package simhost

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// SSHDPath is the OpenSSH server the hosts run ([Host.StartSSHD]).
const SSHDPath = "/usr/sbin/sshd"

// sshdConfig is a host's /etc/ssh/sshd_config: root logs in with a key
// only, no PAM (no login sessions, no motd: there is no systemd-logind to
// talk to), and the host's own ed25519 host key.
const sshdConfig = `ListenAddress %s
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /root/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 200:30:400
MaxSessions 64
`

// StartSSHD runs the real OpenSSH server in the host, listening on its
// address, port 22, with its host key ([Host.HostKeyLine]), and lets in
// root with authorizedKey (an authorized_keys line): what a push deploy
// reaches. It returns once the port accepts connections; the server stops
// with the host ([Network.Close]).
func (h *Host) StartSSHD(ctx context.Context, authorizedKey string) error {
	if _, err := os.Stat(SSHDPath); err != nil {
		return fmt.Errorf("%s: no OpenSSH server: %w (install openssh-server)", h.name, err)
	}
	if err := os.MkdirAll(filepath.Join(h.dir, "root", ".ssh"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.dir, "root", ".ssh", "authorized_keys"), []byte(strings.TrimSpace(authorizedKey)+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.dir, "etc", "ssh", "sshd_config"), fmt.Appendf(nil, sshdConfig, h.addr), 0o644); err != nil {
		return err
	}
	// The privilege separation directory, on the host's own /run.
	if _, err := h.Run(ctx, "mkdir -p -m 0755 /run/sshd"); err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--target", fmt.Sprint(h.PID()), "--mount", "--net", "--", SSHDPath, "-D", "-e", "-f", "/etc/ssh/sshd_config")
	cmd.Env = serviceEnv
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(h.dir, "sshd.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: starting sshd: %w", h.name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	addr := net.JoinHostPort(h.addr.String(), "22")
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(h.dir, "sshd.log"))
			return fmt.Errorf("%s: sshd exited: %v: %s", h.name, err, strings.TrimSpace(string(log)))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: sshd does not accept connections on %s: %v", h.name, addr, err)
		}
	}
}
