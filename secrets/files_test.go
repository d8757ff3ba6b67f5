package secrets

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FleetFiles: a file's recipients are the ssh-ed25519 keys of the hosts
// that use it, in the order of the uses, then every admin's keys; a host
// without such a key is a problem of the file; stray files are read by the
// admins only.
func TestFleetFiles(t *testing.T) {
	const k1, k2 = "ssh-ed25519 AAAAkey1", "ssh-ed25519 AAAAkey2"
	uses := []Use{
		{Secret: "db", File: "secrets/db.age", Host: "web2", HostKey: k2 + " root@web2"},
		{Secret: "db", File: "secrets/db.age", Host: "web1", HostKey: k1},
		{Secret: "db-ro", File: "secrets/db.age", Host: "web1", HostKey: k1}, // the same file again
		{Secret: "token", File: "secrets/token.age", Host: "old", HostKey: "ssh-rsa AAAArsa"},
		{Secret: "token", File: "secrets/token.age", Host: "new"},
	}
	admins := []Admin{{Name: "alice", Keys: []string{"age1alice", "ssh-ed25519 AAAAalice"}}, {Name: "bob", Keys: []string{"age1bob"}}}
	fs := FleetFiles("/fleet", uses, admins, []string{"secrets/db.age", "secrets/unused.age"})
	adm := []Recipient{{Owner: "admin alice", Key: "age1alice"}, {Owner: "admin alice", Key: "ssh-ed25519 AAAAalice"}, {Owner: "admin bob", Key: "age1bob"}}
	want := []*File{
		{File: "secrets/db.age", Path: "/fleet/secrets/db.age", Secrets: []string{"db", "db-ro"}, Hosts: []string{"web1", "web2"},
			Recipients: append([]Recipient{{Owner: "host web2", Key: k2}, {Owner: "host web1", Key: k1}}, adm...)},
		{File: "secrets/token.age", Path: "/fleet/secrets/token.age", Secrets: []string{"token"}, Hosts: []string{"new", "old"}, Recipients: adm,
			Problems: []string{`host "old" has a ssh-rsa host_key; the agent decrypts with the ssh-ed25519 host key`, `host "new" has no host_key`}},
		{File: "secrets/unused.age", Path: "/fleet/secrets/unused.age", Secrets: []string{}, Hosts: []string{}, Recipients: adm},
	}
	if diff := cmp.Diff(want, fs.Files); diff != "" {
		t.Errorf("FleetFiles() mismatch (-want +got):\n%s", diff)
	}
	if err := fs.Files[0].CheckRecipients(); err != nil {
		t.Errorf("CheckRecipients(db.age) = %v, want nil", err)
	}
	var re *RecipientsError
	if err := fs.Files[1].CheckRecipients(); !errors.As(err, &re) || len(re.Problems) != 2 {
		t.Errorf("CheckRecipients(token.age) = %v, want its two problems", err)
	}
	if err := FleetFiles("/fleet", nil, nil, []string{"secrets/x.age"}).Files[0].CheckRecipients(); err == nil || !strings.Contains(err.Error(), "no recipients") {
		t.Errorf("CheckRecipients(a stray file, no admins) = %v, want no recipients", err)
	}
}

func TestLookup(t *testing.T) {
	uses := []Use{
		{Secret: "db", File: "secrets/db.age", Host: "web1", HostKey: "ssh-ed25519 AAAAkey1"},
		{Secret: "api", File: "secrets/api.age", Host: "web1", HostKey: "ssh-ed25519 AAAAkey1"},
		{Secret: "api", File: "secrets/api-2.age", Host: "web2", HostKey: "ssh-ed25519 AAAAkey2"},
	}
	fs := FleetFiles("/fleet", uses, []Admin{{Name: "ops", Keys: []string{"age1ops"}}}, nil)
	for _, tt := range []struct {
		name, file, err string
		recipients      int
	}{
		{name: "db", file: "secrets/db.age", recipients: 2},
		{name: "secrets/db.age", file: "secrets/db.age", recipients: 2},
		{name: "/fleet/secrets/db.age", file: "secrets/db.age", recipients: 2},
		{name: "./secrets/new.age", file: "secrets/new.age", recipients: 1}, // need not exist: the admins read it
		{name: "api", err: `secret "api" is ambiguous: it names secrets/api-2.age, secrets/api.age; pass the file instead`},
		{name: "nope", err: `unknown secret "nope"`},
		{name: "../x.age", err: `secret file "../x.age" is outside the fleet directory "/fleet"`},
		{name: "/elsewhere/x.age", err: "outside the fleet directory"},
	} {
		f, err := fs.Lookup(tt.name)
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Lookup(%q) = %v, want error %q", tt.name, err, tt.err)
			}
		case err != nil:
			t.Errorf("Lookup(%q) = %v", tt.name, err)
		case f.File != tt.file || len(f.Recipients) != tt.recipients:
			t.Errorf("Lookup(%q) = %s with %d recipients, want %s with %d", tt.name, f.File, len(f.Recipients), tt.file, tt.recipients)
		}
	}
	if _, err := fs.Lookup("nope"); !errors.Is(err, ErrUnknownSecret) {
		t.Errorf("Lookup(nope) = %v, want ErrUnknownSecret", err)
	}
}
