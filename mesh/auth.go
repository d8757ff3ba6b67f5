package mesh

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// keys holds what authentication can use for one Connect: an ssh-agent
// connection and the private keys read from files.
type keys struct {
	cfg       *Config
	agentConn net.Conn
	agent     agent.ExtendedAgent
	agentKeys map[string]bool // marshalled public keys the agent holds
	files     map[string]ssh.Signer
	notes     []string // why some key file could not be used
}

// openKeys connects to the ssh-agent, if any. Key files are read per
// endpoint, by signers.
func (c *Config) openKeys(ctx context.Context) *keys {
	k := &keys{cfg: c, files: map[string]ssh.Signer{}, agentKeys: map[string]bool{}}
	sock := c.getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return k
	}
	d := net.Dialer{Timeout: c.dialTimeout()}
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		c.logf("mesh: ssh-agent at %q unusable: %v", sock, err)
		return k
	}
	k.agentConn = conn
	k.agent = agent.NewClient(conn)
	if list, err := k.agent.List(); err == nil {
		for _, key := range list {
			k.agentKeys[string(key.Marshal())] = true
		}
	} else {
		c.logf("mesh: list keys of ssh-agent: %v", err)
	}
	return k
}

func (k *keys) close() {
	if k.agentConn != nil {
		k.agentConn.Close()
	}
}

// signers returns the signers for one endpoint, in order: Config
// IdentityFiles, the endpoint's IdentityFile from ~/.ssh/config, the agent's
// keys, then the default ~/.ssh/id_* files. Duplicates are dropped.
func (k *keys) signers(e *endpoint) ([]ssh.Signer, error) {
	var out []ssh.Signer
	seen := map[string]bool{}
	add := func(s ssh.Signer) {
		b := string(s.PublicKey().Marshal())
		if !seen[b] {
			seen[b] = true
			out = append(out, s)
		}
	}
	for _, f := range k.cfg.IdentityFiles {
		s, err := k.file(f, true)
		if err != nil {
			return nil, err
		}
		if s != nil {
			add(s)
		}
	}
	for _, f := range e.identityFiles {
		if s, _ := k.file(f, false); s != nil {
			add(s)
		}
	}
	if k.agent != nil {
		if ss, err := k.agent.Signers(); err == nil {
			for _, s := range ss {
				add(s)
			}
		} else {
			k.cfg.logf("mesh: ssh-agent signers: %v", err)
		}
	}
	if h := k.cfg.home(); h != "" {
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			if s, _ := k.file(filepath.Join(h, ".ssh", n), false); s != nil {
				add(s)
			}
		}
	}
	return out, nil
}

// file reads one private key file. A missing file is an error only when
// required. A passphrase-protected key is skipped (the agent may hold it);
// when the agent does not, a note is kept for the error message.
func (k *keys) file(path string, required bool) (ssh.Signer, error) {
	if s, ok := k.files[path]; ok {
		return s, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if !required && errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		// The error names the file, never its content.
		return nil, fmt.Errorf("read identity file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	var pm *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &pm):
		if pm.PublicKey != nil && k.agentKeys[string(pm.PublicKey.Marshal())] {
			k.files[path] = nil
			return nil, nil
		}
		k.notes = append(k.notes, fmt.Sprintf("identity file %q is passphrase-protected and no ssh-agent holds it (load it with ssh-add)", path))
		k.files[path] = nil
		return nil, nil
	case err != nil:
		// Hide the parser's error details: they could quote key material.
		if required {
			return nil, fmt.Errorf("identity file %q: not a usable private key", path)
		}
		k.cfg.logf("mesh: skipping identity file %q: not a usable private key", path)
		k.files[path] = nil
		return nil, nil
	}
	k.files[path] = s
	return s, nil
}

// authError explains an authentication failure, adding why key files were
// unusable.
func (k *keys) authError(err error) error {
	if len(k.notes) == 0 {
		return err
	}
	return fmt.Errorf("%w; %s", err, strings.Join(k.notes, "; "))
}
