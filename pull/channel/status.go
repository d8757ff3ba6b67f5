package channel

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/ssh"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
)

// ErrNoHostKey is a status that cannot be verified: no key was named for
// its host (a release of an older publisher, or a host without an ed25519
// host_key).
var ErrNoHostKey = errors.New("no host key to verify it with")

// StatusError is a status document that does not count: not signed by its
// host's key, or signed but about another host or channel. Err is one of
// [ErrMalformed], [ErrUnsigned], [ErrUntrusted], [ErrNoHostKey],
// [ErrOtherHost], [ErrOtherChannel], [ErrNewerVersion]. Whatever the
// document claims is never acted on: to the wave gate it is silence.
type StatusError struct {
	Host   string
	Err    error
	Detail string
}

func (e *StatusError) Error() string {
	s := "status of " + e.Host + " "
	switch e.Err {
	case ErrMalformed, ErrUnsigned, ErrUntrusted:
		s += "not signed by its host key"
	case ErrNoHostKey:
		s += "cannot be verified: " + e.Err.Error()
	default:
		s += "refused: " + e.Err.Error()
	}
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

func (e *StatusError) Unwrap() error { return e.Err }

// ParseHostKey parses a host's SSH ed25519 public key, an authorized_keys
// line ("ssh-ed25519 AAAA... comment") as a fleet's host_key holds it.
func ParseHostKey(line string) (ed25519.PublicKey, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, fmt.Errorf("host key %q: %w", line, err)
	}
	if pub.Type() != ssh.KeyAlgoED25519 {
		return nil, fmt.Errorf("host key %q: a %s key; status reports are signed with the host's ssh-ed25519 key", line, pub.Type())
	}
	cpk, ok := pub.(ssh.CryptoPublicKey)
	if !ok {
		return nil, fmt.Errorf("host key %q: not usable", line)
	}
	k, ok := cpk.CryptoPublicKey().(ed25519.PublicKey)
	if !ok || len(k) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("host key %q: not an ed25519 key", line)
	}
	return k, nil
}

// LoadHostKey reads a host's OpenSSH ed25519 private key (its
// /etc/ssh/ssh_host_ed25519_key), which signs its status. Errors never
// include key material.
func LoadHostKey(file string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	defer clear(data)
	raw, err := ssh.ParseRawPrivateKey(data)
	if err != nil {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			return nil, fmt.Errorf("host key %q: protected by a passphrase", file)
		}
		return nil, fmt.Errorf("host key %q: not an OpenSSH private key", file)
	}
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		return *k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("host key %q: a %T, want an ed25519 key", file, raw)
}

// SignStatus encodes st as a [agentapi.SignedDocument] of type
// [agentapi.DocStatus] signed with its host's key (the signature named
// after the host).
func SignStatus(st *agentapi.PullStatus, key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("sign status: no host key")
	}
	st.V = agentapi.Version
	return Sign(agentapi.DocStatus, st, &cache.SecretKey{Name: st.Host, Key: key})
}

// PutStatus writes st as its host's status document, signed with key.
func PutStatus(ctx context.Context, w Writer, st *agentapi.PullStatus, key ed25519.PrivateKey) error {
	data, err := SignStatus(st, key)
	if err != nil {
		return err
	}
	return w.Put(ctx, StatusKey(st.Host), data)
}

// VerifyStatus verifies host's status document: signed by hostKey (an
// "ssh-ed25519 AAAA..." line), about host and channel, in a version this
// side reads. Anything else is a *[StatusError]: never believe what such a
// document claims.
func VerifyStatus(data []byte, channel, host, hostKey string) (*agentapi.PullStatus, error) {
	refuse := func(e error, detail string, args ...any) (*agentapi.PullStatus, error) {
		return nil, &StatusError{Host: host, Err: e, Detail: fmt.Sprintf(detail, args...)}
	}
	if hostKey == "" {
		return refuse(ErrNoHostKey, "")
	}
	pk, err := ParseHostKey(hostKey)
	if err != nil {
		return refuse(ErrNoHostKey, "%v", err)
	}
	st := &agentapi.PullStatus{}
	if _, err := Open(data, agentapi.DocStatus, []*cache.PublicKey{{Name: host, Key: pk}}, st); err != nil {
		var re *RefusedError
		if errors.As(err, &re) {
			detail := re.Detail
			switch re.Err {
			case ErrUnsigned:
				detail = "unsigned"
			case ErrUntrusted:
				detail = "signed by another key"
			}
			return refuse(re.Err, "%s", detail)
		}
		return nil, err
	}
	switch {
	case st.V > agentapi.Version:
		return refuse(ErrNewerVersion, "status version %d; this side reads up to %d", st.V, agentapi.Version)
	case st.Host != host:
		return refuse(ErrOtherHost, "host %q", st.Host)
	case st.Channel != channel:
		return refuse(ErrOtherChannel, "channel %q, not %q", st.Channel, channel)
	}
	return st, nil
}
