package agentapi

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// RunLeaseFile holds a [RunLease]: the run lock kept for a run across a
// reboot it ordered (the lock itself lives in the run directory, which a
// boot empties).
func RunLeaseFile(stateDir string) string { return path.Join(orState(stateDir), "run-lease.json") }

// RunLease is the run lock kept for Holder's run until it takes the lock
// again after the reboot, or until Expires.
type RunLease struct {
	V       int       `json:"v"`
	Holder  RunHolder `json:"holder"`
	Expires time.Time `json:"expires"`
}

// Blocks reports whether the lease (nil: none) keeps the run lock from
// the run requesting it as me at now: it has not expired, and me is
// neither its run nor taking its run over.
func (l *RunLease) Blocks(me *RunHolder, now time.Time) bool {
	return l != nil && l.Holder.Run != me.Run && l.Holder.Run != me.TakeOver && now.Before(l.Expires)
}

// The run lock's conversation (`deploy-agent run-lock`, see [RunLockCmd]),
// one line at a time: the run writes its [RunHolder]
// ([WriteRunHolder]); the agent answers one [LockReply]
// ([WriteLockReply]); while the lock is held, the run writes
// [LockPing] lines at least once per lease and finally [LockRelease]. A
// run that stops writing, or whose stream ends, gives the lock up. The
// operator speaks it over SSH, pull mode over pipes inside the agent.
const (
	LockPing    = "ping"
	LockRelease = "release"
)

// maxLine bounds one line of the conversation.
const maxLine = 1 << 20

// WriteRunHolder writes the run's first line.
func WriteRunHolder(w io.Writer, h *RunHolder) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// ReadRunHolder reads the run's first line.
func ReadRunHolder(r *bufio.Reader) (*RunHolder, error) {
	line, err := readLine(r)
	if err != nil && line == "" {
		return nil, fmt.Errorf("run lock: reading the holder: %w", err)
	}
	h := &RunHolder{}
	if err := json.Unmarshal([]byte(line), h); err != nil || h.Run == "" {
		return nil, fmt.Errorf("run lock: the holder is not a run holder document: %q", line)
	}
	return h, nil
}

// WriteLockReply writes the agent's answer, in this version.
func WriteLockReply(w io.Writer, r *LockReply) error {
	r.V = Version
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// ReadLockReply reads the agent's answer. A reply of a newer version is a
// *[VersionError].
func ReadLockReply(r *bufio.Reader) (*LockReply, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	reply := &LockReply{}
	if err := Decode("run lock", []byte(line), reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// ReadLockRequest reads the run's next line after the reply: [LockPing],
// [LockRelease] or "" (a keepalive), trimmed; io.EOF when the stream ended.
func ReadLockRequest(r *bufio.Reader) (string, error) {
	line, err := readLine(r)
	if err != nil && line == "" {
		return "", err
	}
	return line, nil
}

// readLine reads one line, trimmed (a last line without a newline
// counts).
func readLine(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		chunk, isPrefix, err := r.ReadLine()
		b.Write(chunk)
		if b.Len() > maxLine {
			return "", errors.New("run lock: line too long")
		}
		if err != nil || !isPrefix {
			return strings.TrimSpace(b.String()), err
		}
	}
}
