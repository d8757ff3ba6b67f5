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
	st, err := l.ReadState()
	if err != nil {
		return nil, err
	}
	a := st.Activation
	if a == nil || a.Generation != gen {
		return nil, fmt.Errorf("confirm generation %d: %w", gen, ErrNotPending)
	}
	switch a.Phase {
	case PhaseStarting, PhaseApplying, PhaseChecking, PhaseAwaiting:
	default:
		return a, fmt.Errorf("confirm generation %d: activation %s is %s: %w", gen, a.ID, a.Phase, ErrNotPending)
	}
	got := HashToken(token)
	if a.TokenHash == "" || subtle.ConstantTimeCompare([]byte(got), []byte(a.TokenHash)) != 1 {
		return a, fmt.Errorf("confirm generation %d: %w", gen, ErrBadToken)
	}
	if err := atomicfile.Write(l.confirmFile(a.ID), confirmContent(gen, got), 0o600); err != nil {
		return a, err
	}
	return a, nil
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

// waitConfirmed polls for the confirmation until deadline.
func (l Layout) waitConfirmed(ctx context.Context, id string, gen int, tokenHash string, deadline time.Time) bool {
	for {
		if l.confirmed(id, gen, tokenHash) {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return l.confirmed(id, gen, tokenHash)
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
	act, err := l.Confirm(gen, token)
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
		logf("generation %d confirmed; waiting for activation %s to finish", gen, act.ID)
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
