package agentclient

import (
	"errors"
	"slices"
	"sync"

	"github.com/declarative/deploy/mesh"
)

// Kind is what an error of a client's operation means for its host: the
// one classification behind every host's result and the CLI's exit codes.
type Kind int

// The kinds of [Classify].
const (
	// KindOther is an error the client does not know (a query's command
	// that failed, an unreadable answer): the caller decides.
	KindOther Kind = iota
	// KindUnreachable: the host could not be reached, the connection broke,
	// or a copy failed; trying again may help.
	KindUnreachable
	// KindHostKey: the host's key is unknown, changed or revoked. The
	// host counts as unreachable, but no retry helps: a person must look.
	KindHostKey
	// KindLocked: another run holds the host's run lock, or another
	// activation its activation lock.
	KindLocked
	// KindRolledBack: the activation failed or was not confirmed, and the
	// host runs its previous generation again.
	KindRolledBack
	// KindFailed: the activation (or rollback) failed and the host could
	// not, or did not say that it could, return to its previous state.
	KindFailed
)

func (k Kind) String() string {
	switch k {
	case KindUnreachable:
		return "unreachable"
	case KindHostKey:
		return "host key"
	case KindLocked:
		return "locked"
	case KindRolledBack:
		return "rolled back"
	case KindFailed:
		return "failed"
	}
	return "other"
}

// Classify says what err, from any operation of a [Client] or from
// package mesh, means for the host.
func Classify(err error) Kind {
	var (
		hke  *mesh.HostKeyError
		uhe  *mesh.UnknownHostError
		rke  *mesh.RevokedHostKeyError
		ue   *mesh.UnreachableError
		rb   *RolledBackError
		rbe  *RebootedError
		lh   *LockHeldError
		ll   *LockLostError
		ae   *ActivationError
		ce   *CopyError
		kerr *KindError
	)
	switch {
	case err == nil:
		return KindOther
	case errors.As(err, &kerr):
		return kerr.Kind
	// The host's key first: a copy or an activation that failed on it
	// wraps it.
	case errors.As(err, &hke), errors.As(err, &uhe), errors.As(err, &rke):
		return KindHostKey
	case errors.As(err, &rb), errors.As(err, &rbe):
		return KindRolledBack
	case errors.As(err, &lh), errors.As(err, &ll):
		return KindLocked
	case errors.As(err, &ae):
		return KindFailed
	case errors.As(err, &ue), errors.As(err, &ce):
		return KindUnreachable
	}
	return KindOther
}

// Hint is what the operator can do about err, when something can be said:
// how to make an unknown host known, what a changed or revoked key means.
func Hint(err error) string {
	var (
		uhe *mesh.UnknownHostError
		hke *mesh.HostKeyError
		rke *mesh.RevokedHostKeyError
	)
	switch {
	case errors.As(err, &uhe):
		return uhe.Hint()
	case errors.As(err, &hke):
		return hke.Hint()
	case errors.As(err, &rke):
		return rke.Hint()
	}
	return ""
}

// KindError gives an error a [Kind] of the caller's choosing (a fleet's
// host operations that are not a Client use it).
type KindError struct {
	Kind    Kind
	Err     error
	LogTail []string
}

func (e *KindError) Error() string { return e.Err.Error() }
func (e *KindError) Unwrap() error { return e.Err }

// LogTail returns the last lines of the host's log that err carries (an
// activation's, a copy's agent), if any.
func LogTail(err error) []string {
	var (
		rb   *RolledBackError
		ae   *ActivationError
		kerr *KindError
	)
	switch {
	case errors.As(err, &kerr) && kerr.LogTail != nil:
		return kerr.LogTail
	case errors.As(err, &rb):
		return rb.LogTail
	case errors.As(err, &ae):
		return ae.LogTail
	}
	return nil
}

// withTail records tail in the activation errors of err.
func withTail(err error, tail []string) error {
	var rb *RolledBackError
	var ae *ActivationError
	switch {
	case errors.As(err, &rb):
		rb.LogTail = tail
	case errors.As(err, &ae):
		ae.LogTail = tail
	case err != nil && len(tail) > 0:
		var ue *mesh.UnreachableError
		if errors.As(err, &ue) {
			return &KindError{Kind: KindUnreachable, Err: err, LogTail: tail}
		}
	}
	return err
}

// lineTail keeps the last max lines.
type lineTail struct {
	mu  sync.Mutex
	max int
	buf []string
}

func (t *lineTail) add(l string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, l)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
}

func (t *lineTail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.buf)
}
