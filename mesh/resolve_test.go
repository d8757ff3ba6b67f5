package mesh

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestShellQuote(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"echo", "hello"}, "echo hello"},
		{[]string{"a b"}, "'a b'"},
		{[]string{"it's"}, `'it'\''s'`},
		{[]string{""}, "''"},
		{[]string{"$HOME", "*", "a;b"}, "'$HOME' '*' 'a;b'"},
		{[]string{"/usr/bin/env", "K=v", "--flag=x,y", "user@host:1"}, "/usr/bin/env K=v --flag=x,y user@host:1"},
	}
	for _, tt := range tests {
		if got := ShellQuote(tt.args); got != tt.want {
			t.Errorf("ShellQuote(%q) = %q, want %q", tt.args, got, tt.want)
		}
	}
}

func TestParseHostSpec(t *testing.T) {
	tests := []struct {
		spec       string
		user, host string
		port       int
		wantErr    bool
	}{
		{"bastion", "", "bastion", 0, false},
		{"admin@bastion", "admin", "bastion", 0, false},
		{"admin@bastion:2222", "admin", "bastion", 2222, false},
		{"[2001:db8::1]:22", "", "2001:db8::1", 22, false},
		{"u@[2001:db8::1]", "u", "2001:db8::1", 0, false},
		{"2001:db8::1", "", "2001:db8::1", 0, false},
		{"a@b@host", "a@b", "host", 0, false},
		{"host:0", "", "", 0, true},
		{"host:x", "", "", 0, true},
		{"", "", "", 0, true},
		{"user@", "", "", 0, true},
	}
	for _, tt := range tests {
		user, host, port, err := ParseHostSpec(tt.spec)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseHostSpec(%q) = %q, %q, %d, want an error", tt.spec, user, host, port)
			}
			continue
		}
		if err != nil || user != tt.user || host != tt.host || port != tt.port {
			t.Errorf("ParseHostSpec(%q) = %q, %q, %d, %v; want %q, %q, %d", tt.spec, user, host, port, err, tt.user, tt.host, tt.port)
		}
	}
}

func TestResolve(t *testing.T) {
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := `
Host web1
    HostName 10.0.0.11
    User deployer
    Port 2222
    IdentityFile ~/.ssh/web_key
    ProxyJump jump1

Host 10.1.*
    User ops
    IdentityFile %d/.ssh/%r-%h

Host jump1
    HostName bastion.example
    User jumper

Host *
    User fallback
`
	if err := os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Getenv: func(k string) string {
		return map[string]string{"HOME": home, "USER": "me"}[k]
	}}
	type ep struct {
		Name, Host string
		Port       int
		User       string
		Keys       []string
	}
	conv := func(e endpoint) ep { return ep{e.name, e.host, e.port, e.user, e.identityFiles} }
	tests := []struct {
		name   string
		target Target
		want   []ep // jumps, then target
	}{
		{"by name", Target{Name: "web1", Address: "ignored"}, []ep{
			{"jump1", "bastion.example", 22, "jumper", nil},
			{"web1", "10.0.0.11", 2222, "deployer", []string{home + "/.ssh/web_key"}},
		}},
		{"target values win but HostName does not", Target{Name: "web1", Address: "1.2.3.4", Port: 22, User: "root", ProxyJump: "none"}, []ep{
			{"web1", "10.0.0.11", 22, "root", []string{home + "/.ssh/web_key"}},
		}},
		{"by address pattern", Target{Name: "db1", Address: "10.1.2.3"}, []ep{
			{"db1", "10.1.2.3", 22, "ops", []string{home + "/.ssh/ops-10.1.2.3"}},
		}},
		{"catch-all only", Target{Name: "other", Address: "192.0.2.1"}, []ep{
			{"other", "192.0.2.1", 22, "fallback", nil},
		}},
		{"explicit jumps", Target{Name: "x", Address: "192.0.2.1", User: "root", ProxyJump: "a@j1:2200,jump1"}, []ep{
			{"a@j1:2200", "j1", 2200, "a", nil},
			{"jump1", "bastion.example", 22, "jumper", nil},
			{"x", "192.0.2.1", 22, "root", nil},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := cfg.resolve(tt.target)
			if err != nil {
				t.Fatalf("resolve(%+v) = %v", tt.target, err)
			}
			var got []ep
			for _, j := range r.jumps {
				got = append(got, conv(j))
			}
			got = append(got, conv(r.target))
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("resolve(%+v) mismatch (-want +got):\n%s", tt.target, d)
			}
		})
	}

	none := *cfg
	none.SSHConfigFile = "none"
	r, err := none.resolve(Target{Name: "web1"})
	if err != nil || fmt.Sprint(conv(r.target)) != fmt.Sprint(ep{"web1", "web1", 22, "root", nil}) {
		t.Errorf("resolve(web1) without ssh config = %+v, %v; want web1:22 as root", r, err)
	}
	missing := *cfg
	missing.SSHConfigFile = filepath.Join(home, "absent")
	if _, err := missing.resolve(Target{Name: "web1"}); err == nil {
		t.Errorf("resolve with a missing explicit SSHConfigFile succeeded, want an error")
	}
}
