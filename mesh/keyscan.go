package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// keyscanAlgorithms are the host key types asked for, one handshake each,
// in the order Keyscan returns them.
var keyscanAlgorithms = [][]string{
	{ssh.KeyAlgoED25519},
	{ssh.KeyAlgoECDSA256},
	{ssh.KeyAlgoECDSA384},
	{ssh.KeyAlgoECDSA521},
	{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
}

var errKeyscanDone = errors.New("keyscan: key received")

// Keyscan returns the host keys a server at address:port presents, ed25519
// first, then ECDSA, then RSA (port 0 means 22). It performs one key
// exchange per key type and never authenticates. Nothing is verified: the
// caller must check the fingerprints out of band before trusting them.
// cfg may be nil; its Dialer, DialTimeout and HandshakeTimeout are used.
func Keyscan(ctx context.Context, cfg *Config, address string, port int) ([]ssh.PublicKey, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	if port == 0 {
		port = 22
	}
	addr := net.JoinHostPort(address, strconv.Itoa(port))
	var keys []ssh.PublicKey
	var lastErr error
	for _, algs := range keyscanAlgorithms {
		k, err := scanOne(ctx, cfg, address, addr, algs)
		if err != nil {
			var ue *UnreachableError
			if errors.As(err, &ue) && ue.Phase == PhaseDial {
				return nil, err
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("keyscan %s: %w", addr, ctx.Err())
			}
			lastErr = err
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, &UnreachableError{Host: address, Phase: PhaseHandshake, Err: fmt.Errorf("no host key obtained: %w", lastErr)}
	}
	return keys, nil
}

func scanOne(ctx context.Context, cfg *Config, name, addr string, algs []string) (ssh.PublicKey, error) {
	dctx, cancel := context.WithTimeout(ctx, cfg.dialTimeout())
	conn, err := cfg.dialer().DialContext(dctx, "tcp", addr)
	if err != nil {
		err = dialError(ctx, dctx, err, addr, cfg.dialTimeout())
	}
	cancel()
	if err != nil {
		return nil, &UnreachableError{Host: name, Phase: PhaseDial, Err: err}
	}
	return scanConn(ctx, cfg, name, addr, conn, algs)
}

// scanConn runs one key exchange on conn, which it closes, asking for
// algs, and returns the key the host presented.
func scanConn(ctx context.Context, cfg *Config, name, addr string, conn net.Conn, algs []string) (ssh.PublicKey, error) {
	defer conn.Close()
	timer := time.AfterFunc(cfg.handshakeTimeout(), func() { conn.Close() })
	defer timer.Stop()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var key ssh.PublicKey
	cc := &ssh.ClientConfig{
		User:              "keyscan",
		HostKeyAlgorithms: algs,
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			key = k
			return errKeyscanDone
		},
	}
	_, _, _, err := ssh.NewClientConn(conn, addr, cc)
	if key != nil {
		return key, nil
	}
	return nil, &UnreachableError{Host: name, Phase: PhaseHandshake, Err: err}
}

// ScanHostKeys returns the host keys that t presents when reached as
// Connect reaches it (~/.ssh/config's HostName, Port, ProxyCommand and
// ProxyJump, whose hosts are verified and authenticated as for Connect),
// ed25519 first, and the name known_hosts knows the host by (its
// HostKeyAlias, else its address). Like [Keyscan], it verifies nothing of
// the host itself.
func (c *Config) ScanHostKeys(ctx context.Context, t Target) ([]ssh.PublicKey, string, error) {
	r, err := c.resolve(t)
	if err != nil {
		return nil, "", err
	}
	var prev *ssh.Client
	if len(r.jumps) > 0 {
		k := c.openKeys(ctx)
		defer k.close()
		var conns []io.Closer
		defer func() {
			for i := len(conns) - 1; i >= 0; i-- {
				conns[i].Close()
			}
		}()
		for i := range r.jumps {
			e := &r.jumps[i]
			raw, err := c.dial(ctx, prev, e)
			if err != nil {
				return nil, "", err
			}
			conns = append(conns, raw)
			sc, err := c.handshake(ctx, raw, e, k)
			if err != nil {
				return nil, "", err
			}
			conns = append(conns, sc)
			prev = sc
		}
	}
	e := &r.target
	var keys []ssh.PublicKey
	var lastErr error
	for _, algs := range keyscanAlgorithms {
		conn, err := c.dial(ctx, prev, e)
		if err != nil {
			return nil, "", err
		}
		k, err := scanConn(ctx, c, e.name, e.addr(), conn, algs)
		if err != nil {
			if ctx.Err() != nil {
				return nil, "", ctx.Err()
			}
			lastErr = err
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, "", &UnreachableError{Host: e.name, Phase: PhaseHandshake, Err: fmt.Errorf("no host key obtained: %w", lastErr)}
	}
	return keys, knownhosts.Normalize(e.knownHostsName()), nil
}
