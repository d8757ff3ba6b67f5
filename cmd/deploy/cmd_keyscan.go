package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/declarative/deploy/mesh"
)

// keyscanOptions are the flags of `deploy keyscan`.
type keyscanOptions struct {
	knownHosts bool
	timeout    time.Duration
	sshConfig  string
	identities stringList
}

// runKeyscan prints the host keys of each HOST[:PORT], ed25519 first, in
// authorized_keys format (ready for a host's host_key), or as known_hosts
// lines with --known-hosts. A HOST is reached as every command reaches it:
// a ~/.ssh/config block for it gives its HostName, Port, ProxyCommand or
// ProxyJump, and its HostKeyAlias names it in the known_hosts lines.
// Fingerprints go to stderr so the operator can compare them with the
// host's console output before trusting them.
func runKeyscan(ctx context.Context, e *env, args []string) error {
	var o keyscanOptions
	fs := newFlags(e, "keyscan", "HOST[:PORT]...")
	fs.BoolVar(&o.knownHosts, "known-hosts", false, "print known_hosts lines (\"[host]:port key\", or the HostKeyAlias) instead of bare keys")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "dial and handshake `timeout` per key type")
	fs.StringVar(&o.sshConfig, "ssh-config", "", "ssh config `file` (default ~/.ssh/config; \"none\" to ignore)")
	fs.Var(&o.identities, "identity", "private key `file` for jump hosts (repeatable; ssh-agent and ~/.ssh/id_* are used too)")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	return keyscan(ctx, e, o, pos)
}

func keyscan(ctx context.Context, e *env, o keyscanOptions, hosts []string) error {
	cfg := &mesh.Config{DialTimeout: o.timeout, HandshakeTimeout: o.timeout, Getenv: e.getenv,
		SSHConfigFile: o.sshConfig, IdentityFiles: o.identities}
	var failed []string
	for _, arg := range hosts {
		user, host, port, err := mesh.ParseHostSpec(arg)
		if err != nil {
			return usageErrorf("keyscan: %v", err)
		}
		t := mesh.Target{Name: host, Address: host, User: user, Port: port}
		keys, addr, err := cfg.ScanHostKeys(ctx, t)
		if err != nil {
			fmt.Fprintf(e.stderr, "deploy: keyscan %s: %v\n", arg, err)
			failed = append(failed, arg)
			continue
		}
		for _, k := range keys {
			fmt.Fprintf(e.stderr, "deploy: %s: %s %s\n", addr, k.Type(), ssh.FingerprintSHA256(k))
			if o.knownHosts {
				fmt.Fprintln(e.stdout, knownhosts.Line([]string{addr}, k))
			} else {
				fmt.Fprintln(e.stdout, mesh.FormatHostKey(k))
			}
		}
	}
	if len(failed) > 0 {
		return withHint(fmt.Errorf("keyscan: %d of %d hosts unreachable: %s", len(failed), len(hosts), strings.Join(failed, ", ")),
			ExitUnreachable, "check the address and port, and that sshd runs on the host")
	}
	fmt.Fprintln(e.stderr, "deploy: hint: compare these fingerprints with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) before trusting them")
	return nil
}
