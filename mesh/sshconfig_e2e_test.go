package mesh_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
)

// TestMain lets the test binary serve as a netcat for ProxyCommand: with
// DEPLOY_MESH_NETCAT=1 and arguments HOST PORT it connects there and copies
// stdin to the connection and the connection to stdout.
func TestMain(m *testing.M) {
	if os.Getenv("DEPLOY_MESH_NETCAT") == "1" {
		os.Exit(netcat(os.Args[len(os.Args)-2], os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

func netcat(host, port string) int {
	conn, err := net.Dial("tcp", net.JoinHostPort(host, port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "netcat:", err)
		return 1
	}
	go func() {
		io.Copy(conn, os.Stdin)
		conn.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(os.Stdout, conn)
	return 0
}

// TestSSHConfigE2E reaches a real test host (systemd-nspawn, OpenSSH sshd)
// through ~/.ssh/config: through a ProxyCommand (the root namespace has no
// route to the host, so nothing else could reach it), with HostKeyAlias,
// and authenticating with a user certificate from a file and from a real
// ssh-agent.
func TestSSHConfigE2E(t *testing.T) {
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The network's client key, as a file.
	netKey := filepath.Join(dir, "net_key")
	writeFile(t, netKey, string(nw.ClientKeyPEM()), 0o600)

	// A user CA that the host trusts, and a key root does not authorize
	// except through a certificate of that CA.
	caPub, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	caSigner, _ := ssh.NewSignerFromKey(caPriv)
	caSSH, _ := ssh.NewPublicKey(caPub)
	h.Succeed(fmt.Sprintf("printf '%%s\\n' '%s' > /etc/ssh/user_ca.pub && "+
		"echo 'TrustedUserCAKeys /etc/ssh/user_ca.pub' > /etc/ssh/sshd_config.d/user-ca.conf && systemctl restart ssh",
		strings.TrimSpace(string(ssh.MarshalAuthorizedKey(caSSH)))))
	// (Not reload: sshd re-executes itself on SIGHUP and refuses
	// connections meanwhile, while systemctl has already returned. restart
	// returns once the new sshd said it is ready: ssh.service is
	// Type=notify.)
	h.WaitForOpenPort(22)
	userPub, userPriv, _ := ed25519.GenerateKey(rand.Reader)
	userSSH, _ := ssh.NewPublicKey(userPub)
	pemBlock, err := ssh.MarshalPrivateKey(userPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	userKey := filepath.Join(dir, "id_user")
	writeFile(t, userKey, string(pem.EncodeToMemory(pemBlock)), 0o600)
	cert := &ssh.Certificate{
		Key: userSSH, CertType: ssh.UserCert, KeyId: "mesh-test", ValidPrincipals: []string{"root"},
		ValidAfter: uint64(time.Now().Add(-time.Hour).Unix()), ValidBefore: uint64(time.Now().Add(time.Hour).Unix()),
		Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}},
	}
	if err := cert.SignCert(rand.Reader, caSigner); err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "user-cert.pub")
	writeFile(t, certFile, string(ssh.MarshalAuthorizedKey(cert)), 0o644)

	// known_hosts: the host under its address, and under an alias only.
	knownHosts := filepath.Join(dir, "known_hosts")
	writeFile(t, knownHosts, h.KnownHostsLine()+"\nhost-one-alias "+h.HostKeyLine()+"\n", 0o600)

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	proxy := fmt.Sprintf("env DEPLOY_MESH_NETCAT=1 nsenter --net=%s -- %s %%h %%p", nw.SwitchNetNS(), self)
	addr := h.Addr().String()
	sshConfig := filepath.Join(dir, "config")
	writeFile(t, sshConfig, fmt.Sprintf(`
Host via-proxy
    HostName %[1]s
    ProxyCommand %[2]s
    IdentityFile %[3]s
    IdentitiesOnly yes

Host via-proxy-alias
    HostName %[1]s
    ProxyCommand %[2]s
    HostKeyAlias host-one-alias
    IdentityFile %[3]s

Host proxy-fails
    HostName %[1]s
    ProxyCommand echo "proxy refused %%h:%%p" >&2; exit 3
    IdentityFile %[3]s

Host cert-file
    HostName %[1]s
    ProxyCommand %[2]s
    IdentitiesOnly yes
    IdentityFile %[4]s
    CertificateFile %[5]s

Host cert-missing
    HostName %[1]s
    ProxyCommand %[2]s
    IdentitiesOnly yes
    IdentityFile %[4]s

Host cert-agent
    HostName %[1]s
    ProxyCommand %[2]s
    IdentityAgent %[6]s
`, addr, proxy, netKey, userKey, certFile, filepath.Join(dir, "agent.sock")), 0o600)

	home := t.TempDir()
	cfg := &mesh.Config{
		SSHConfigFile:   sshConfig,
		KnownHostsFiles: []string{knownHosts},
		Getenv:          envMap(map[string]string{"HOME": home, "SHELL": "/bin/sh"}),
		Logf:            t.Logf,
	}
	whoami := func(t *testing.T, name string) error {
		t.Helper()
		cl, err := cfg.Connect(ctx, mesh.Target{Name: name})
		if err != nil {
			return err
		}
		defer cl.Close()
		var out bytes.Buffer
		if err := cl.Run(ctx, []string{"sh", "-c", "id -u; hostname"}, nil, &out, io.Discard); err != nil {
			return err
		}
		if got, want := out.String(), "0\n"+h.Name()+"\n"; got != want {
			t.Errorf("id -u; hostname on %s = %q, want %q", name, got, want)
		}
		return nil
	}

	t.Run("proxycommand", func(t *testing.T) {
		if err := whoami(t, "via-proxy"); err != nil {
			t.Fatalf("connect through ProxyCommand: %v", err)
		}
		// Without the ProxyCommand the host is unreachable from here.
		direct := *cfg
		direct.SSHConfigFile = "none"
		direct.DialTimeout = 2 * time.Second
		if _, err := direct.Connect(ctx, mesh.Target{Name: "h", Address: addr}); err == nil {
			t.Fatalf("connected to %s without the ProxyCommand; the test proves nothing", addr)
		}
	})
	t.Run("hostkeyalias", func(t *testing.T) {
		if err := whoami(t, "via-proxy-alias"); err != nil {
			t.Fatalf("connect with HostKeyAlias: %v", err)
		}
		// The alias is what is looked up: a known_hosts without it fails.
		other := *cfg
		kh := filepath.Join(t.TempDir(), "known_hosts")
		writeFile(t, kh, h.KnownHostsLine()+"\n", 0o600)
		other.KnownHostsFiles = []string{kh}
		_, err := other.Connect(ctx, mesh.Target{Name: "via-proxy-alias"})
		var ue *mesh.UnknownHostError
		if !errors.As(err, &ue) || ue.Address != "host-one-alias" {
			t.Fatalf("connect with HostKeyAlias not in known_hosts = %v, want an UnknownHostError for host-one-alias", err)
		}
		// The hint can be followed: keyscan is told the name that reaches
		// the host (the alias is only what known_hosts calls it), and it
		// reaches it as Connect does, through ~/.ssh/config.
		if hint := ue.Hint(); !strings.Contains(hint, "deploy keyscan via-proxy-alias`") {
			t.Fatalf("hint %q, want it to name `deploy keyscan via-proxy-alias`", hint)
		}
		keys, name, err := other.ScanHostKeys(ctx, mesh.Target{Name: "via-proxy-alias", Address: "via-proxy-alias"})
		if err != nil {
			t.Fatalf("ScanHostKeys(via-proxy-alias): %v", err)
		}
		if name != "host-one-alias" || mesh.FormatHostKey(keys[0]) != h.HostKeyLine() {
			t.Fatalf("ScanHostKeys(via-proxy-alias) = %s as %q, want %s as host-one-alias", mesh.FormatHostKey(keys[0]), name, h.HostKeyLine())
		}
		writeFile(t, kh, h.KnownHostsLine()+"\n"+knownhosts.Line([]string{name}, keys[0])+"\n", 0o600)
		if cl, err := other.Connect(ctx, mesh.Target{Name: "via-proxy-alias"}); err != nil {
			t.Fatalf("connect after adding the scanned key: %v", err)
		} else {
			cl.Close()
		}
	})
	t.Run("proxycommand fails", func(t *testing.T) {
		_, err := cfg.Connect(ctx, mesh.Target{Name: "proxy-fails"})
		var ue *mesh.UnreachableError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "proxy refused "+addr+":22") {
			t.Fatalf("connect through a failing ProxyCommand = %v, want an UnreachableError with its stderr", err)
		}
	})
	t.Run("user certificate file", func(t *testing.T) {
		if err := whoami(t, "cert-file"); err != nil {
			t.Fatalf("connect with a user certificate: %v", err)
		}
		// The key alone is not authorized: the certificate did it.
		_, err := cfg.Connect(ctx, mesh.Target{Name: "cert-missing"})
		var ue *mesh.UnreachableError
		if !errors.As(err, &ue) || ue.Phase != mesh.PhaseAuth {
			t.Fatalf("connect with the bare key = %v, want an authentication failure", err)
		}
	})
	t.Run("user certificate from ssh-agent", func(t *testing.T) {
		sock := filepath.Join(dir, "agent.sock")
		agentCmd := exec.Command("ssh-agent", "-D", "-a", sock)
		agentCmd.Stdout, agentCmd.Stderr = io.Discard, io.Discard
		if err := agentCmd.Start(); err != nil {
			t.Skipf("ssh-agent: %v", err)
		}
		defer func() {
			agentCmd.Process.Kill()
			agentCmd.Wait()
		}()
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if i == 100 {
				t.Fatal("ssh-agent did not create its socket")
			}
			time.Sleep(50 * time.Millisecond)
		}
		// ssh-add adds the key and, from id_user-cert.pub beside it, the
		// certificate.
		writeFile(t, userKey+"-cert.pub", string(ssh.MarshalAuthorizedKey(cert)), 0o644)
		add := exec.Command("ssh-add", userKey)
		add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v: %s", err, out)
		}
		if out, _ := exec.Command("env", "SSH_AUTH_SOCK="+sock, "ssh-add", "-l").CombinedOutput(); !strings.Contains(string(out), "CERT") {
			t.Fatalf("ssh-agent holds no certificate: %s", out)
		}
		if err := whoami(t, "cert-agent"); err != nil {
			t.Fatalf("connect with the agent's certificate: %v", err)
		}
		// Without the certificate the agent's key is not enough.
		del := exec.Command("ssh-add", "-d", userKey+"-cert.pub")
		del.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := del.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add -d: %v: %s", err, out)
		}
		os.Remove(userKey + "-cert.pub")
		_, err := cfg.Connect(ctx, mesh.Target{Name: "cert-agent"})
		var ue *mesh.UnreachableError
		if !errors.As(err, &ue) || ue.Phase != mesh.PhaseAuth {
			t.Fatalf("connect with the agent's bare key = %v, want an authentication failure", err)
		}
	})
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
