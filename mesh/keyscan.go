package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"golang.org/x/crypto/ssh"
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
	cancel()
	if err != nil {
		return nil, &UnreachableError{Host: name, Phase: PhaseDial, Err: err}
	}
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
	_, _, _, err = ssh.NewClientConn(conn, addr, cc)
	if key != nil {
		return key, nil
	}
	return nil, &UnreachableError{Host: name, Phase: PhaseHandshake, Err: err}
}
