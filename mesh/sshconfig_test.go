package mesh

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// resolved is what both ssh -G and sshConfigFile.lookup say about a host,
// in ssh -G's spelling.
type resolved struct {
	HostName, User, Port                     string
	IdentityFiles, CertificateFiles          []string
	ProxyCommand, ProxyJump                  string
	IdentitiesOnly, IdentityAgent            string
	HostKeyAlias, StrictHostKeyChecking      string
	ConnectTimeout                           string
	ServerAliveInterval, ServerAliveCountMax string
}

// sshG runs the real OpenSSH client's `ssh -G` and parses its output.
func sshG(t *testing.T, file string, q sshQuery) resolved {
	t.Helper()
	args := []string{"-G", "-F", file}
	if q.user != "" {
		args = append(args, "-l", q.user)
	}
	if q.port != 0 {
		args = append(args, "-p", strconv.Itoa(q.port))
	}
	if q.jump != "" {
		args = append(args, "-J", q.jump)
	}
	args = append(args, q.alias)
	cmd := exec.Command("ssh", args...)
	cmd.Stdin = nil
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("ssh %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	var r resolved
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "hostname":
			r.HostName = v
		case "user":
			r.User = v
		case "port":
			r.Port = v
		case "identityfile":
			r.IdentityFiles = append(r.IdentityFiles, v)
		case "certificatefile":
			r.CertificateFiles = append(r.CertificateFiles, v)
		case "proxycommand":
			r.ProxyCommand = v
		case "proxyjump":
			r.ProxyJump = v
		case "identitiesonly":
			r.IdentitiesOnly = v
		case "identityagent":
			r.IdentityAgent = v
		case "hostkeyalias":
			r.HostKeyAlias = v
		case "stricthostkeychecking":
			r.StrictHostKeyChecking = v
		case "connecttimeout":
			r.ConnectTimeout = v
		case "serveraliveinterval":
			r.ServerAliveInterval = v
		case "serveralivecountmax":
			r.ServerAliveCountMax = v
		}
	}
	// Without any IdentityFile, ssh lists its defaults; mesh has its own
	// (documented) default list and reports none from the file.
	if len(r.IdentityFiles) > 0 && r.IdentityFiles[0] == "~/.ssh/id_rsa" && strings.HasPrefix(r.IdentityFiles[len(r.IdentityFiles)-1], "~/.ssh/id_dsa") {
		r.IdentityFiles = nil
	}
	return r
}

// ours renders lookup's options as ssh -G prints them.
func ours(o *sshOptions, alias, home string) resolved {
	num := func(n int, def string) string {
		if n < 0 {
			return def
		}
		return strconv.Itoa(n)
	}
	r := resolved{
		HostName: o.HostName, User: o.User, Port: strconv.Itoa(o.Port),
		IdentityFiles: o.IdentityFiles, CertificateFiles: o.CertificateFiles,
		ProxyCommand: o.ProxyCommand, ProxyJump: o.ProxyJump,
		IdentitiesOnly: o.IdentitiesOnly, IdentityAgent: o.IdentityAgent,
		HostKeyAlias: o.HostKeyAlias, StrictHostKeyChecking: o.StrictHostKeyChecking,
		ConnectTimeout:      num(o.ConnectTimeout, "none"),
		ServerAliveInterval: num(o.ServerAliveInterval, "0"),
		ServerAliveCountMax: num(o.ServerAliveCountMax, "3"),
	}
	if r.HostName == "" {
		r.HostName = strings.ToLower(alias)
	}
	if r.User == "" {
		r.User = defaultUser
	}
	if o.Port == 0 {
		r.Port = "22"
	}
	if r.ProxyCommand == "none" {
		r.ProxyCommand = ""
	}
	if r.ProxyJump == "none" {
		r.ProxyJump = ""
	}
	if r.IdentitiesOnly == "" {
		r.IdentitiesOnly = "no"
	}
	if r.ConnectTimeout == "0" {
		r.ConnectTimeout = "none"
	}
	if strings.HasPrefix(r.IdentityAgent, "~/") {
		r.IdentityAgent = filepath.Join(home, r.IdentityAgent[2:])
	}
	r.StrictHostKeyChecking = map[string]string{"": "ask", "yes": "true", "no": "false"}[o.StrictHostKeyChecking]
	if r.StrictHostKeyChecking == "" {
		r.StrictHostKeyChecking = o.StrictHostKeyChecking
	}
	return r
}

