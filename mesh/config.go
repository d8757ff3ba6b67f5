package mesh

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
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

// sshConfig is a parsed ~/.ssh/config, or nil.
type sshConfig struct {
	cfg *ssh_config.Config
}

func (c *Config) loadSSHConfig() (*sshConfig, error) {
	path := c.SSHConfigFile
	explicit := path != ""
	switch {
	case path == "none":
		return &sshConfig{}, nil
	case path == "":
		h := c.home()
		if h == "" {
			return &sshConfig{}, nil
		}
		path = filepath.Join(h, ".ssh", "config")
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return &sshConfig{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ssh config: %w", err)
	}
	defer f.Close()
	cfg, err := ssh_config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("parse ssh config %q: %w", path, err)
	}
	return &sshConfig{cfg: cfg}, nil
}

// alias picks the one name that ~/.ssh/config is consulted with: the first
// candidate (Target.Name, then Target.Address) that a Host block other than
// a bare "Host *" matches, else the first non-empty candidate.
func (s *sshConfig) alias(candidates ...string) string {
	first := ""
	for _, a := range candidates {
		if a == "" {
			continue
		}
		if first == "" {
			first = a
		}
		if s.cfg == nil {
			continue
		}
		for _, h := range s.cfg.Hosts {
			if len(h.Patterns) == 1 && h.Patterns[0].String() == "*" {
				continue
			}
			if h.Matches(a) {
				return a
			}
		}
	}
	return first
}

// get returns the first value of key for alias, or "".
func (s *sshConfig) get(key, alias string) string {
	if s.cfg == nil || alias == "" {
		return ""
	}
	v, err := s.cfg.Get(alias, key)
	if err != nil {
		return ""
	}
	return v
}

func (s *sshConfig) getAll(key, alias string) []string {
	if s.cfg == nil || alias == "" {
		return nil
	}
	v, err := s.cfg.GetAll(alias, key)
	if err != nil {
		return nil
	}
	return v
}

// endpoint is one SSH server on the way to a target: a jump host or the
// target itself, after ~/.ssh/config resolution.
type endpoint struct {
	name          string   // for errors: the target's name, or the hop as written
	host          string   // address to dial
	port          int      //
	user          string   //
	hostKey       string   // pinned key, or "" for known_hosts
	identityFiles []string // from ~/.ssh/config, expanded
}

func (e *endpoint) addr() string { return net.JoinHostPort(e.host, strconv.Itoa(e.port)) }

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
	sc, err := c.loadSSHConfig()
	if err != nil {
		return nil, err
	}
	alias := sc.alias(t.Name, t.Address)
	target, err := c.resolveEndpoint(sc, name, t.Address, t.Port, t.User, alias)
	if err != nil {
		return nil, err
	}
	target.hostKey = t.HostKey
	r := &route{target: target}

	jump := t.ProxyJump
	if jump == "" {
		jump = sc.get("ProxyJump", alias)
	}
	if jump == "" || jump == "none" {
		return r, nil
	}
	for _, spec := range strings.Split(jump, ",") {
		spec = strings.TrimSpace(spec)
		user, host, port, err := parseHop(spec)
		if err != nil {
			return nil, fmt.Errorf("resolve proxy jump of %q: %w", name, err)
		}
		hop, err := c.resolveEndpoint(sc, spec, host, port, user, host)
		if err != nil {
			return nil, err
		}
		hop.hostKey = c.jumpHostKey(host, port, hop)
		r.jumps = append(r.jumps, hop)
	}
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

// resolveEndpoint applies ~/.ssh/config to one host: explicit values win,
// except that HostName overrides the address (as in OpenSSH).
func (c *Config) resolveEndpoint(sc *sshConfig, name, address string, port int, user string, alias string) (endpoint, error) {
	e := endpoint{name: name, host: address, port: port, user: user}
	if hn := sc.get("HostName", alias); hn != "" {
		e.host = strings.ReplaceAll(hn, "%h", alias)
	}
	if e.host == "" {
		e.host = alias
	}
	if e.port == 0 {
		if p := sc.get("Port", alias); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 || n > 65535 {
				return e, fmt.Errorf("resolve %q: ssh config Port %q is not a port number", name, p)
			}
			e.port = n
		} else {
			e.port = 22
		}
	}
	if e.user == "" {
		e.user = sc.get("User", alias)
	}
	if e.user == "" {
		e.user = "root"
	}
	for _, f := range sc.getAll("IdentityFile", alias) {
		e.identityFiles = append(e.identityFiles, c.expandPath(f, e, alias))
	}
	return e, nil
}

// expandPath expands ~ and the OpenSSH tokens %d (home), %h (host), %r
// (remote user), %u (local user) and %% in a path from ~/.ssh/config.
func (c *Config) expandPath(p string, e endpoint, alias string) string {
	home := c.home()
	if p == "~" {
		p = home
	} else if strings.HasPrefix(p, "~/") {
		p = filepath.Join(home, p[2:])
	}
	if !strings.Contains(p, "%") {
		return p
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
			b.WriteString(home)
		case 'h':
			b.WriteString(e.host)
		case 'n':
			b.WriteString(alias)
		case 'r':
			b.WriteString(e.user)
		case 'u':
			b.WriteString(c.getenv("USER"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(p[i])
		}
	}
	return b.String()
}

// parseHop parses one ProxyJump element, "[user@]host[:port]" with IPv6
// addresses in brackets. port is 0 when not given.
func parseHop(spec string) (user, host string, port int, err error) {
	if spec == "" {
		return "", "", 0, errors.New("empty jump host")
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
				return "", "", 0, fmt.Errorf("jump host %q: %w", spec, serr)
			}
			h, p = rest[1:len(rest)-1], ""
		}
		host = h
		if p != "" {
			n, perr := strconv.Atoi(p)
			if perr != nil || n <= 0 || n > 65535 {
				return "", "", 0, fmt.Errorf("jump host %q: bad port %q", spec, p)
			}
			port = n
		}
	}
	if host == "" {
		return "", "", 0, fmt.Errorf("jump host %q: no host", spec)
	}
	return user, host, port, nil
}
