package secrets

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Use is one host's use of a secret file, as the fleet's configuration
// says.
type Use struct {
	// Secret is the secret's name.
	Secret string
	// File is the .age file, relative to the fleet directory.
	File string
	// Host is the host that uses it, and HostKey the host's SSH host key
	// ("ssh-ed25519 AAAA... [comment]"; "" when the fleet names none).
	Host, HostKey string
}

// Admin is a person whose keys every secret file is encrypted to.
type Admin struct {
	Name string
	// Keys are age recipients or SSH public keys.
	Keys []string
}

// File is one secret file of a fleet and who must be able to read it.
type File struct {
	// File is the path relative to the fleet directory; Path is absolute.
	File string `json:"file"`
	Path string `json:"-"`
	// Secrets are the names of the secrets using the file.
	Secrets []string `json:"secrets"`
	// Hosts are the hosts whose configuration uses the file.
	Hosts []string `json:"hosts"`
	// Recipients are the hosts' keys, then the admins' keys.
	Recipients []Recipient `json:"recipients"`
	// Problems make the recipients incomplete: a host without an
	// ssh-ed25519 host key cannot decrypt.
	Problems []string `json:"problems,omitempty"`
}

// Files are the secret files of a fleet: who reads which file, who must be
// able to.
type Files struct {
	// Dir is the fleet directory.
	Dir string
	// Files are sorted by path.
	Files []*File

	admins []Recipient
}

// FleetFiles turns a fleet's secret uses, its admins and the .age files
// found in it (stray, relative to dir: files no host may use) into its
// secret files. A file's recipients are the ssh-ed25519 host keys of the
// hosts that use it (the agent decrypts with that key), then every admin's
// keys; a using host without such a key is a problem of the file.
func FleetFiles(dir string, uses []Use, admins []Admin, stray []string) *Files {
	fs := &Files{Dir: dir}
	for _, a := range admins {
		for _, k := range a.Keys {
			fs.admins = append(fs.admins, Recipient{Owner: "admin " + a.Name, Key: k})
		}
	}
	byPath := map[string]*File{}
	get := func(rel string) *File {
		f, ok := byPath[rel]
		if !ok {
			f = fs.newFile(rel)
			byPath[rel] = f
		}
		return f
	}
	for _, u := range uses {
		f := get(u.File)
		if !slices.Contains(f.Secrets, u.Secret) {
			f.Secrets = append(f.Secrets, u.Secret)
		}
		if slices.Contains(f.Hosts, u.Host) {
			continue
		}
		f.Hosts = append(f.Hosts, u.Host)
		switch fields := strings.Fields(u.HostKey); {
		case len(fields) == 0:
			f.Problems = append(f.Problems, fmt.Sprintf("host %q has no host_key", u.Host))
		case HostRecipient(u.HostKey) == "":
			f.Problems = append(f.Problems, fmt.Sprintf("host %q has a %s host_key; the agent decrypts with the ssh-ed25519 host key", u.Host, fields[0]))
		default:
			f.Recipients = append(f.Recipients, Recipient{Owner: "host " + u.Host, Key: HostRecipient(u.HostKey)})
		}
	}
	for _, rel := range stray {
		get(rel)
	}
	for _, f := range byPath {
		f.Recipients = append(f.Recipients, fs.admins...)
		slices.Sort(f.Secrets)
		slices.Sort(f.Hosts)
		fs.Files = append(fs.Files, f)
	}
	slices.SortFunc(fs.Files, func(a, b *File) int { return strings.Compare(a.File, b.File) })
	return fs
}

// HostRecipient is the recipient a host's secrets are encrypted to, from its
// host_key ("ssh-ed25519 AAAA... [comment]": the agent decrypts with the
// ssh-ed25519 host key), without the comment; "" for any other key.
func HostRecipient(hostKey string) string {
	fields := strings.Fields(hostKey)
	if len(fields) < 2 || fields[0] != "ssh-ed25519" {
		return ""
	}
	return fields[0] + " " + fields[1]
}

// IsPlaceholder reports whether the file at path is a placeholder for a
// secret rather than a ciphertext: its content, or the base64 inside an
// age armor, begins with "PLACEHOLDER" (as the examples' files do, until
// deploy secrets edit writes the real ones).
func IsPlaceholder(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	const marker = "PLACEHOLDER"
	if bytes.HasPrefix(b, []byte(marker)) {
		return true
	}
	body, ok := bytes.CutPrefix(bytes.TrimSpace(b), []byte("-----BEGIN AGE ENCRYPTED FILE-----"))
	if !ok {
		return false
	}
	body, _, _ = bytes.Cut(body, []byte("-----END"))
	raw, _ := base64.StdEncoding.DecodeString(string(bytes.Join(bytes.Fields(body), nil)))
	return bytes.HasPrefix(raw, []byte(marker))
}