// sshConfigCases are host/config cases resolved by both mesh and ssh -G.
// DIR in a config is replaced by a temporary directory; files lists other
// files to create there (for Include).
var sshConfigCases = []struct {
	name  string
	conf  string
	files map[string]string
	q     sshQuery
}{
	{"host block", `
Host web1
    HostName 10.0.0.11
    User deployer
    Port 2222
    IdentityFile ~/.ssh/web_key
`, nil, sshQuery{alias: "web1"}},
	{"first value wins across blocks", `
Host web*
    User first
Host web1
    User second
    Port 2200
Host *
    User third
    Port 2201
    HostName %h.example.org
`, nil, sshQuery{alias: "web1"}},
	{"negated pattern skips the block", `
Host *.example !bad.example
    User good
Host *
    User fallback
`, nil, sshQuery{alias: "bad.example"}},
	{"negated pattern, other host", `
Host *.example !bad.example
    User good
`, nil, sshQuery{alias: "fine.example"}},
	{"command-line user and port win", `
Host db
    User ignored
    Port 2222
`, nil, sshQuery{alias: "db", user: "admin", port: 2022}},
	{"include glob, absolute", `
Include DIR/conf.d/*.conf
Host *
    User fallback
`, map[string]string{
		"conf.d/10-a.conf": "Host app\n    User from-a\n    Port 2001\n",
		"conf.d/20-b.conf": "Host app\n    User from-b\n    IdentityFile ~/.ssh/b\n",
	}, sshQuery{alias: "app"}},
	{"include inside a host block is conditional", `
Host other
    Include DIR/inner.conf
Host *
    ConnectTimeout 9
`, map[string]string{
		"inner.conf": "User inner\nConnectTimeout 3\n",
	}, sshQuery{alias: "app"}},
	{"include inside a matching host block", `
Host app
    Include DIR/inner.conf
Host *
    ConnectTimeout 9
`, map[string]string{
		"inner.conf": "User inner\nConnectTimeout 3\nHost nothing\nPort 1\n",
	}, sshQuery{alias: "app"}},
	{"include from a block that does not apply applies nowhere", `
Host other
    Include DIR/inner.conf
Host *
    Port 2200
`, map[string]string{
		"inner.conf": "Host app\n    User never\n    Port 1\nMatch all\n    User never2\n",
	}, sshQuery{alias: "app"}},
	{"keywords in any case, trailing comments, identity files accumulate", `
HOST acc
    hostname ACC.example # the name
    USER bob # a comment
    IdentityFile ~/.ssh/first
host a*
    identityfile ~/.ssh/second
    CertificateFile ~/.ssh/second-cert.pub
Host *
    IdentityFile ~/.ssh/third
`, nil, sshQuery{alias: "acc"}},
	{"match host sees HostName", `
Host short
    HostName Long.Internal.Example
Match host *.internal.example
    User internal
    ProxyJump bastion
Match originalhost long.internal.example
    User never
`, nil, sshQuery{alias: "short"}},
	{"match originalhost", `
Host short
    HostName long.internal.example
Match originalhost short
    User orig
    Port 2022
`, nil, sshQuery{alias: "short"}},
	{"match user, given on the command line", `
Match user deploy*
    IdentityFile ~/.ssh/deploy
    IdentitiesOnly yes
Match !user deploy*
    IdentityFile ~/.ssh/other
`, nil, sshQuery{alias: "h", user: "deployer"}},
	{"match user set earlier in the file", `
Host h
    User ops
Match user ops host h
    Port 2323
Match all
    ServerAliveInterval 7
    ServerAliveCountMax 4
`, nil, sshQuery{alias: "h"}},
	{"match pattern list with negation", `
Match host "*.prod,!db.prod"
    User prod
Match host db.prod
    User dba
`, nil, sshQuery{alias: "db.prod"}},
	{"proxycommand with tokens, then proxyjump ignored", `
Host pc
    HostName 192.0.2.7
    ProxyCommand /usr/bin/nc -w 5 %h %p # not a comment for ProxyCommand
    ProxyJump ignored
`, nil, sshQuery{alias: "pc"}},
	{"proxyjump first, then proxycommand ignored", `
Host pj
    ProxyJump admin@bastion:2200,jump2
Host *
    ProxyCommand ssh -W %h:%p gw
`, nil, sshQuery{alias: "pj"}},
	{"proxycommand none", `
Host pn
    ProxyCommand none
Host *
    ProxyCommand ssh -W %h:%p gw
`, nil, sshQuery{alias: "pn"}},
	{"identities, agent, certificates, alias", `
Host cert
    IdentitiesOnly yes
    IdentityAgent ~/.ssh/agent.sock
    IdentityFile ~/.ssh/id_user
    CertificateFile ~/.ssh/id_user-cert.pub
    CertificateFile ~/.ssh/other-cert.pub
    HostKeyAlias Cert-Alias
    StrictHostKeyChecking accept-new
`, nil, sshQuery{alias: "cert"}},
	{"strict checking and timeouts, = syntax and quotes", `
# a comment
Host "t1"
    StrictHostKeyChecking=no
    ConnectTimeout = 4
    ServerAliveInterval	15
    User "quoted user"
Host t1 t2
    StrictHostKeyChecking yes
`, nil, sshQuery{alias: "t1"}},
	{"strict yes", `
Host t1 t2
    StrictHostKeyChecking yes
    IdentitiesOnly no
`, nil, sshQuery{alias: "t2"}},
	{"command-line jump wins over the file", `
Host j
    ProxyJump other
    ProxyCommand nc %h %p
`, nil, sshQuery{alias: "j", jump: "cli-jump"}},
}

