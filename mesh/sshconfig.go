package mesh

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// This file reads ssh_config(5) the way OpenSSH's readconf.c does: lines
// are evaluated in order, Host and Match lines switch the following lines on
// or off, Include reads other files in place, and for each keyword the first
// value obtained wins (IdentityFile and CertificateFile accumulate).

// sshOptions are the ssh_config values of one host, unexpanded except for
// HostName (whose %h is expanded, as ssh -G shows it).
type sshOptions struct {
	HostName              string
	User                  string
	Port                  int // 0: not set
	IdentityFiles         []string
	CertificateFiles      []string
	ProxyCommand          string // "none" kept as written
	ProxyJump             string // "none" kept as written
	IdentitiesOnly        string // "yes", "no" or ""
	IdentityAgent         string
	HostKeyAlias          string
	StrictHostKeyChecking string // "yes", "ask", "accept-new", "no" or ""
	ConnectTimeout        int    // seconds; -1: not set
	ServerAliveInterval   int    // seconds; -1: not set
	ServerAliveCountMax   int    // -1: not set

	// specific is whether a Host line other than a bare "*", or a Match
	// line with a host or originalhost criterion, matched.
	specific bool
}

// sshConfigFile is an ssh_config file to evaluate; path "" means none.
type sshConfigFile struct {
	path string
	home string // for ~ and for relative Include paths (~/.ssh)
}

// sshQuery is what a host is looked up with: the alias as written (the
// "host" OpenSSH is given) and the values fixed before the file is read,
// which win as command-line options do.
type sshQuery struct {
	alias string
	// hostname is the address the Target gives ("" if none): what Match
	// host sees until a HostName line sets one, since the fleet's address
	// plays HostName's part.
	hostname string
	user     string // explicit user ("" if none): Match user sees it
	port     int    // explicit port (0 if none)
	jump     string // explicit ProxyJump ("" if none)
}

// maxIncludeDepth is OpenSSH's READCONF_MAX_DEPTH.
const maxIncludeDepth = 16

// supportedMatch lists the Match criteria that are evaluated; every other
// criterion is refused with an error.
const supportedMatch = "all, host, originalhost, user"

// lookup evaluates the file for q.
func (f *sshConfigFile) lookup(q sshQuery) (*sshOptions, error) {
	o := &sshOptions{User: q.user, Port: q.port, ProxyJump: q.jump,
		ConnectTimeout: -1, ServerAliveInterval: -1, ServerAliveCountMax: -1}
	if f.path != "" {
		active := true
		if err := f.read(f.path, q, o, &active, false, 0); err != nil {
			return nil, err
		}
	}
	// ssh lowercases the host name and the host key alias.
	if o.HostName != "" {
		o.HostName = strings.ToLower(expandPercentH(o.HostName, q.alias))
	}
	o.HostKeyAlias = strings.ToLower(o.HostKeyAlias)
	return o, nil
}

