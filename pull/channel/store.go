package channel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/declarative/deploy/internal/atomicfile"
)

// Writer writes a channel's documents (keys relative to its root).
type Writer interface {
	Put(ctx context.Context, key string, data []byte) error
	String() string
}

// Cond is the condition of a [Store] write.
type Cond struct {
	// IfMatch: only when the object's ETag is this (S3 If-Match).
	IfMatch string
	// IfAbsent: only when there is no object (S3 If-None-Match: *).
	IfAbsent bool
}

// ErrConflict is a conditional write whose condition failed: someone
// wrote the object meanwhile (another publish, say).
var ErrConflict = errors.New("the object changed meanwhile")

// ErrDenied is a request the credentials are not allowed to make (S3's
// 403).
var ErrDenied = errors.New("access denied")

// Store is a channel as its publisher sees it: reads with ETags, and
// conditional writes, so that two publishes never take the same serial.
// The S3 implementation lives with the operator (package deploy, over
// s3cache); [DirStore] is a directory.
type Store interface {
	Writer
	// Read returns key's content and ETag; a missing key wraps
	// fs.ErrNotExist.
	Read(ctx context.Context, key string) ([]byte, string, error)
	// Write stores data at key if cond holds, else returns an error
	// wrapping [ErrConflict].
	Write(ctx context.Context, key string, data []byte, cond Cond) error
}

// DirStore is a channel in a directory (file:// URLs): ETags are the
// content's SHA-256, conditional writes hold a lock file.
type DirStore string

func (d DirStore) String() string { return "file://" + string(d) }

func (d DirStore) path(key string) (string, error) {
	if !fs.ValidPath(key) {
		return "", fmt.Errorf("channel key %q: %w", key, fs.ErrInvalid)
	}
	return filepath.Join(string(d), filepath.FromSlash(key)), nil
}

func etagOf(data []byte) string {
	sum := sha256.Sum256(data)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

// Read implements [Store].
func (d DirStore) Read(_ context.Context, key string) ([]byte, string, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, "", err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, "", err
	}
	return data, etagOf(data), nil
}

// Put implements [Writer]: an unconditional write.
func (d DirStore) Put(ctx context.Context, key string, data []byte) error {
	return d.Write(ctx, key, data, Cond{})
}

// Write implements [Store], atomically (temp file, fsync, rename).
func (d DirStore) Write(_ context.Context, key string, data []byte, cond Cond) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if cond != (Cond{}) {
		lock, err := os.OpenFile(filepath.Join(string(d), ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer lock.Close()
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
			return err
		}
		cur, err := os.ReadFile(p)
		switch {
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return err
		case cond.IfAbsent && err == nil:
			return fmt.Errorf("%s/%s exists: %w", d, key, ErrConflict)
		case cond.IfMatch != "" && (err != nil || etagOf(cur) != cond.IfMatch):
			return fmt.Errorf("%s/%s: %w", d, key, ErrConflict)
		}
	}
	return atomicfile.Write(p, data, 0o644)
}

// List implements [Lister]: the files under prefix, in order; none when
// its directory does not exist.
func (d DirStore) List(_ context.Context, prefix string, max int) ([]string, error) {
	p, err := d.path(strings.TrimSuffix(prefix, "/"))
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, e := range ents {
		if max > 0 && len(keys) == max {
			break
		}
		if e.Type().IsRegular() {
			keys = append(keys, prefix+e.Name())
		}
	}
	return keys, nil
}
