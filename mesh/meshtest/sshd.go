// Package meshtest helps test code that reaches hosts over SSH: it starts
// real OpenSSH sshd processes on loopback, and runs one conformance suite
// against any transport that yields a [mesh.Client].
//
// # sshd
//
// [StartSSHD] runs /usr/sbin/sshd -D -e on 127.0.0.1 and a free port, with
// generated host keys (ed25519 and ECDSA), a generated client key that is
// authorized for every user, StrictModes and PAM off. It needs root and
// openssh-server: without them the test is skipped with the reason, or
// fails under CI=true (see internal/testenv).
//
// # Conformance
//
// [RunTransportTests] checks what every transport must do: run commands
// with exact argument quoting, exit codes and stderr tails, stdin, large
// streams in both directions, cancellation, concurrency and Close. The
// direct SSH transport runs it in mesh's tests; the tailnet transport runs
// the same suite.
package meshtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/declarative/deploy/internal/testenv"
	"github.com/declarative/deploy/mesh"
)

// SSHD is a running OpenSSH server for one test.
type SSHD struct {
	Host string // "127.0.0.1"
	Port int
	Addr string // Host:Port
	Dir  string // private directory holding keys, config and authorized_keys

	// HostKey is the server's ed25519 host key; HostKeys lists all of its
	// host keys (ed25519, then ECDSA P-256).
	HostKey  ssh.PublicKey
	HostKeys []ssh.PublicKey

	// ClientKeyFile is an unencrypted ed25519 private key authorized for
	// every user; ClientSigner is the same key.
	ClientKeyFile string
	ClientSigner  ssh.Signer

	AuthorizedKeysFile string

	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// SSHDOptions adjusts [StartSSHD].
type SSHDOptions struct {
	// Config holds extra sshd_config lines, appended after the defaults.
	Config []string
	// HostCA, if set, signs a host certificate for the ed25519 host key
	// (sshd's HostCertificate), valid for HostCertPrincipals (default:
	// the listening address) from an hour ago until ValidFor from now
	// (default a day; negative: already expired).
	HostCA             ssh.Signer
	HostCertPrincipals []string
	HostCertValidFor   time.Duration
}

// StartSSHD starts an sshd for t and stops it when t ends. Its log is
// printed if t fails.
func StartSSHD(t testing.TB, opts SSHDOptions) *SSHD {
	t.Helper()
	testenv.NeedRoot(t)
	bin := "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		bin = testenv.NeedTool(t, "sshd", "openssh-server")
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation directory
		t.Fatal(err)
	}
	dir := t.TempDir()
	// Other users' sessions read authorized_keys (0644) as themselves.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &SSHD{Host: "127.0.0.1", Dir: dir, AuthorizedKeysFile: filepath.Join(dir, "authorized_keys")}

	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var hostKeyFiles []string
	for i, priv := range []any{edPriv, ecPriv} {
		f := filepath.Join(dir, fmt.Sprintf("host_key_%d", i))
		pub := writePrivateKey(t, f, priv)
		hostKeyFiles = append(hostKeyFiles, f)
		s.HostKeys = append(s.HostKeys, pub)
	}
	s.HostKey = s.HostKeys[0]
	var certFile string
	if opts.HostCA != nil {
		certFile = hostKeyFiles[0] + "-cert.pub"
		principals := opts.HostCertPrincipals
		if principals == nil {
			principals = []string{s.Host}
		}
		valid := opts.HostCertValidFor
		if valid == 0 {
			valid = 24 * time.Hour
		}
		cert := &ssh.Certificate{Key: s.HostKey, CertType: ssh.HostCert, KeyId: "meshtest host",
			ValidPrincipals: principals, ValidAfter: uint64(time.Now().Add(-time.Hour).Unix()),
			ValidBefore: uint64(time.Now().Add(valid).Unix())}
		if valid < 0 {
			cert.ValidAfter = uint64(time.Now().Add(2 * valid).Unix())
		}
		if err := cert.SignCert(rand.Reader, opts.HostCA); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certFile, ssh.MarshalAuthorizedKey(cert), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	_, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s.ClientKeyFile = filepath.Join(dir, "id_ed25519")
	writePrivateKey(t, s.ClientKeyFile, clientPriv)
	s.ClientSigner, err = ssh.NewSignerFromKey(clientPriv)
	if err != nil {
		t.Fatal(err)
	}
	s.Authorize(s.ClientSigner.PublicKey())

	for attempt := 0; ; attempt++ {
		s.Port = freePort(t)
		s.Addr = net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
		cfg := []string{
			"ListenAddress " + s.Addr,
			"PidFile none",
			"UsePAM no",
			"StrictModes no",
			"AuthorizedKeysFile " + s.AuthorizedKeysFile,
			"PubkeyAuthentication yes",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"PermitRootLogin prohibit-password",
			"AllowTcpForwarding yes",
			"LogLevel VERBOSE",
			"Subsystem sftp internal-sftp",
			// The sessions run as this machine's user, whose bash would
			// source ~/.bashrc for a command run by sshd (bash does that
			// when SSH_CLIENT is set and SHLVL is not): the tests would
			// then depend on the machine's dotfiles. One that waits on a
			// stale lock (pyenv's rehash: 60 s) made every command here
			// take a minute. With SHLVL=1 bash starts no rc file.
			"SetEnv SHLVL=1",
		}
		for _, f := range hostKeyFiles {
			cfg = append(cfg, "HostKey "+f)
		}
		if certFile != "" {
			cfg = append(cfg, "HostCertificate "+certFile)
		}
		cfg = append(cfg, opts.Config...)
		cfgFile := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfgFile, []byte(strings.Join(cfg, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s.log = &syncBuffer{}
		s.cmd = exec.Command(bin, "-D", "-e", "-f", cfgFile)
		s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
		if err := s.cmd.Start(); err != nil {
			t.Fatalf("start sshd: %v", err)
		}
		s.done = make(chan struct{})
		go func() { s.cmd.Wait(); close(s.done) }()
		if s.waitReady() {
			break
		}
		s.Stop()
		if attempt == 4 {
			t.Fatalf("sshd did not start:\n%s", s.Log())
		}
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("sshd %s log:\n%s", s.Addr, s.Log())
		}
	})
	return s
}

// waitReady waits until sshd accepts connections, or exits (e.g. the port
// was taken meanwhile).
func (s *SSHD) waitReady() bool {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// Authorize adds a public key to the authorized_keys of every user.
func (s *SSHD) Authorize(pub ssh.PublicKey) {
	f, err := os.OpenFile(s.AuthorizedKeysFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		panic(fmt.Sprintf("meshtest: authorize key: %v", err))
	}
	defer f.Close()
	f.Write(ssh.MarshalAuthorizedKey(pub))
}

// PinnedKey is the ed25519 host key in authorized_keys format, as
// Target.HostKey wants it.
func (s *SSHD) PinnedKey() string { return mesh.FormatHostKey(s.HostKey) }

// Target returns a target for this server as user, with the host key
// pinned.
func (s *SSHD) Target(user string) mesh.Target {
	return mesh.Target{Name: "sshd-" + strconv.Itoa(s.Port), Address: s.Host, Port: s.Port, User: user, HostKey: s.PinnedKey()}
}

// KnownHostsLine is a plain known_hosts line for the ed25519 key.
func (s *SSHD) KnownHostsLine() string {
	return "[" + s.Host + "]:" + strconv.Itoa(s.Port) + " " + s.PinnedKey()
}

// Log returns what sshd has logged so far.
func (s *SSHD) Log() string { return s.log.String() }

// Stop kills sshd and every process it started (per-connection sshd
// processes and the commands they run). It is safe to call more than once.
func (s *SSHD) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	pids := descendants(s.cmd.Process.Pid)
	s.cmd.Process.Kill()
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	<-s.done
}

// SessionPIDs returns the process IDs of the per-connection sshd processes
// (children of the listening sshd), e.g. to freeze them with SIGSTOP.
func (s *SSHD) SessionPIDs() []int {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	return children(s.cmd.Process.Pid)
}

// children lists the processes whose parent is pid, from /proc.
func children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name (field 2) may contain spaces; fields after ")".
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		c := children(queue[0])
		queue = append(queue[1:], c...)
		out = append(out, c...)
	}
	return out
}

func writePrivateKey(t testing.TB, path string, priv any) ssh.PublicKey {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return signer.PublicKey()
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