// expandPercentH expands %h and %% as OpenSSH does for HostName.
func expandPercentH(s, host string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+1 < len(s) {
			switch s[i+1] {
			case 'h':
				b.WriteString(host)
				i++
				continue
			case '%':
				b.WriteByte('%')
				i++
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// read evaluates one file. With neverMatch (a file included from a block
// that does not apply: OpenSSH's SSHCONF_NEVERMATCH) no Host or Match line
// in it applies.
func (f *sshConfigFile) read(path string, q sshQuery, o *sshOptions, active *bool, neverMatch bool, depth int) error {
	if depth > maxIncludeDepth {
		return fmt.Errorf("ssh config %q: Include nested more than %d deep", path, maxIncludeDepth)
	}
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read ssh config: %w", err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		where := fmt.Sprintf("%s:%d", path, line)
		args, err := splitConfigLine(sc.Text())
		if err != nil {
			return fmt.Errorf("ssh config %s: %w", where, err)
		}
		if len(args) == 0 {
			continue
		}
		key := strings.ToLower(args[0])
		vals := args[1:]
		switch key {
		case "host":
			if len(vals) == 0 {
				return fmt.Errorf("ssh config %s: Host without patterns", where)
			}
			*active = !neverMatch && hostLineMatches(vals, q.alias, o)
			continue
		case "match":
			m, err := f.matchLine(vals, q, o)
			if err != nil {
				return fmt.Errorf("ssh config %s: %w", where, err)
			}
			*active = m && !neverMatch
			continue
		case "include":
			if len(vals) == 0 {
				return fmt.Errorf("ssh config %s: Include without a file", where)
			}
			for _, pat := range vals {
				if err := f.include(pat, q, o, *active, neverMatch, depth); err != nil {
					return err
				}
			}
			continue
		}
		if !*active {
			continue
		}
		if err := o.set(key, vals); err != nil {
			return fmt.Errorf("ssh config %s: %w", where, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read ssh config %q: %w", path, err)
	}
	return nil
}

// include reads the files matching pat in place. Relative paths are under
// ~/.ssh, as for a user's configuration. The included files start in the
// includer's state, and the includer's state is restored after them (as
// OpenSSH does), so a Host line in an included file does not leak out; a
// file included from a block that does not apply applies nowhere.
func (f *sshConfigFile) include(pat string, q sshQuery, o *sshOptions, active, neverMatch bool, depth int) error {
	switch {
	case pat == "~" || strings.HasPrefix(pat, "~/"):
		pat = filepath.Join(f.home, pat[1:])
	case !filepath.IsAbs(pat):
		pat = filepath.Join(f.home, ".ssh", pat)
	}
	paths, err := filepath.Glob(pat)
	if err != nil {
		return fmt.Errorf("ssh config Include %q: %w", pat, err)
	}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			continue
		}
		a := active
		if err := f.read(p, q, o, &a, neverMatch || !active, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// hostLineMatches is a Host line: some pattern matches the alias and no
// negated one does.
func hostLineMatches(patterns []string, alias string, o *sshOptions) bool {
	matched, specific := false, false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		if neg {
			p = p[1:]
		}
		if !wildcardMatch(p, alias) {
			continue
		}
		if neg {
			return false
		}
		matched = true
		if p != "*" {
			specific = true
		}
	}
	if matched && specific {
		o.specific = true
	}
	return matched
}

// matchLine evaluates a Match line: every criterion must hold.
func (f *sshConfigFile) matchLine(vals []string, q sshQuery, o *sshOptions) (bool, error) {
	if len(vals) == 0 {
		return false, errors.New("no criteria after Match")
	}
	result, specific := true, false
	for i := 0; i < len(vals); i++ {
		crit := strings.ToLower(vals[i])
		neg := strings.HasPrefix(crit, "!")
		if neg {
			crit = crit[1:]
		}
		if crit == "all" {
			if len(vals) != 1 {
				return false, errors.New(`"Match all" must appear alone`)
			}
			return !neg, nil
		}
		switch crit {
		case "host", "originalhost", "user":
		default:
			return false, fmt.Errorf("criterion %q of Match is not supported (supported: %s)", vals[i], supportedMatch)
		}
		if i+1 == len(vals) {
			return false, fmt.Errorf("criterion %q of Match needs an argument", crit)
		}
		i++
		arg := vals[i]
		var ok bool
		switch crit {
		case "host":
			host := q.alias
			if q.hostname != "" {
				host = q.hostname
			}
			if o.HostName != "" {
				host = expandPercentH(o.HostName, q.alias)
			}
			ok = patternListMatches(strings.ToLower(host), strings.ToLower(arg))
			specific = true
		case "originalhost":
			ok = patternListMatches(strings.ToLower(q.alias), strings.ToLower(arg))
			specific = true
		case "user":
			user := o.User
			if user == "" {
				user = defaultUser
			}
			ok = patternListMatches(user, arg)
		}
		if ok == neg {
			result = false
		}
	}
	if result && specific {
		o.specific = true
	}
	return result, nil
}

// defaultUser is the remote user when neither the target nor ssh_config
// names one. OpenSSH uses the local user name instead.
const defaultUser = "root"

// patternListMatches is OpenSSH's match_pattern_list: a comma-separated list
// of patterns, matching if one matches and no negated one does.
func patternListMatches(s, list string) bool {
	matched := false
	for _, p := range strings.Split(list, ",") {
		neg := strings.HasPrefix(p, "!")
		if neg {
			p = p[1:]
		}
		if wildcardMatch(p, s) {
			if neg {
				return false
			}
			matched = true
		}
	}
	return matched
}

// set records one keyword's value unless an earlier one was obtained.
// Keywords mesh does not use are ignored.
func (o *sshOptions) set(key string, vals []string) error {
	one := func() (string, error) {
		if len(vals) != 1 {
			return "", fmt.Errorf("%s takes one argument, got %d", key, len(vals))
		}
		return vals[0], nil
	}
	str := func(dst *string) error {
		v, err := one()
		if err == nil && *dst == "" {
			*dst = v
		}
		return err
	}
	num := func(dst *int) error {
		v, err := one()
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%s %q is not a number of seconds", key, v)
		}
		if *dst < 0 {
			*dst = n
		}
		return nil
	}
	switch key {
	case "hostname":
		return str(&o.HostName)
	case "user":
		return str(&o.User)
	case "port":
		v, err := one()
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 65535 {
			return fmt.Errorf("bad Port %q: not a port number", v)
		}
		if o.Port == 0 {
			o.Port = n
		}
	case "identityfile":
		v, err := one()
		if err != nil {
			return err
		}
		o.IdentityFiles = append(o.IdentityFiles, v)
	case "certificatefile":
		v, err := one()
		if err != nil {
			return err
		}
		o.CertificateFiles = append(o.CertificateFiles, v)
	case "proxycommand":
		// The rest of the line is the command, as OpenSSH takes it.
		if len(vals) == 0 {
			return errors.New("no command after ProxyCommand")
		}
		if o.ProxyCommand == "" && o.ProxyJump == "" {
			o.ProxyCommand = strings.Join(vals, " ")
		}
	case "proxyjump":
		// ProxyJump and ProxyCommand exclude each other: the first wins.
		if o.ProxyCommand == "" {
			return str(&o.ProxyJump)
		}
		_, err := one()
		return err
	case "identitiesonly":
		v, err := one()
		if err != nil {
			return err
		}
		b, err := parseYesNo(key, v)
		if err != nil {
			return err
		}
		if o.IdentitiesOnly == "" {
			o.IdentitiesOnly = b
		}
	case "identityagent":
		return str(&o.IdentityAgent)
	case "hostkeyalias":
		return str(&o.HostKeyAlias)
	case "stricthostkeychecking":
		v, err := one()
		if err != nil {
			return err
		}
		var s string
		switch strings.ToLower(v) {
		case "yes", "true":
			s = "yes"
		case "no", "false", "off":
			s = "no"
		case "ask":
			s = "ask"
		case "accept-new":
			s = "accept-new"
		default:
			return fmt.Errorf("bad StrictHostKeyChecking %q: want yes, ask, accept-new or no", v)
		}
		if o.StrictHostKeyChecking == "" {
			o.StrictHostKeyChecking = s
		}
	case "connecttimeout":
		v, err := one()
		if err != nil {
			return err
		}
		if strings.EqualFold(v, "none") {
			if o.ConnectTimeout < 0 {
				o.ConnectTimeout = 0
			}
			return nil
		}
		return num(&o.ConnectTimeout)
	case "serveraliveinterval":
		return num(&o.ServerAliveInterval)
	case "serveralivecountmax":
		return num(&o.ServerAliveCountMax)
	}
	return nil
}

func parseYesNo(key, v string) (string, error) {
	switch strings.ToLower(v) {
	case "yes", "true":
		return "yes", nil
	case "no", "false":
		return "no", nil
	}
	return "", fmt.Errorf("%s %q: want yes or no", key, v)
}

// splitConfigLine splits one line into a keyword and its arguments as
// OpenSSH does: blanks separate words, a keyword may be followed by "=",
// double or single quotes group, "#" at the start of a word starts a
// comment.
func splitConfigLine(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" || s[0] == '#' {
		return nil, nil
	}
	// Keyword, then optional blanks, "=", blanks.
	end := strings.IndexAny(s, " \t=")
	if end < 0 {
		return []string{s}, nil
	}
	key := s[:end]
	rest := strings.TrimLeft(s[end:], " \t")
	if strings.HasPrefix(rest, "=") {
		rest = strings.TrimLeft(rest[1:], " \t")
	}
	out := []string{key}
	if strings.EqualFold(key, "proxycommand") {
		// OpenSSH keeps the rest of the line, quotes and all.
		if rest != "" {
			out = append(out, rest)
		}
		return out, nil
	}
	var cur strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
				continue
			}
			cur.WriteByte(c)
		case c == '"' || c == '\'':
			quote = c
			inWord = true
		case c == '\\' && i+1 < len(rest):
			i++
			cur.WriteByte(rest[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			i = len(rest)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// sshConfigFor returns the file to evaluate, or one with no path.
func (c *Config) sshConfigFor() (*sshConfigFile, error) {
	f := &sshConfigFile{home: c.home()}
	switch c.SSHConfigFile {
	case "none":
		return f, nil
	case "":
		if f.home == "" {
			return f, nil
		}
		p := filepath.Join(f.home, ".ssh", "config")
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return f, nil
		}
		f.path = p
	default:
		if _, err := os.Stat(c.SSHConfigFile); err != nil {
			return nil, fmt.Errorf("read ssh config: %w", err)
		}
		f.path = c.SSHConfigFile
	}
	return f, nil
}
