package secrets

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

// sshKey returns a new ed25519 host key's private key file and public line.
func sshKey(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	p, _ := newHostKey(t, dir, name)
	data, _ := os.ReadFile(p)
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return p, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	_, h1 := sshKey(t, dir, "h1")
	_, h2 := sshKey(t, dir, "h2")
	_, h3 := sshKey(t, dir, "h3")
	a1, _ := age.GenerateX25519Identity()
	a2, _ := age.GenerateX25519Identity()
	r := func(owner, key string) Recipient { return Recipient{Owner: owner, Key: key} }
	host1, host2, host3 := r("host h1", h1), r("host h2", h2), r("host h3", h3)
	adm1, adm2 := r("admin a", a1.Recipient().String()), r("admin b", a2.Recipient().String())
	tag := func(key string) string { s, _ := stanzaFor(key); return s.Tag }
	tests := []struct {
		name    string
		have    []Recipient // encrypted to
		want    []Recipient // current recipients
		stale   bool
		missing []string
		extra   []Stanza
	}{
		{"same", []Recipient{host1, host2, adm1}, []Recipient{host1, host2, adm1}, false, nil, nil},
		{"order does not matter", []Recipient{adm1, host2, host1}, []Recipient{host1, host2, adm1}, false, nil, nil},
		{"host added", []Recipient{host1, adm1}, []Recipient{host1, host2, adm1}, true, []string{"host h2"}, nil},
		{"host removed", []Recipient{host1, host2, adm1}, []Recipient{host1, adm1}, true, nil, []Stanza{{"ssh-ed25519", tag(h2)}}},
		{"host key rotated", []Recipient{host1, host2}, []Recipient{host1, r("host h2", h3)}, true, []string{"host h2"}, []Stanza{{"ssh-ed25519", tag(h2)}}},
		{"admin added", []Recipient{host1, adm1}, []Recipient{host1, adm1, adm2}, true, []string{"admin a", "admin b"}, []Stanza{{Type: "X25519"}}},
		{"admin removed", []Recipient{host1, adm1, adm2}, []Recipient{host1, adm1}, true, []string{"admin a"}, []Stanza{{Type: "X25519"}, {Type: "X25519"}}},
		// The documented blind spot: native age stanzas are anonymous.
		{"admin age key swapped (undetectable)", []Recipient{host1, adm1}, []Recipient{host1, adm2}, false, nil, nil},
		{"ssh admin", []Recipient{host3}, []Recipient{r("admin c", h3+" c@laptop")}, false, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct, err := Encrypt([]byte("x"), tt.have)
			if err != nil {
				t.Fatal(err)
			}
			st, err := ReadStanzas(bytes.NewReader(ct))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Check(st, tt.want)
			if err != nil {
				t.Fatal(err)
			}
			var missing []string
			for _, m := range got.Missing {
				missing = append(missing, m.Owner)
			}
			if got.Stale != tt.stale || !cmp.Equal(missing, tt.missing) || !cmp.Equal(got.Extra, tt.extra) {
				t.Errorf("Check(%s) = stale %v, missing %q, extra %v; want %v, %q, %v", tt.name, got.Stale, missing, got.Extra, tt.stale, tt.missing, tt.extra)
			}
		})
	}
}

func TestReadStanzasArmored(t *testing.T) {
	_, h1 := sshKey(t, t.TempDir(), "h1")
	ct, err := Encrypt([]byte("x"), []Recipient{{Key: h1}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := armor.NewWriter(&buf)
	w.Write(ct)
	w.Close()
	st, err := ReadStanzas(&buf)
	if want, _ := stanzaFor(h1); err != nil || !cmp.Equal(st, []Stanza{want}) {
		t.Errorf("ReadStanzas(armored) = %v, %v; want [%v]", st, err, want)
	}
}

func TestEditLeavesNoPlaintext(t *testing.T) {
	dir := t.TempDir()
	tmp := t.TempDir() // stands in for a tmpfs directory
	keyFile, pub := sshKey(t, dir, "admin")
	ids, err := LoadIdentities(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "s.age")
	rcpts := []Recipient{{Owner: "admin", Key: pub}}
	// The editor writes the value and leaves a swap file behind, like vim.
	editor := filepath.Join(dir, "ed")
	os.WriteFile(editor, []byte("#!/bin/sh\nprintf 'plain-text-42' > \"$1\"\ncp \"$1\" \"$(dirname \"$1\")/.s.swp\"\n"), 0o755)
	var out bytes.Buffer
	changed, err := Edit(context.Background(), EditOptions{File: file, Recipients: rcpts, Editor: editor, TempDir: tmp, Stdout: &out, Stderr: &out})
	if err != nil || !changed {
		t.Fatalf("Edit = %v, %v; want true, nil", changed, err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("Edit left %d entries in the temp directory", len(left))
	}
	ct, _ := os.ReadFile(file)
	if bytes.Contains(ct, []byte("plain-text-42")) {
		t.Errorf("ciphertext contains the plaintext")
	}
	f, _ := os.Open(file)
	defer f.Close()
	pt, err := Decrypt(f, ids)
	if err != nil || string(pt) != "plain-text-42" {
		t.Errorf("Decrypt(edited) = %q, %v", pt, err)
	}
	// A failing editor: nothing written, nothing left.
	before, _ := os.ReadFile(file)
	if _, err := Edit(context.Background(), EditOptions{File: file, Recipients: rcpts, Identities: ids, Editor: "false", TempDir: tmp, Stdout: &out, Stderr: &out}); err == nil {
		t.Errorf("Edit with a failing editor succeeded")
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Errorf("a failed edit changed the file")
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("a failed Edit left %d entries in the temp directory", len(left))
	}
	if strings.Contains(out.String(), "plain-text-42") {
		t.Errorf("output contains the plaintext: %q", out.String())
	}
}

func TestLoadIdentitiesErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "garbage"), []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nsecretstuff\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "agegarbage"), []byte("AGE-SECRET-KEY-1SECRETSTUFF\n"), 0o600)
	for _, name := range []string{"garbage", "agegarbage", "missing"} {
		_, err := LoadIdentities(filepath.Join(dir, name))
		if err == nil || strings.Contains(err.Error(), "SECRETSTUFF") || strings.Contains(err.Error(), "secretstuff") {
			t.Errorf("LoadIdentities(%q) = %v; want an error without key material", name, err)
		}
	}
}
