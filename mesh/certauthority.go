package mesh

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
)

// certAlgorithms are the host certificate algorithms, in the order they are
// offered when a certificate authority is trusted for the host.
var certAlgorithms = []string{
	ssh.CertAlgoED25519v01,
	ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01, ssh.CertAlgoECDSA521v01,
	ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01,
}

// hasCertAuthority reports whether one of files has a @cert-authority line
// whose host patterns match addr ("host:port"). It decides only which host
// key algorithms are offered first (a server holding a certificate then
// presents it); whether the certificate is trusted is decided by the
// known_hosts callback, as for any key. The patterns are matched the way
// golang.org/x/crypto/ssh/knownhosts matches them: comma-separated,
// "*" and "?" wildcards, "!" negation, "[host]:port" for ports other than
// 22, and hashed "|1|salt|hash" entries.
func hasCertAuthority(files []string, addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 || fields[0] != "@cert-authority" {
				continue
			}
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(strings.Join(fields[2:], " "))); err != nil {
				continue
			}
			if hostPatternsMatch(fields[1], host, port) {
				return true
			}
		}
	}
	return false
}

// hostPatternsMatch matches a known_hosts host field against host and
// port: a hashed entry, or comma-separated patterns where a matching
// negated pattern wins.
func hostPatternsMatch(field, host, port string) bool {
	if strings.HasPrefix(field, "|") {
		parts := strings.Split(field, "|")
		if len(parts) != 4 || parts[1] != "1" {
			return false
		}
		salt, err1 := base64.StdEncoding.DecodeString(parts[2])
		want, err2 := base64.StdEncoding.DecodeString(parts[3])
		if err1 != nil || err2 != nil {
			return false
		}
		name := host
		if port != "22" {
			name = "[" + host + "]:" + port
		}
		mac := hmac.New(sha1.New, salt)
		mac.Write([]byte(name))
		return hmac.Equal(mac.Sum(nil), want)
	}
	matched := false
	for _, p := range strings.Split(field, ",") {
		negate := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		if p == "" {
			continue
		}
		ph, pp, err := net.SplitHostPort(p)
		if err != nil {
			if strings.HasPrefix(p, "[") {
				continue
			}
			ph, pp = p, "22"
		}
		if pp != port || !wildcardMatch(ph, host) {
			continue
		}
		if negate {
			return false
		}
		matched = true
	}
	return matched
}

// wildcardMatch matches s against a pattern of "*" (any run) and "?" (any
// one byte), without regard for separators (as OpenSSH's match_pattern).
func wildcardMatch(pat, s string) bool {
	for {
		if pat == "" {
			return s == ""
		}
		if pat[0] == '*' {
			if len(pat) == 1 {
				return true
			}
			for i := range len(s) + 1 {
				if wildcardMatch(pat[1:], s[i:]) {
					return true
				}
			}
			return false
		}
		if s == "" || (pat[0] != '?' && pat[0] != s[0]) {
			return false
		}
		pat, s = pat[1:], s[1:]
	}
}
