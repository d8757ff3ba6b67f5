package activation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/internal/atomicfile"
)

// The confirmation handshake. The operator hands activate a random token
// on stdin; only its SHA-256 is stored (in state.json and the request
// file, both in the root-only RunDir). `confirm N` reads the token on
// stdin, checks it against the pending activation of generation N, and
// writes RunDir/confirm/<activation id> holding "N <token hash>". The
// worker polls for that file from the moment it starts (so a confirmation
// that arrives before the worker waits is kept), and accepts only content
// naming its own generation and token hash (so a file left by an earlier
// run, or a confirmation for another generation, never counts). Nothing is
// in a world-writable directory, and an unprivileged user can neither read
// the state, write a confirmation, nor take the lock.

// Token errors.
var (
	// ErrNotPending: no activation of that generation awaits confirmation.
	ErrNotPending = errors.New("no activation of this generation is pending")
	// ErrBadToken: the token does not match the pending activation's.
	ErrBadToken = errors.New("confirmation token does not match")
)

// HashToken returns the hex SHA-256 of a confirmation token.
func HashToken(token []byte) string {
	h := sha256.Sum256(bytes.TrimSpace(token))
	return hex.EncodeToString(h[:])
}

func (l Layout) confirmFile(id string) string { return filepath.Join(l.confirmDir(), id) }

func confirmContent(gen int, tokenHash string) []byte {
	return []byte(strconv.Itoa(gen) + " " + tokenHash + "\n")
}

// Confirm confirms the pending activation of generation gen with token. It
// returns [ErrNotPending] when no activation of gen is in progress, and
// [ErrBadToken] when token is not that activation's.
func (l Layout) Confirm(gen int, token []byte) (*ActivationState, error) {
	a, hash, err := l.pendingFor(gen, token, "confirm")
	if err != nil {
		return a, err
	}
	if err := atomicfile.Write(l.confirmFile(a.ID), confirmContent(gen, hash), 0o600); err != nil {
		return a, err
	}
	return a, nil
}

// Reject refuses the pending activation of generation gen with token: the
// operator's own check (check names it) failed for reason. The activation
// rolls back at once, as if its confirmation timed out, rather than when
// the timeout expires. Errors as for [Layout.Confirm].
func (l Layout) Reject(gen int, token []byte, check, reason string) (*ActivationState, error) {
	a, hash, err := l.pendingFor(gen, token, "reject")
	if err != nil {
		return a, err
	}
	content := append(confirmContent(gen, hash), []byte(oneLine(check)+"\n"+oneLine(reason)+"\n")...)
	if err := atomicfile.Write(l.rejectFile(a.ID), content, 0o600); err != nil {
		return a, err
	}
	return a, nil
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }

func (l Layout) rejectFile(id string) string { return l.confirmFile(id) + ".reject" }

// pendingFor returns the activation of generation gen that is in
// progress and whose token is token, with the token's hash.
func (l Layout) pendingFor(gen int, token []byte, verb string) (*ActivationState, string, error) {
	st, err := l.ReadState()
	if err != nil {
		return nil, "", err
	}
	a := st.Activation
	if a == nil || a.Generation != gen {
		return nil, "", fmt.Errorf("%s generation %d: %w", verb, gen, ErrNotPending)
	}
	switch a.Phase {
	case PhaseStarting, PhaseApplying, PhaseChecking, PhaseAwaiting:
	default:
		return a, "", fmt.Errorf("%s generation %d: activation %s is %s: %w", verb, gen, a.ID, a.Phase, ErrNotPending)
	}
	got := HashToken(token)
	if a.TokenHash == "" || subtle.ConstantTimeCompare([]byte(got), []byte(a.TokenHash)) != 1 {
		return a, "", fmt.Errorf("%s generation %d: %w", verb, gen, ErrBadToken)
	}
	return a, got, nil
}

// confirmed reports whether activation id of generation gen with the token
// hash was confirmed.
func (l Layout) confirmed(id string, gen int, tokenHash string) bool {
	data, err := os.ReadFile(l.confirmFile(id))
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(data, confirmContent(gen, tokenHash)) == 1
}

// RejectedError is the cause of a rollback that the operator asked for:
// its own check of the activation (a metric gate it evaluates) failed.
type RejectedError struct {
	Check  string // the check that failed
	Reason string // what the operator said (it names the check)
}

func (e *RejectedError) Error() string {
	return "the operator's health check failed: " + e.Reason
}

// rejected returns the operator's rejection of activation id of
// generation gen with the token hash, or nil.
func (l Layout) rejected(id string, gen int, tokenHash string) *RejectedError {
	data, err := os.ReadFile(l.rejectFile(id))
	if err != nil {
		return nil
	}
	head := confirmContent(gen, tokenHash)
	if len(data) < len(head) || subtle.ConstantTimeCompare(data[:len(head)], head) != 1 {
		return nil
	}
	check, reason, _ := strings.Cut(strings.TrimSuffix(string(data[len(head):]), "\n"), "\n")
	return &RejectedError{Check: check, Reason: reason}
}

// waitConfirmed polls for the confirmation until deadline, or until the
// operator rejects the activation (then it returns the rejection).
func (l Layout) waitConfirmed(ctx context.Context, id string, gen int, tokenHash string, deadline time.Time) (bool, *RejectedError) {
	for {
		if l.confirmed(id, gen, tokenHash) {
			return true, nil
		}
		if r := l.rejected(id, gen, tokenHash); r != nil {
			return false, r
		}
		if !time.Now().Before(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return l.confirmed(id, gen, tokenHash), nil
		case <-time.After(min(100*time.Millisecond, time.Until(deadline)+time.Millisecond)):
		}
	}
}

// ConfirmAndWait confirms the pending activation of generation gen with
// token (see [Layout.Confirm]) and waits up to wait for its result, which
// it returns. An activation that already ended (the confirmation came too
// late) returns its result with no error; logf says when the confirmation
// was recorded.
func (l Layout) ConfirmAndWait(ctx context.Context, gen int, token []byte, wait time.Duration, logf func(format string, args ...any)) (*Result, error) {
	return l.decideAndWait(ctx, gen, wait, logf, func() (*ActivationState, error) { return l.Confirm(gen, token) }, "confirmed")
}

// RejectAndWait rejects the pending activation of generation gen (see
// [Layout.Reject]) and waits up to wait for its result (rolled back).
func (l Layout) RejectAndWait(ctx context.Context, gen int, token []byte, check, reason string, wait time.Duration, logf func(format string, args ...any)) (*Result, error) {
	return l.decideAndWait(ctx, gen, wait, logf, func() (*ActivationState, error) { return l.Reject(gen, token, check, reason) }, "rejected")
}

func (l Layout) decideAndWait(ctx context.Context, gen int, wait time.Duration, logf func(format string, args ...any), decide func() (*ActivationState, error), what string) (*Result, error) {
	act, err := decide()
	if err != nil {
		if act != nil && errors.Is(err, ErrNotPending) {
			// Too late or not ours: report the real outcome if there is one.
			if res, _ := l.ReadResult(act.ID); res != nil {
				return res, nil
			}
		}
		return nil, err
	}
	if logf != nil {
		logf("generation %d %s; waiting for activation %s to finish", gen, what, act.ID)
	}
	deadline := time.Now().Add(wait)
	for {
		res, err := l.ReadResult(act.ID)
		if err != nil {
			return nil, err
		}
		if res != nil {
			return res, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("confirm: activation %s has no result after %v", act.ID, wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
