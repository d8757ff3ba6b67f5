package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// keys holds what authentication can use for one Connect: ssh-agent
// connections (by socket; IdentityAgent may name another per host) and the
// private keys read from files.
type keys struct {
	cfg    *Config
	ctx    context.Context
	agents map[string]*agentConn // by socket path
	files  map[string]ssh.Signer
	pubs   map[string]ssh.PublicKey // public keys of key files, also passphrase-protected ones
	notes  []string                 // why some key file could not be used
}

// agentConn is one ssh-agent connection.
type agentConn struct {
	conn    net.Conn
	signers []ssh.Signer
	keys    map[string]bool // marshalled public keys (certificates too) the agent holds
}

// openKeys prepares authentication. Agents are connected to and key files
// read per endpoint, by signers.
func (c *Config) openKeys(ctx context.Context) *keys {
	return &keys{cfg: c, ctx: ctx, agents: map[string]*agentConn{},
		files: map[string]ssh.Signer{}, pubs: map[string]ssh.PublicKey{}}
}

func (k *keys) close() {
	for _, a := range k.agents {
		if a != nil && a.conn != nil {
			a.conn.Close()
		}
	}
}

// agentFor returns the agent of an endpoint: its IdentityAgent if
// ~/.ssh/config gives one ("none": no agent), else SSH_AUTH_SOCK. nil means
// no usable agent.
func (k *keys) agentFor(e *endpoint) *agentConn {
	sock := k.cfg.getenv("SSH_AUTH_SOCK")
	if e.agentSet {
		sock = e.agentSocket
	}
	if sock == "" {
		return nil
	}
	if a, ok := k.agents[sock]; ok {
		return a
	}
	k.agents[sock] = nil
	d := net.Dialer{Timeout: k.cfg.dialTimeout()}
	conn, err := d.DialContext(k.ctx, "unix", sock)
	if err != nil {
		k.cfg.logf("mesh: ssh-agent at %q unusable: %v", sock, err)
		return nil
	}
	a := &agentConn{conn: conn, keys: map[string]bool{}}
	ag := agent.NewClient(conn)
	if list, err := ag.List(); err == nil {
		for _, key := range list {
			a.keys[string(key.Marshal())] = true
		}
	} else {
		k.cfg.logf("mesh: list keys of ssh-agent: %v", err)
	}
	if ss, err := ag.Signers(); err == nil {
		a.signers = ss
	} else {
		k.cfg.logf("mesh: ssh-agent signers: %v", err)
	}
	k.agents[sock] = a
	return a
}

// holds reports whether the agent holds the private key of pub.
func (a *agentConn) holds(pub ssh.PublicKey) bool {
	return a != nil && pub != nil && a.keys[string(pub.Marshal())]
}

// plainKey is the key a certificate certifies, or the key itself.
func plainKey(pub ssh.PublicKey) ssh.PublicKey {
	if ak, ok := pub.(*agent.Key); ok {
		if p, err := ssh.ParsePublicKey(ak.Marshal()); err == nil {
			pub = p
		}
	}
	if c, ok := pub.(*ssh.Certificate); ok {
		return c.Key
	}
	return pub
}