func TestSSHConfigAgainstOpenSSH(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("ssh (OpenSSH client) not installed")
		}
		t.Skip("ssh (OpenSSH client) not installed")
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range sshConfigCases {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			file := filepath.Join(dir, "config")
			if err := os.WriteFile(file, []byte(strings.ReplaceAll(tt.conf, "DIR", dir)), 0o644); err != nil {
				t.Fatal(err)
			}
			want := sshG(t, file, tt.q)
			o, err := (&sshConfigFile{path: file, home: u.HomeDir}).lookup(tt.q)
			if err != nil {
				t.Fatalf("lookup(%q) = %v", tt.q.alias, err)
			}
			got := ours(o, tt.q.alias, u.HomeDir)
			if got.User == defaultUser && want.User == u.Username && o.User == "" {
				// mesh defaults to root, ssh to the local user.
				want.User = defaultUser
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("lookup(%q) differs from ssh -G (-ssh +mesh):\n%s", tt.q.alias, d)
			}
		})
	}
}

func TestSSHConfigRefusals(t *testing.T) {
	tests := []struct {
		name, conf, want string
	}{
		{"match exec", "Match exec \"true\"\n  User x\n", `criterion "exec" of Match is not supported (supported: all, host, originalhost, user)`},
		{"match canonical", "Match canonical host x\n", `criterion "canonical" of Match is not supported`},
		{"match final", "Match final\n", `criterion "final" of Match is not supported`},
		{"match localuser", "Match localuser root\n", `criterion "localuser" of Match is not supported`},
		{"match localnetwork", "Match localnetwork 10.0.0.0/8\n", `criterion "localnetwork" of Match is not supported`},
		{"match tagged", "Match tagged x\n", `criterion "tagged" of Match is not supported`},
		{"match without argument", "Match host\n", `criterion "host" of Match needs an argument`},
		{"match all with more", "Match all host x\n", `"Match all" must appear alone`},
		{"bad port", "Host *\n  Port x\n", `bad Port "x": not a port number`},
		{"bad strict", "Host *\n  StrictHostKeyChecking maybe\n", `bad StrictHostKeyChecking "maybe"`},
		{"unterminated quote", "Host \"x\n", "unterminated quote"},
		{"include loop", "Include DIR/config\n", "Include nested more than 16 deep"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "config")
			if err := os.WriteFile(file, []byte(strings.ReplaceAll(tt.conf, "DIR", dir)), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := (&sshConfigFile{path: file, home: dir}).lookup(sshQuery{alias: "x"})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("lookup with %q = %v, want an error containing %q", tt.conf, err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), file) && tt.name != "include loop" {
				t.Errorf("error %q does not name the file %q", err, file)
			}
		})
	}
}

// TestSSHConfigIncludeRelative checks that a relative Include is read from
// ~/.ssh of Config's HOME (not the process's), which ssh -G cannot show
// without writing to the real home directory.
func TestSSHConfigIncludeRelative(t *testing.T) {
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".ssh", "conf.d"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte("Include conf.d/*\nInclude ~/extra\n"), 0o600)
	os.WriteFile(filepath.Join(home, ".ssh", "conf.d", "web"), []byte("Host web1\n  HostName 10.9.9.9\n  ProxyCommand nc %h %p\n"), 0o600)
	os.WriteFile(filepath.Join(home, "extra"), []byte("Host web1\n  User extra\n"), 0o600)
	cfg := &Config{Getenv: func(k string) string { return map[string]string{"HOME": home}[k] }}
	r, err := cfg.resolve(Target{Name: "web1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.target.host != "10.9.9.9" || r.target.user != "extra" || r.target.proxyCommand != "nc %h %p" {
		t.Errorf("resolve(web1) = host %q user %q proxy %q, want 10.9.9.9, extra, \"nc %%h %%p\"", r.target.host, r.target.user, r.target.proxyCommand)
	}
}

