package mesh

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/declarative/deploy/internal/atomicfile"
)

// ParseHostKey parses a public key in authorized_keys format
// ("ssh-ed25519 AAAA... [comment]"), as pinned in a host's host_key.
func ParseHostKey(s string) (ssh.PublicKey, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("parse host key %q: %w", abbrev(s), err)
	}
	return k, nil
}

// FormatHostKey formats a public key in authorized_keys format, without a
// comment and without a trailing newline.
func FormatHostKey(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

func abbrev(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// verifier checks one endpoint's host key. It remembers the typed error it
// returned, because the ssh package wraps it in a handshake error.
type verifier struct {
	cfg      *Config
	e        *endpoint
	pinned   ssh.PublicKey
	files    []string            // known_hosts files that exist
	check    ssh.HostKeyCallback // from knownhosts, nil if no file exists
	err      error               // the typed error, if verification failed
	verified bool                // the callback accepted a key
}

func (c *Config) newVerifier(e *endpoint) (*verifier, error) {
	v := &verifier{cfg: c, e: e}
	if e.hostKey != "" {
		k, err := ParseHostKey(e.hostKey)
		if err != nil {
			return nil, fmt.Errorf("pinned host key of %q: %w", e.name, err)
		}
		v.pinned = k
		return v, nil
	}
	for _, f := range c.knownHostsFiles() {
		if _, err := os.Stat(f); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		v.files = append(v.files, f)
	}
	if len(v.files) > 0 {
		cb, err := knownhosts.New(v.files...)
		if err != nil {
			return nil, fmt.Errorf("read known_hosts: %w", err)
		}
		v.check = cb
	}
	return v, nil
}

// knownHostsAddr is the name the endpoint has in known_hosts.
func (v *verifier) knownHostsAddr() string {
	return knownhosts.Normalize(v.e.knownHostsName())
}

// trustOnFirstUse is whether an unknown key may be recorded: only when
// Config.TrustOnFirstUse allows it, and not when ~/.ssh/config says
// StrictHostKeyChecking yes (or ask) for the host. ssh_config can make
// checking stricter, never weaker: its "accept-new" and "no" alone do not
// accept unknown hosts, and nothing accepts a changed key.
func (v *verifier) trustOnFirstUse() bool {
	switch v.e.strict {
	case "yes", "ask":
		if v.cfg.TrustOnFirstUse {
			v.cfg.logf("mesh: %s: StrictHostKeyChecking %s in ssh config: not trusting an unknown key on first use", v.e.name, v.e.strict)
		}
		return false
	case "accept-new", "no":
		if !v.cfg.TrustOnFirstUse {
			v.cfg.logf("mesh: %s: ignoring StrictHostKeyChecking %s in ssh config: unknown host keys are accepted only with --trust-on-first-use", v.e.name, v.e.strict)
		}
	}
	return v.cfg.TrustOnFirstUse
}

// algorithms orders the host key algorithms so that those of the keys we
// already know come first (certificates, when a @cert-authority line of
// known_hosts matches the host), then ed25519: the server then presents a
// key we can compare, and a changed key shows as changed rather than as a
// key of another type.
func (v *verifier) algorithms() []string {
	var known []string
	if v.pinned != nil {
		known = algorithmsFor(v.pinned.Type())
	} else if v.check != nil {
		// Ask the database with a key it cannot hold; the error lists the
		// keys it has for this address.
		_, priv, _ := ed25519.GenerateKey(nil)
		probe, _ := ssh.NewSignerFromKey(priv)
		var ke *knownhosts.KeyError
		if err := v.check(v.e.knownHostsName(), probeAddr, probe.PublicKey()); errors.As(err, &ke) {
			for _, w := range ke.Want {
				known = append(known, algorithmsFor(w.Key.Type())...)
			}
		}
	}
	// A certificate authority trusted for this host: certificates first,
	// or a server that has one would present its plain key, which
	// known_hosts does not list, and fail as an unknown host.
	if v.pinned == nil && hasCertAuthority(v.files, v.e.knownHostsName()) {
		known = append(slices.Clone(certAlgorithms), known...)
	}
	// Then plain keys, ed25519 first (as OpenSSH does), so that an unknown
	// host is reported or recorded by its ed25519 key; certificates last.
	all := append([]string(nil), known...)
	for _, a := range append(slices.Clone(defaultHostKeyOrder), ssh.SupportedAlgorithms().HostKeys...) {
		if !slices.Contains(all, a) {
			all = append(all, a)
		}
	}
	return all
}

var defaultHostKeyOrder = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

var probeAddr = &net.TCPAddr{IP: net.IPv4zero}

func algorithmsFor(keyType string) []string {
	switch keyType {
	case ssh.KeyAlgoRSA:
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	case ssh.CertAlgoRSAv01:
		return []string{ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01}
	default:
		return []string{keyType}
	}
}

// callback is the ssh.HostKeyCallback for this endpoint.
func (v *verifier) callback(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := v.verify(hostname, remote, key)
	if err != nil {
		v.err = err
		return err
	}
	v.verified = true
	return nil
}

func (v *verifier) verify(hostname string, remote net.Addr, key ssh.PublicKey) error {
	got := ssh.FingerprintSHA256(key)
	if v.pinned != nil {
		if bytes.Equal(v.pinned.Marshal(), key.Marshal()) {
			return nil
		}
		return &HostKeyError{Host: v.e.name, Want: ssh.FingerprintSHA256(v.pinned), Got: got, Source: "pinned host key"}
	}
	if v.check != nil {
		// HostKeyAlias, when set, is the name known_hosts (and a host
		// certificate's principals) are checked against.
		err := v.check(v.e.knownHostsName(), probeAddr, key)
		if err == nil {
			return nil
		}
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case errors.As(err, &re):
			return &RevokedHostKeyError{Host: v.e.name, Fingerprint: got,
				Source: re.Revoked.Filename + ":" + strconv.Itoa(re.Revoked.Line)}
		case errors.As(err, &ke) && len(ke.Want) > 0:
			var want, src []string
			for _, w := range ke.Want {
				want = append(want, ssh.FingerprintSHA256(w.Key))
				src = append(src, w.Filename+":"+strconv.Itoa(w.Line))
			}
			return &HostKeyError{Host: v.e.name, Want: strings.Join(want, ", "), Got: got, Source: strings.Join(src, ", ")}
		case errors.As(err, &ke):
			// Unknown: fall through to trust-on-first-use.
		default:
			return fmt.Errorf("check host key of %q: %w", v.e.name, err)
		}
	}
	if !v.trustOnFirstUse() {
		return &UnknownHostError{Host: v.e.name, Address: v.knownHostsAddr(), Fingerprint: got, Scan: v.e.scanName()}
	}
	if err := v.cfg.trust(v.knownHostsAddr(), key); err != nil {
		return fmt.Errorf("trust host key of %q on first use: %w", v.e.name, err)
	}
	v.cfg.logf("mesh: %s: trusting new host key %s on first use", v.e.name, got)
	return nil
}

// trust appends a known_hosts line for addr to the first known_hosts file,
// atomically (temp file + rename) and under an exclusive lock on its
// directory, so concurrent connections never lose each other's lines.
func (c *Config) trust(addr string, key ssh.PublicKey) error {
	files := c.knownHostsFiles()
	if len(files) == 0 {
		return errors.New("no known_hosts file: HOME is not set and Config.KnownHostsFiles is empty")
	}
	path := files[0]
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %q: %w", dir, err)
	}
	defer syscall.Flock(int(d.Fd()), syscall.LOCK_UN)

	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	perm := os.FileMode(0o600)
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
	}
	if len(old) > 0 && old[len(old)-1] != '\n' {
		old = append(old, '\n')
	}
	line := knownhosts.Line([]string{addr}, key) + "\n"
	return atomicfile.Write(path, append(old, line...), perm)
}