// signers returns the signers for one endpoint, in order: Config
// IdentityFiles, the endpoint's IdentityFile from ~/.ssh/config, the agent's
// keys, then the default ~/.ssh/id_* files, each private key preceded by
// the user certificates for it (CertificateFile, FILE-cert.pub next to an
// identity file, and the agent's own certificates). With IdentitiesOnly,
// agent keys are used only for identity files, and the default files only
// when no identity file is given, as in OpenSSH. Duplicates are dropped.
func (k *keys) signers(e *endpoint) ([]ssh.Signer, error) {
	ag := k.agentFor(e)
	var plain []ssh.Signer
	var idFiles []string
	var idPubs []ssh.PublicKey
	useFile := func(f string, required bool) error {
		s, pub, err := k.file(f, required, ag)
		if err != nil {
			return err
		}
		idFiles = append(idFiles, f)
		if pub != nil {
			idPubs = append(idPubs, pub)
		}
		if s != nil {
			plain = append(plain, s)
		}
		return nil
	}
	for _, f := range k.cfg.IdentityFiles {
		if err := useFile(f, true); err != nil {
			return nil, err
		}
	}
	for _, f := range e.identityFiles {
		_ = useFile(f, false)
	}
	var defaults []string
	if h := k.cfg.home(); h != "" && (!e.identitiesOnly || len(idFiles) == 0) {
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			defaults = append(defaults, filepath.Join(h, ".ssh", n))
		}
	}
	var defaultSigners []ssh.Signer
	for _, f := range defaults {
		if s, pub, _ := k.file(f, false, ag); s != nil || pub != nil {
			idFiles = append(idFiles, f)
			if pub != nil {
				idPubs = append(idPubs, pub)
			}
			if s != nil {
				defaultSigners = append(defaultSigners, s)
			}
		}
	}
	if ag != nil {
		for _, s := range ag.signers {
			if e.identitiesOnly && !slices.ContainsFunc(idPubs, func(p ssh.PublicKey) bool {
				return bytes.Equal(p.Marshal(), plainKey(s.PublicKey()).Marshal())
			}) {
				continue
			}
			plain = append(plain, s)
		}
	}
	plain = append(plain, defaultSigners...)

	// User certificates, paired with the private keys they certify.
	var certs []*ssh.Certificate
	for _, f := range e.certificateFiles {
		if c := k.cert(f, true); c != nil {
			certs = append(certs, c)
		}
	}
	for _, f := range idFiles {
		if c := k.cert(f+"-cert.pub", false); c != nil {
			certs = append(certs, c)
		}
	}

	var out []ssh.Signer
	seen := map[string]bool{}
	add := func(s ssh.Signer) {
		b := string(s.PublicKey().Marshal())
		if !seen[b] {
			seen[b] = true
			out = append(out, s)
		}
	}
	for _, s := range plain {
		pub := s.PublicKey()
		for _, c := range certs {
			if !bytes.Equal(c.Key.Marshal(), pub.Marshal()) {
				continue
			}
			cs, err := ssh.NewCertSigner(c, s)
			if err != nil {
				k.cfg.logf("mesh: %s: certificate for %s unusable: %v", e.name, ssh.FingerprintSHA256(pub), err)
				continue
			}
			add(cs)
		}
		add(s)
	}
	return out, nil
}

// cert reads a user certificate file; a file that is missing or not a
// certificate is skipped (and logged when it was named in CertificateFile).
func (k *keys) cert(path string, named bool) *ssh.Certificate {
	b, err := os.ReadFile(path)
	if err != nil {
		if named {
			k.cfg.logf("mesh: skipping CertificateFile %q: %v", path, err)
		}
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	c, ok := pub.(*ssh.Certificate)
	if err != nil || !ok || c.CertType != ssh.UserCert {
		k.cfg.logf("mesh: skipping certificate file %q: not an SSH user certificate", path)
		return nil
	}
	return c
}

// file reads one private key file and returns its signer (nil when the
// file is missing or unusable) and its public key (also for a
// passphrase-protected key, from the file or FILE.pub). A missing file is an
// error only when required. A passphrase-protected key is skipped (the
// agent may hold it); when the agent does not, a note is kept for the error
// message.
func (k *keys) file(path string, required bool, ag *agentConn) (ssh.Signer, ssh.PublicKey, error) {
	if s, ok := k.files[path]; ok {
		return s, k.pubs[path], nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if !required && errors.Is(err, fs.ErrNotExist) {
			return nil, nil, nil
		}
		// The error names the file, never its content.
		return nil, nil, fmt.Errorf("read identity file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	var pm *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &pm):
		pub := pm.PublicKey
		if pub == nil {
			if pb, err := os.ReadFile(path + ".pub"); err == nil {
				pub, _, _, _, _ = ssh.ParseAuthorizedKey(pb)
			}
		}
		k.files[path], k.pubs[path] = nil, pub
		if ag.holds(pub) {
			return nil, pub, nil
		}
		k.notes = append(k.notes, fmt.Sprintf("identity file %q is passphrase-protected and no ssh-agent holds it (load it with ssh-add)", path))
		return nil, pub, nil
	case err != nil:
		// Hide the parser's error details: they could quote key material.
		if required {
			return nil, nil, fmt.Errorf("identity file %q: not a usable private key", path)
		}
		k.cfg.logf("mesh: skipping identity file %q: not a usable private key", path)
		k.files[path] = nil
		return nil, nil, nil
	}
	k.files[path], k.pubs[path] = s, s.PublicKey()
	return s, s.PublicKey(), nil
}

// authError explains an authentication failure, adding why key files were
// unusable.
func (k *keys) authError(err error) error {
	if len(k.notes) == 0 {
		return err
	}
	return fmt.Errorf("%w; %s", err, strings.Join(k.notes, "; "))
}
