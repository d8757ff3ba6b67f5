package vmtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// keyPair is an ed25519 SSH key.
type keyPair struct {
	signer     ssh.Signer
	privatePEM []byte // OpenSSH format, as sshd and ssh read it
}

func newKeyPair(comment string) (keyPair, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("generate ssh key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return keyPair{}, fmt.Errorf("generate ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return keyPair{}, fmt.Errorf("generate ssh key: %w", err)
	}
	return keyPair{signer: signer, privatePEM: pem.EncodeToMemory(block)}, nil
}

// authorizedLine is the public key in authorized_keys format, without a
// trailing newline.
func (k keyPair) authorizedLine() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.signer.PublicKey())))
}

// Signer returns the private key that every host of the network accepts for
// root in /root/.ssh/authorized_keys.
func (n *Network) Signer() ssh.Signer { return n.client.signer }

// ClientKeyPEM returns [Network.Signer]'s private key in OpenSSH format, for
// tools that read key files.
func (n *Network) ClientKeyPEM() []byte { return n.client.privatePEM }

// AuthorizedKey returns the public half of [Network.Signer] in
// authorized_keys format ("ssh-ed25519 AAAA...").
func (n *Network) AuthorizedKey() string { return n.client.authorizedLine() }

// HostKey returns the host's ed25519 SSH host key. Clients pin it.
func (h *Host) HostKey() ssh.PublicKey { return h.m.hostKey.signer.PublicKey() }

// HostKeyLine returns the host key in authorized_keys format
// ("ssh-ed25519 AAAA..."), as a fleet's host_key attribute holds it.
func (h *Host) HostKeyLine() string { return h.m.hostKey.authorizedLine() }

// KnownHostsLine returns a known_hosts line for the host's address.
func (h *Host) KnownHostsLine() string { return h.Addr().String() + " " + h.HostKeyLine() }

// SSHConfig returns a client configuration for root on the host that
// authenticates with [Network.Signer] and accepts only the host's own key.
func (h *Host) SSHConfig() *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(h.m.net.client.signer)},
		HostKeyCallback: ssh.FixedHostKey(h.HostKey()),
		HostKeyAlgorithms: []string{
			ssh.KeyAlgoED25519,
		},
		Timeout: 10 * time.Second,
	}
}

// SSH connects to the host's sshd on port 22 as root, from the switch
// namespace, with the pinned host key. The caller closes the client.
func (h *Host) SSH(ctx context.Context) (*ssh.Client, error) {
	addr := net.JoinHostPort(h.Addr().String(), "22")
	conn, err := h.m.net.sw.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh %s: %w", h.Name(), err)
	}
	// The handshake has no context of its own: bound it by ctx.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, h.SSHConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh %s: %w", h.Name(), err)
	}
	if !stop() {
		c.Close()
		return nil, fmt.Errorf("ssh %s: %w", h.Name(), ctx.Err())
	}
	return ssh.NewClient(c, chans, reqs), nil
}
