package secrets

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"
	"golang.org/x/crypto/ssh"
)

// ErrPassphrase is returned for an SSH private key protected by a
// passphrase: deploy reads identities non-interactively.
var ErrPassphrase = errors.New("the SSH key is protected by a passphrase")

// LoadIdentities reads private keys to decrypt with: OpenSSH private keys
// (ed25519 or RSA, as for ssh_host_ed25519_key or ~/.ssh/id_ed25519) or
// age identity files (AGE-SECRET-KEY-1...). Every file must exist and
// parse. Errors never include key material.
func LoadIdentities(paths ...string) ([]age.Identity, error) {
	if len(paths) == 0 {
		return nil, errors.New("no identity files")
	}
	var ids []age.Identity
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read identity %q: %w", p, err)
		}
		got, err := parseIdentities(data)
		clear(data)
		if err != nil {
			return nil, fmt.Errorf("parse identity %q: %w", p, err)
		}
		ids = append(ids, got...)
	}
	return ids, nil
}

func parseIdentities(data []byte) ([]age.Identity, error) {
	if bytes.Contains(data, []byte("-----BEGIN")) {
		id, err := agessh.ParseIdentity(data)
		if err != nil {
			var pm *ssh.PassphraseMissingError
			if errors.As(err, &pm) {
				return nil, ErrPassphrase
			}
			return nil, errors.New("not a usable OpenSSH ed25519 or RSA private key")
		}
		return []age.Identity{id}, nil
	}
	ids, err := age.ParseIdentities(bytes.NewReader(data))
	if err != nil {
		// age's parse errors do not quote the input.
		return nil, err
	}
	return ids, nil
}

// decryptReader returns the plaintext stream of an age file, binary or
// ASCII-armored. The stream's Read fails on a truncated or modified file;
// only io.EOF means the whole file was authentic.
func decryptReader(r io.Reader, ids []age.Identity) (io.Reader, error) {
	br := bufio.NewReader(r)
	if head, _ := br.Peek(len(armor.Header)); string(head) == armor.Header {
		r = armor.NewReader(br)
	} else {
		r = br
	}
	pr, err := age.Decrypt(r, ids...)
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	return pr, nil
}
