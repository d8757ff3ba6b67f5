package activation

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/atomicfile"
)

// Holder describes the process holding the activation lock.
type Holder = agentapi.Holder

// LockHeldError is returned when another activation holds the lock.
type LockHeldError struct {
	Holder *Holder // nil when the holder did not record itself yet
}

func (e *LockHeldError) Error() string {
	if e.Holder == nil {
		return "activation lock is held by another process"
	}
	return "activation lock is held by " + e.Holder.String()
}

// Lock is a held activation lock.
type Lock struct {
	f      *os.File
	holder string
}

func (l Layout) holderFile() string { return l.LockFile() + ".holder" }

// TryLock takes the activation lock without waiting (flock LOCK_EX|LOCK_NB
// on RunDir/lock) and records h as its holder. When another process holds
// it, it returns a *LockHeldError naming that holder.
func (l Layout) TryLock(h Holder) (*Lock, error) {
	if err := l.Init(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(l.LockFile(), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &LockHeldError{Holder: l.readHolder()}
		}
		return nil, fmt.Errorf("lock %q: %w", l.LockFile(), err)
	}
	data, _ := json.Marshal(h)
	if err := atomicfile.Write(l.holderFile(), data, 0o600); err != nil {
		f.Close()
		return nil, err
	}
	return &Lock{f: f, holder: l.holderFile()}, nil
}

// CheckLock reports a *LockHeldError when the lock is held, without
// taking it for longer than the check.
func (l Layout) CheckLock() error {
	f, err := os.OpenFile(l.LockFile(), os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return &LockHeldError{Holder: l.readHolder()}
		}
		return fmt.Errorf("lock %q: %w", l.LockFile(), err)
	}
	return nil // closing f releases it
}

func (l Layout) readHolder() *Holder {
	data, err := os.ReadFile(l.holderFile())
	if err != nil {
		return nil
	}
	h := &Holder{}
	if json.Unmarshal(data, h) != nil {
		return nil
	}
	return h
}

// Unlock releases the lock.
func (k *Lock) Unlock() error {
	if k == nil || k.f == nil {
		return nil
	}
	os.Remove(k.holder)
	err := k.f.Close()
	k.f = nil
	return err
}