// newFile is a file no host uses: its recipients are the admins.
func (fs *Files) newFile(rel string) *File {
	return &File{File: rel, Path: filepath.Join(fs.Dir, rel), Secrets: []string{}, Hosts: []string{}}
}

// ErrUnknownSecret is [Files.Lookup]'s error for a name that is neither a
// secret nor a path ending in .age.
var ErrUnknownSecret = errors.New("unknown secret")

// Lookup finds the file name means: the file of the secret called name,
// or a path (relative to the fleet directory, or absolute inside it)
// ending in .age, which need not exist yet (encrypted to the admins only,
// unless a host uses it).
func (fs *Files) Lookup(name string) (*File, error) {
	var found []string
	var file *File
	for _, f := range fs.Files {
		if slices.Contains(f.Secrets, name) {
			found, file = append(found, f.File), f
		}
	}
	switch {
	case len(found) == 1:
		return file, nil
	case len(found) > 1:
		return nil, fmt.Errorf("secret %q is ambiguous: it names %s; pass the file instead", name, strings.Join(found, ", "))
	case !strings.HasSuffix(name, ".age"):
		return nil, fmt.Errorf("%w %q", ErrUnknownSecret, name)
	}
	p := name
	if filepath.IsAbs(p) {
		rel, err := filepath.Rel(fs.Dir, p)
		if err != nil {
			return nil, fmt.Errorf("secret file %q: %w", name, err)
		}
		p = rel
	}
	p = filepath.Clean(p)
	if p == ".." || strings.HasPrefix(p, "../") {
		return nil, fmt.Errorf("secret file %q is outside the fleet directory %q", name, fs.Dir)
	}
	for _, f := range fs.Files {
		if f.File == p {
			return f, nil
		}
	}
	f := fs.newFile(p)
	f.Recipients = slices.Clone(fs.admins)
	return f, nil
}

// RecipientsError says why a file cannot be encrypted to every reader it
// needs: hosts without a usable key (Problems), or no recipient at all.
type RecipientsError struct {
	File     string
	Problems []string
}

func (e *RecipientsError) Error() string {
	if len(e.Problems) == 0 {
		return fmt.Sprintf("secret file %q: no recipients (no host uses it and no admin is declared)", e.File)
	}
	return fmt.Sprintf("secret file %q: %s", e.File, strings.Join(e.Problems, "; "))
}

// CheckRecipients returns a *[RecipientsError] unless f can be encrypted
// to every reader it needs.
func (f *File) CheckRecipients() error {
	if len(f.Problems) > 0 || len(f.Recipients) == 0 {
		return &RecipientsError{File: f.File, Problems: f.Problems}
	}
	return nil
}

// The states of a secret file ([Inspection]).
const (
	StateOK         = "ok"         // encrypted to exactly its recipients
	StateStale      = "stale"      // to be rekeyed: a recipient missing, or an extra one
	StateMissing    = "missing"    // the file does not exist
	StateUnreadable = "unreadable" // not an age file, or unreadable
	StateIncomplete = "incomplete" // ok, but some host that uses it has no usable key
	StateRevoked    = "revoked"    // its current version is revoked (secrets/revoked): rotate it
)

// Inspection is what [File.Inspect] finds.
type Inspection struct {
	State string `json:"status"`
	// Readable are the owners of the recipients that can decrypt it.
	Readable []string `json:"readable_by"`
	Detail   *Status  `json:"detail,omitempty"`
	// Message says what is wrong, for people.
	Message string `json:"message,omitempty"`
}

// Inspect reads f's header, without decrypting, and compares it with
// its recipients.
func (f *File) Inspect() Inspection {
	in := Inspection{Readable: []string{}}
	st, err := FileStatus(f.Path, f.Recipients)
	switch {
	case errors.Is(err, os.ErrNotExist):
		in.State, in.Message = StateMissing, "file does not exist (deploy secrets edit creates it)"
		return in
	case err != nil:
		in.State, in.Message = StateUnreadable, err.Error()
		return in
	}
	in.Detail, in.State = &st, StateOK
	for _, r := range st.Readable {
		in.Readable = append(in.Readable, r.Owner)
	}
	if st.Stale {
		in.State = StateStale
		var why []string
		for _, r := range st.Missing {
			why = append(why, "not encrypted to "+r.Owner)
		}
		for _, x := range st.Extra {
			if x.Tag != "" {
				why = append(why, fmt.Sprintf("encrypted to an unknown %s key (tag %s)", x.Type, x.Tag))
			} else {
				why = append(why, "encrypted to an extra "+x.Type+" key")
			}
		}
		in.Message = strings.Join(why, "; ")
	}
	if len(f.Problems) > 0 && in.State == StateOK {
		in.State = StateIncomplete
	}
	return in
}
