package mesh

import (
	"fmt"
	"strings"
)

// HostKeyError reports that a host presented a key other than the one it is
// known by: the pinned host_key, or its entries in known_hosts. It is a hard
// failure; nothing is sent to the host. It may mean the host was reinstalled,
// or that someone is intercepting the connection.
type HostKeyError struct {
	Host   string // the host's name (or jump host's address)
	Want   string // SHA256 fingerprint(s) of the expected key(s), comma-separated
	Got    string // SHA256 fingerprint of the key the host presented
	Source string // where Want came from: "pinned host key" or "FILE:LINE" of known_hosts
}

// Error names the host and both fingerprints.
func (e *HostKeyError) Error() string {
	return fmt.Sprintf("host key of %q changed: want %s (%s), got %s; refusing to connect (possible man-in-the-middle)",
		e.Host, e.Want, e.Source, e.Got)
}

// Hint suggests what an operator should do about the error.
func (e *HostKeyError) Hint() string {
	return "if the host was reinstalled, verify its new key out of band, then update its host_key (or known_hosts entry); otherwise this may be an attack"
}

// UnknownHostError reports that a host has no pinned key and no entry in
// known_hosts, and trust-on-first-use was not requested.
type UnknownHostError struct {
	Host        string // the host's name
	Address     string // the address looked up in known_hosts, "host" or "host:port"
	Fingerprint string // SHA256 fingerprint of the key the host presented
	// Scan is what `deploy keyscan` takes to reach the host as it was
	// reached: its ~/.ssh/config alias, or its address.
	Scan string
}

// Error names the host and the presented key's fingerprint.
func (e *UnknownHostError) Error() string {
	return fmt.Sprintf("host %q (%s) is unknown: no pinned host key and no known_hosts entry for key %s",
		e.Host, e.Address, e.Fingerprint)
}

// Hint suggests how to make the host known.
func (e *UnknownHostError) Hint() string {
	scan := e.Scan
	if scan == "" {
		scan = e.Address
	}
	return fmt.Sprintf("run `deploy keyscan %s`, verify the fingerprint out of band, then pin it as host_key "+
		"(or append the output of `deploy keyscan --known-hosts %s` to ~/.ssh/known_hosts)", scan, scan)
}

// RevokedHostKeyError reports that a host presented a key marked @revoked in
// known_hosts.
type RevokedHostKeyError struct {
	Host        string // the host's name
	Fingerprint string // SHA256 fingerprint of the revoked key
	Source      string // "FILE:LINE" of the @revoked entry
}

// Error names the host and the revoked key.
func (e *RevokedHostKeyError) Error() string {
	return fmt.Sprintf("host key of %q is revoked: %s (%s)", e.Host, e.Fingerprint, e.Source)
}

// Hint says what a revoked key means.
func (e *RevokedHostKeyError) Hint() string {
	return fmt.Sprintf("the host presents a key marked @revoked at %s: give the host a new key, verify it out of band and pin it as its host_key", e.Source)
}

// Phases of [UnreachableError].
const (
	PhaseDial      = "dial"       // no TCP connection (or jump-host channel)
	PhaseHandshake = "handshake"  // SSH key exchange failed or timed out
	PhaseAuth      = "auth"       // the host refused every key
	PhaseKeepalive = "keepalive"  // an established connection stopped answering
	PhaseRequest   = "request"    // the host did not answer a request (new session, exec) in time
	PhaseConn      = "connection" // an established connection was closed by the peer or the network
)

// UnreachableError reports that a host could not be reached, or stopped
// being reachable. Phase says at which step; see the Phase* constants.
type UnreachableError struct {
	Host  string
	Phase string
	Err   error
}

// Error names the host, the phase and the cause.
func (e *UnreachableError) Error() string {
	return fmt.Sprintf("reach %q: %s: %v", e.Host, e.Phase, e.Err)
}

// Unwrap returns the cause.
func (e *UnreachableError) Unwrap() error { return e.Err }

// ExitError reports that a remote command ran and exited unsuccessfully.
type ExitError struct {
	Host   string // the host's name
	Cmd    string // the command line as sent (shell-quoted, sudo wrapper excluded)
	Code   int    // exit status; -1 when killed by a signal
	Signal string // the signal's name ("KILL") when killed by one
	Stderr string // the last 64 KiB of the command's standard error
}

// Error names the command, the host, the exit status and the last lines of
// stderr.
func (e *ExitError) Error() string {
	what := fmt.Sprintf("exit status %d", e.Code)
	if e.Signal != "" {
		what = "killed by signal " + e.Signal
	}
	msg := fmt.Sprintf("run %q on %q: %s", e.Cmd, e.Host, what)
	if tail := lastLines(e.Stderr, 5, 1024); tail != "" {
		msg += ": " + tail
	}
	return msg
}

// lastLines returns at most n trailing lines of s, and at most max bytes,
// joined with " | " so the result fits on one line.
func lastLines(s string, n, max int) string {
	s = strings.TrimRight(s, "\n")
	if len(s) > max {
		s = s[len(s)-max:]
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, " | "))
}
