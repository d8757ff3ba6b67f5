package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Dialer gets a raw connection to an address. [net.Dialer] satisfies it;
// vmtest provides one for test hosts in network namespaces, and a tailnet
// node provides one for hosts on a tailnet.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Target is one host to reach.
type Target struct {
	// Name is the host's name in the fleet. It appears in errors. It is the
	// name ~/.ssh/config is consulted with, unless no Host block (other than
	// "Host *") matches it and one matches Address: then Address is.
	Name string
	// Address is the host name or IP address to dial. A HostName in
	// ~/.ssh/config for Name overrides it.
	Address string
	// Port is the TCP port; 0 means ~/.ssh/config Port, else 22.
	Port int
	// User is the remote user; "" means ~/.ssh/config User, else "root".
	User string
	// HostKey pins the host's key in authorized_keys format
	// ("ssh-ed25519 AAAA..."). When set, it is the only key accepted and
	// known_hosts is not consulted. "" means known_hosts.
	HostKey string
	// ProxyJump lists jump hosts, "[user@]host[:port],..." as in OpenSSH;
	// "" means ~/.ssh/config ProxyJump, "none" means none. Each hop's key is
	// verified against Config.JumpHostKeys or known_hosts.
	ProxyJump string
	// Sudo runs every command (and the SFTP server) through sudo. The
	// password, when sudo asks for one, comes from Config.SudoPassword and
	// goes on the command's stdin, never on its command line.
	Sudo bool
}

// Config says how to authenticate and how to verify hosts. Its zero value is
// ready for use: ssh-agent via SSH_AUTH_SOCK, ~/.ssh/id_*, ~/.ssh/known_hosts
// and ~/.ssh/config. A Config must not be modified while it is in use.
type Config struct {
	// Dialer makes the first TCP connection; nil means a [net.Dialer].
	Dialer Dialer
	// IdentityFiles are extra private key files, tried first. A missing or
	// unreadable file here is an error (unlike the default ~/.ssh/id_*).
	IdentityFiles []string
	// KnownHostsFiles are the known_hosts files; nil means
	// ~/.ssh/known_hosts. Missing files are treated as empty. The first one
	// receives keys accepted by TrustOnFirstUse.
	KnownHostsFiles []string
	// SSHConfigFile is the OpenSSH client configuration to read; "" means
	// ~/.ssh/config (if it exists), "none" disables it.
	SSHConfigFile string
	// JumpHostKeys pins the keys of jump hosts (authorized_keys format),
	// looked up by "host:port" and then "host", as written in ProxyJump and
	// then as resolved through ~/.ssh/config. Hops without a pinned key are
	// verified against known_hosts.
	JumpHostKeys map[string]string
	// TrustOnFirstUse accepts the key of a host that is neither pinned nor
	// in known_hosts, and appends it to the first known_hosts file. Set it
	// only from an explicit operator flag. A changed key is never accepted.
	TrustOnFirstUse bool
	// KeepaliveInterval is how often an established connection is probed
	// with a keepalive@openssh.com request; 0 means 5s.
	KeepaliveInterval time.Duration
	// KeepaliveMax is how many intervals may pass without a reply before
	// the connection is declared dead and closed; 0 means 3.
	KeepaliveMax int
	// DialTimeout bounds each TCP connection (and jump-host channel); 0
	// means 10s.
	DialTimeout time.Duration
	// HandshakeTimeout bounds each SSH handshake including authentication;
	// 0 means 15s.
	HandshakeTimeout time.Duration
	// RequestTimeout bounds each request on an established connection that
	// waits for a reply (opening a session, exec, subsystem, the SFTP
	// handshake); 0 means 30s.
	RequestTimeout time.Duration
	// SudoPassword returns the sudo password of a host when sudo asks for
	// one. nil means the environment variable DEPLOY_SUDO_PASSWORD; when
	// that is empty too, sudo must not need a password (NOPASSWD).
	SudoPassword func(ctx context.Context, host string) (string, error)
	// Getenv reads the environment (HOME, SSH_AUTH_SOCK, USER,
	// DEPLOY_SUDO_PASSWORD); nil means [os.Getenv].
	Getenv func(string) string
	// Logf receives diagnostics; nil discards them. Keys and passwords are
	// never logged.
	Logf func(format string, args ...any)
	// Counts, if set, counts the connections made and the sessions opened
	// per target.
	Counts *Counts
}

func (c *Config) getenv(k string) string {
	if c.Getenv != nil {
		return c.Getenv(k)
	}
	return os.Getenv(k)
}

func (c *Config) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

func (c *Config) dialer() Dialer {
	if c.Dialer != nil {
		return c.Dialer
	}
	return &net.Dialer{}
}

