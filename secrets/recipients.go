package secrets

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"
	"golang.org/x/crypto/ssh"
)

// Recipient is a public key a secret is encrypted to, and whose it is.
type Recipient struct {
	// Owner names the key's holder for people: "host web1", "admin alice".
	Owner string `json:"owner"`
	// Key is an SSH public key line ("ssh-ed25519 AAAA...", "ssh-rsa
	// AAAA...") or an age recipient ("age1...", "age1pq1...").
	Key string `json:"key"`
}

// ParseRecipient parses a [Recipient.Key].
func ParseRecipient(key string) (age.Recipient, error) {
	key = strings.TrimSpace(key)
	switch {
	case strings.HasPrefix(key, "ssh-ed25519 "), strings.HasPrefix(key, "ssh-rsa "):
		r, err := agessh.ParseRecipient(key)
		if err != nil {
			return nil, fmt.Errorf("parse recipient %q: %w", abbrev(key), err)
		}
		return r, nil
	case strings.HasPrefix(key, "age1pq1"):
		r, err := age.ParseHybridRecipient(key)
		if err != nil {
			return nil, fmt.Errorf("parse recipient %q: %w", abbrev(key), err)
		}
		return r, nil
	case strings.HasPrefix(key, "age1"):
		r, err := age.ParseX25519Recipient(key)
		if err != nil {
			return nil, fmt.Errorf("parse recipient %q: %w", abbrev(key), err)
		}
		return r, nil
	}
	return nil, fmt.Errorf("parse recipient %q: not an age recipient (age1...) or an ssh-ed25519 or ssh-rsa public key", abbrev(key))
}

// abbrev shortens a public key for messages.
func abbrev(key string) string {
	if len(key) > 40 {
		return key[:36] + "..."
	}
	return key
}

// Stanza is one recipient stanza of an age file's header: its type
// ("ssh-ed25519", "ssh-rsa", "X25519", "mlkem768x25519", ...) and, for
// SSH types, the key tag: the first four bytes of the SHA-256 of the
// public key in SSH wire format, base64 (unpadded), which identifies the
// recipient without revealing it.
type Stanza struct {
	Type string `json:"type"`
	Tag  string `json:"tag,omitempty"`
}

// ReadStanzas reads the recipient stanzas of an age file (binary or
// armored) without decrypting anything.
func ReadStanzas(r io.Reader) ([]Stanza, error) {
	br := bufio.NewReader(r)
	if head, _ := br.Peek(len(armor.Header)); string(head) == armor.Header {
		br = bufio.NewReader(armor.NewReader(br))
	}
	hdr, err := age.ExtractHeader(br)
	if err != nil {
		return nil, fmt.Errorf("read age header: %w", err)
	}
	var out []Stanza
	for line := range strings.Lines(string(hdr)) {
		rest, ok := strings.CutPrefix(line, "-> ")
		if !ok {
			continue
		}
		args := strings.Fields(rest)
		if len(args) == 0 {
			continue
		}
		s := Stanza{Type: args[0]}
		if (s.Type == "ssh-ed25519" || s.Type == "ssh-rsa") && len(args) > 1 {
			s.Tag = args[1]
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, errors.New("read age header: no recipient stanzas")
	}
	return out, nil
}

// stanzaFor returns the stanza a recipient key produces: its type and,
// for SSH keys, its tag.
func stanzaFor(key string) (Stanza, error) {
	key = strings.TrimSpace(key)
	switch {
	case strings.HasPrefix(key, "ssh-"):
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
		if err != nil {
			return Stanza{}, fmt.Errorf("parse recipient %q: %w", abbrev(key), err)
		}
		h := sha256.Sum256(pk.Marshal())
		return Stanza{Type: pk.Type(), Tag: base64.RawStdEncoding.EncodeToString(h[:4])}, nil
	case strings.HasPrefix(key, "age1pq1"):
		return Stanza{Type: "mlkem768x25519"}, nil
	case strings.HasPrefix(key, "age1"):
		return Stanza{Type: "X25519"}, nil
	}
	return Stanza{}, fmt.Errorf("parse recipient %q: unknown key type", abbrev(key))
}

// Status compares an age file's stanzas with the recipients it should
// have.
//
// SSH stanzas carry a key tag, so each SSH recipient is known to be
// present or missing, and a stanza whose tag matches no recipient is a
// removed host or admin, or an old host key. Native age stanzas (X25519,
// mlkem768x25519) are anonymous: only their number per type can be
// compared, so replacing one age1 admin key with another is not detected
// (rekey with --force after that).
type Status struct {
	// Readable are the recipients that can decrypt the file (for native
	// age keys: assumed, when the number of stanzas of the type matches).
	Readable []Recipient `json:"readable"`
	// Missing are recipients the file is not encrypted to.
	Missing []Recipient `json:"missing,omitempty"`
	// Extra are stanzas for keys that are no longer recipients (SSH tags
	// that match no recipient; surplus native stanzas).
	Extra []Stanza `json:"extra,omitempty"`
	// Stale reports that the file must be rekeyed: Missing or Extra is
	// not empty.
	Stale bool `json:"stale"`
}

// Check compares stanzas (from [ReadStanzas]) with the recipients a file
// should have.
func Check(stanzas []Stanza, rcpts []Recipient) (Status, error) {
	var st Status
	have := map[Stanza]int{}
	for _, s := range stanzas {
		have[s]++
	}
	native := map[string][]Recipient{}
	for _, r := range rcpts {
		want, err := stanzaFor(r.Key)
		if err != nil {
			return Status{}, err
		}
		if want.Tag == "" {
			native[want.Type] = append(native[want.Type], r)
			continue
		}
		if have[want] > 0 {
			have[want]--
			st.Readable = append(st.Readable, r)
		} else {
			st.Missing = append(st.Missing, r)
		}
	}
	types := make([]string, 0, len(native))
	for t := range native {
		types = append(types, t)
	}
	slices.Sort(types)
	for _, t := range types {
		rs := native[t]
		n := have[Stanza{Type: t}]
		delete(have, Stanza{Type: t})
		if n == len(rs) {
			st.Readable = append(st.Readable, rs...)
			continue
		}
		st.Missing = append(st.Missing, rs...) // which of them is unknowable
		for range n {
			st.Extra = append(st.Extra, Stanza{Type: t})
		}
	}
	for _, s := range stanzas {
		if have[s] > 0 {
			have[s]--
			st.Extra = append(st.Extra, s)
		}
	}
	st.Stale = len(st.Missing) > 0 || len(st.Extra) > 0
	return st, nil
}

// Encrypt encrypts plaintext to every recipient (binary age format).
func Encrypt(plaintext []byte, rcpts []Recipient) ([]byte, error) {
	if len(rcpts) == 0 {
		return nil, errors.New("encrypt: no recipients")
	}
	var rs []age.Recipient
	for _, r := range rcpts {
		ar, err := ParseRecipient(r.Key)
		if err != nil {
			return nil, fmt.Errorf("recipient of %s: %w", r.Owner, err)
		}
		rs = append(rs, ar)
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, rs...)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	if _, err := w.Write(plaintext); err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	return buf.Bytes(), nil
}

// Decrypt decrypts a whole age file into memory. The caller clears the
// result when done. A truncated or modified file is an error.
func Decrypt(ciphertext io.Reader, ids []age.Identity) ([]byte, error) {
	r, err := decryptReader(ciphertext, ids)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		b := buf.Bytes()
		clear(b[:cap(b)])
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	return buf.Bytes(), nil
}