func TestExpandProxyCommand(t *testing.T) {
	cfg := &Config{Getenv: func(k string) string { return map[string]string{"HOME": "/home/op", "USER": "op"}[k] }}
	e := endpoint{host: "10.0.0.1", port: 2222, user: "deploy", alias: "web1"}
	got, err := cfg.expandTokens("ssh -W %h:%p -l %r %n %u %d 100%%", e, true)
	if want := "ssh -W 10.0.0.1:2222 -l deploy web1 op /home/op 100%"; err != nil || got != want {
		t.Errorf("expandTokens = %q, %v, want %q", got, err, want)
	}
	if _, err := cfg.expandTokens("nc %h %C", e, true); err == nil || !strings.Contains(err.Error(), "%C is not supported") {
		t.Errorf("expandTokens(%%C) = %v, want a refusal", err)
	}
}

// TestResolveOptions checks what resolve makes of the options beyond
// ssh -G's view: expansion, the agent socket, timeouts, the alias fallback
// to Target.Address, and ProxyCommand only on the first connection.
func TestResolveOptions(t *testing.T) {
	home := t.TempDir()
	conf := filepath.Join(home, "config")
	if err := os.WriteFile(conf, []byte(`
Host web1
    IdentityAgent ~/.ssh/agent-%r.sock
    CertificateFile ~/.ssh/%n-cert.pub
    IdentitiesOnly yes
    ConnectTimeout 3
    ServerAliveInterval 7
    ServerAliveCountMax 2
    HostKeyAlias Web-Alias
Host envagent
    IdentityAgent $MY_AGENT
Host noagent
    IdentityAgent none
Match host 10.7.*
    User matched
    ProxyCommand nc %h %p
Host viajump
    ProxyJump 10.7.0.1
Host zero
    ServerAliveInterval 0
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{SSHConfigFile: conf, Getenv: func(k string) string {
		return map[string]string{"HOME": home, "MY_AGENT": "/run/agent.sock", "SSH_AUTH_SOCK": "/default.sock"}[k]
	}}
	r, err := cfg.resolve(Target{Name: "web1", User: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	e := r.target
	if !e.agentSet || e.agentSocket != home+"/.ssh/agent-ops.sock" || !e.identitiesOnly ||
		e.connectTimeout.Seconds() != 3 || e.aliveInterval.Seconds() != 7 || e.aliveMax != 2 ||
		e.hostKeyAlias != "web-alias" || e.knownHostsName() != "web-alias:22" ||
		len(e.certificateFiles) != 1 || e.certificateFiles[0] != home+"/.ssh/web1-cert.pub" {
		t.Errorf("resolve(web1) = %+v", e)
	}
	if r, _ := cfg.resolve(Target{Name: "envagent"}); r.target.agentSocket != "/run/agent.sock" || !r.target.agentSet {
		t.Errorf("IdentityAgent $MY_AGENT: socket %q", r.target.agentSocket)
	}
	if r, _ := cfg.resolve(Target{Name: "noagent"}); r.target.agentSocket != "" || !r.target.agentSet {
		t.Errorf("IdentityAgent none: socket %q, set %v", r.target.agentSocket, r.target.agentSet)
	}
	if r, _ := cfg.resolve(Target{Name: "zero"}); r.target.aliveInterval != 0 {
		t.Errorf("ServerAliveInterval 0: interval %v, want mesh's default (0 here)", r.target.aliveInterval)
	}
	// No block matches the name, Match host matches the address.
	r, err = cfg.resolve(Target{Name: "db1", Address: "10.7.0.9"})
	if err != nil || r.target.user != "matched" || r.target.proxyCommand != "nc %h %p" || r.target.host != "10.7.0.9" {
		t.Errorf("resolve(db1 at 10.7.0.9) = %+v, %v; want user matched and the ProxyCommand", r.target, err)
	}
	// A jump host's own ProxyCommand is used to reach it; the target is
	// reached through the jump.
	r, err = cfg.resolve(Target{Name: "viajump"})
	if err != nil || len(r.jumps) != 1 || r.jumps[0].proxyCommand != "nc %h %p" || r.target.proxyCommand != "" {
		t.Errorf("resolve(viajump) = %+v, %v; want the jump host through its ProxyCommand", r, err)
	}
}