func orDuration(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (c *Config) keepaliveInterval() time.Duration {
	return orDuration(c.KeepaliveInterval, 5*time.Second)
}
func (c *Config) dialTimeout() time.Duration { return orDuration(c.DialTimeout, 10*time.Second) }
func (c *Config) handshakeTimeout() time.Duration {
	return orDuration(c.HandshakeTimeout, 15*time.Second)
}
func (c *Config) requestTimeout() time.Duration { return orDuration(c.RequestTimeout, 30*time.Second) }

func (c *Config) keepaliveMax() int {
	if c.KeepaliveMax > 0 {
		return c.KeepaliveMax
	}
	return 3
}

// home is the operator's home directory, or "" if HOME is unset.
func (c *Config) home() string { return c.getenv("HOME") }

func (c *Config) knownHostsFiles() []string {
	if c.KnownHostsFiles != nil {
		return c.KnownHostsFiles
	}
	if h := c.home(); h != "" {
		return []string{filepath.Join(h, ".ssh", "known_hosts")}
	}
	return nil
}

// endpoint is one SSH server on the way to a target: a jump host or the
// target itself, after ~/.ssh/config resolution.
type endpoint struct {
	name             string   // for errors: the target's name, or the hop as written
	alias            string   // the name ~/.ssh/config was consulted with (%n)
	host             string   // address to dial
	port             int      //
	user             string   //
	hostKey          string   // pinned key, or "" for known_hosts
	identityFiles    []string // from ~/.ssh/config, expanded
	certificateFiles []string // from ~/.ssh/config, expanded
	identitiesOnly   bool     // IdentitiesOnly yes
	agentSet         bool     // IdentityAgent given: agentSocket replaces SSH_AUTH_SOCK
	agentSocket      string   // expanded IdentityAgent; "" for none
	hostKeyAlias     string   // HostKeyAlias: the name in known_hosts
	configured       bool     // a specific ~/.ssh/config block matched alias
	strict           string   // StrictHostKeyChecking as written, normalised
	proxyCommand     string   // ProxyCommand, tokens not yet expanded; "" for none
	connectTimeout   time.Duration
	aliveInterval    time.Duration
	aliveMax         int
}

func (e *endpoint) addr() string { return net.JoinHostPort(e.host, strconv.Itoa(e.port)) }

// scanName is what `deploy keyscan` (which reads ~/.ssh/config too) takes
// to reach the endpoint the same way: its alias when a ~/.ssh/config block
// says how to reach it, else its address (with the port unless 22).
func (e *endpoint) scanName() string {
	if e.configured {
		return e.alias
	}
	if e.port == 22 {
		return e.host
	}
	return e.addr()
}

// knownHostsName is the address the endpoint is looked up with in
// known_hosts ("host:port"): its HostKeyAlias (with port 22, so that
// known_hosts sees the bare alias, as OpenSSH records it), else its
// address.
func (e *endpoint) knownHostsName() string {
	if e.hostKeyAlias != "" {
		return net.JoinHostPort(e.hostKeyAlias, "22")
	}
	return e.addr()
}

// route is the resolved path to a target: the jumps, in order, then the
// target.
type route struct {
	jumps  []endpoint
	target endpoint
}

func (c *Config) resolve(t Target) (*route, error) {
	name := t.Name
	if name == "" {
		name = t.Address
	}
	if name == "" {
		return nil, errors.New("resolve target: neither name nor address given")
	}
	sc, err := c.sshConfigFor()
	if err != nil {
		return nil, err
	}
	q := sshQuery{alias: name, hostname: t.Address, user: t.User, port: t.Port, jump: t.ProxyJump}
	o, err := sc.lookup(q)
	if err != nil {
		return nil, err
	}
	if !o.specific && t.Address != "" && t.Address != name {
		q.alias = t.Address
		if oa, err := sc.lookup(q); err != nil {
			return nil, err
		} else if oa.specific {
			o = oa
		}
	}
	target, err := c.resolveEndpoint(o, name, t.Address, q.alias)
	if err != nil {
		return nil, err
	}
	target.hostKey = t.HostKey
	r := &route{target: target}

	jump := o.ProxyJump
	if jump == "" || jump == "none" {
		return r, nil
	}
	for _, spec := range strings.Split(jump, ",") {
		spec = strings.TrimSpace(spec)
		user, host, port, err := ParseHostSpec(spec)
		if err != nil {
			return nil, fmt.Errorf("resolve proxy jump of %q: %w", name, err)
		}
		ho, err := sc.lookup(sshQuery{alias: host, user: user, port: port})
		if err != nil {
			return nil, err
		}
		hop, err := c.resolveEndpoint(ho, spec, host, host)
		if err != nil {
			return nil, err
		}
		if len(r.jumps) > 0 {
			// Only the first hop is dialled by us; later hops are reached
			// through the previous one's direct-tcpip channel.
			hop.proxyCommand = ""
		}
		hop.hostKey = c.jumpHostKey(host, port, hop)
		r.jumps = append(r.jumps, hop)
	}
	// The target is reached through the jumps, never its own ProxyCommand
	// (ProxyJump and ProxyCommand exclude each other in OpenSSH too).
	r.target.proxyCommand = ""
	return r, nil
}

func (c *Config) jumpHostKey(host string, port int, hop endpoint) string {
	if len(c.JumpHostKeys) == 0 {
		return ""
	}
	p := port
	if p == 0 {
		p = hop.port
	}
	for _, k := range []string{
		net.JoinHostPort(host, strconv.Itoa(p)), host,
		hop.addr(), hop.host,
	} {
		if v, ok := c.JumpHostKeys[k]; ok {
			return v
		}
	}
	return ""
}

// resolveEndpoint turns the options of one host into an endpoint. Explicit
// values were put in the query and so already win; HostName overrides the
// address (as in OpenSSH).
func (c *Config) resolveEndpoint(o *sshOptions, name, address, alias string) (endpoint, error) {
	e := endpoint{name: name, alias: alias, host: address, port: o.Port, user: o.User}
	if o.HostName != "" {
		e.host = o.HostName
	}
	if e.host == "" {
		e.host = alias
	}
	if e.port == 0 {
		e.port = 22
	}
	if e.user == "" {
		e.user = defaultUser
	}
	for _, f := range o.IdentityFiles {
		e.identityFiles = append(e.identityFiles, c.expandPath(f, e, alias))
	}
	for _, f := range o.CertificateFiles {
		e.certificateFiles = append(e.certificateFiles, c.expandPath(f, e, alias))
	}
	e.identitiesOnly = o.IdentitiesOnly == "yes"
	switch a := o.IdentityAgent; {
	case a == "":
	case a == "none":
		e.agentSet = true
	case a == "SSH_AUTH_SOCK":
		e.agentSet, e.agentSocket = true, c.getenv("SSH_AUTH_SOCK")
	case strings.HasPrefix(a, "$"):
		e.agentSet, e.agentSocket = true, c.getenv(a[1:])
	default:
		e.agentSet, e.agentSocket = true, c.expandPath(a, e, alias)
	}
	e.hostKeyAlias = o.HostKeyAlias
	e.configured = o.specific
	e.strict = o.StrictHostKeyChecking
	if pc := o.ProxyCommand; pc != "" && pc != "none" {
		e.proxyCommand = pc
	}
	if o.ConnectTimeout > 0 {
		e.connectTimeout = time.Duration(o.ConnectTimeout) * time.Second
	}
	if o.ServerAliveInterval > 0 {
		e.aliveInterval = time.Duration(o.ServerAliveInterval) * time.Second
	}
	if o.ServerAliveCountMax > 0 {
		e.aliveMax = o.ServerAliveCountMax
	}
	return e, nil
}

// expandPath expands ~ and the OpenSSH tokens %d (home), %h (host), %n
// (the alias), %p (port), %r (remote user), %u (local user) and %% in a
// path from ~/.ssh/config. Other tokens are left as written.
func (c *Config) expandPath(p string, e endpoint, alias string) string {
	home := c.home()
	if p == "~" {
		p = home
	} else if strings.HasPrefix(p, "~/") {
		p = filepath.Join(home, p[2:])
	}
	e.alias = alias
	out, _ := c.expandTokens(p, e, false)
	return out
}

// expandTokens expands the tokens of expandPath; with strict, any other
// token is an error.
func (c *Config) expandTokens(p string, e endpoint, strict bool) (string, error) {
	if !strings.Contains(p, "%") {
		return p, nil
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '%' || i+1 == len(p) {
			b.WriteByte(p[i])
			continue
		}
		i++
		switch p[i] {
		case 'd':
			b.WriteString(c.home())
		case 'h':
			b.WriteString(e.host)
		case 'n':
			b.WriteString(e.alias)
		case 'p':
			b.WriteString(strconv.Itoa(e.port))
		case 'r':
			b.WriteString(e.user)
		case 'u':
			b.WriteString(c.getenv("USER"))
		case '%':
			b.WriteByte('%')
		default:
			if strict {
				return "", fmt.Errorf("token %%%c is not supported (supported: %%d %%h %%n %%p %%r %%u %%%%)", p[i])
			}
			b.WriteByte('%')
			b.WriteByte(p[i])
		}
	}
	return b.String(), nil
}

// ParseHostSpec parses "[user@]host[:port]", as hosts are named on
// command lines (deploy copy --to, deploy keyscan) and in ProxyJump: IPv6
// addresses in brackets when a port follows, a bare IPv6 address as the
// host. port is 0 when not given.
func ParseHostSpec(spec string) (user, host string, port int, err error) {
	if spec == "" {
		return "", "", 0, errors.New("empty host")
	}
	rest := spec
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		user, rest = rest[:i], rest[i+1:]
	}
	host = rest
	if strings.HasPrefix(rest, "[") || strings.Count(rest, ":") == 1 {
		h, p, serr := net.SplitHostPort(rest)
		if serr != nil {
			if !strings.HasPrefix(rest, "[") || !strings.HasSuffix(rest, "]") {
				return "", "", 0, fmt.Errorf("host %q: %w", spec, serr)
			}
			h, p = rest[1:len(rest)-1], ""
		}
		host = h
		if p != "" {
			n, perr := strconv.Atoi(p)
			if perr != nil || n <= 0 || n > 65535 {
				return "", "", 0, fmt.Errorf("host %q: bad port %q", spec, p)
			}
			port = n
		}
	}
	if host == "" {
		return "", "", 0, fmt.Errorf("host %q: no host", spec)
	}
	return user, host, port, nil
}
