package closure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/declarative/deploy/closure/nar"
	"github.com/declarative/deploy/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// HashMismatchError reports content that does not match its declared NAR
// hash or size.
type HashMismatchError struct {
	Path              string
	WantHash, GotHash [32]byte
	WantSize, GotSize int64
}

func (e *HashMismatchError) Error() string {
	if e.WantSize != e.GotSize {
		return fmt.Sprintf("store: %q: NAR size %d, declared %d", e.Path, e.GotSize, e.WantSize)
	}
	return fmt.Sprintf("store: %q: NAR hash sha256:%s, declared sha256:%s", e.Path, Nix32(e.GotHash[:]), Nix32(e.WantHash[:]))
}

// Import reads exactly pi.NarSize bytes of NAR from r and makes pi.Path
// valid with that content. The archive is restored into a private temporary
// directory while it is hashed; only when it is complete, matches pi.NarHash
// and pi.NarSize, and is fsynced, is it renamed into place and registered,
// and only if every reference is already valid. If the path is valid
// already, the archive is read and discarded.
//
// An import interrupted at any point leaves no valid partial path; the next
// import (or GC) removes its leftovers.
func (s *Store) Import(ctx context.Context, r io.Reader, pi *PathInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, _, err := SplitPath(s.StoreDir, pi.Path); err != nil {
		return fmt.Errorf("store: import: %w", err)
	}
	if pi.NarSize <= 0 {
		return fmt.Errorf("store: import %q: NAR size %d", pi.Path, pi.NarSize)
	}
	if err := s.checkContentAddress(pi); err != nil {
		return err
	}
	if err := s.init(); err != nil {
		return err
	}
	unlock, err := s.lockShared(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.checkRefs(pi); err != nil {
		return err
	}
	if ok, err := s.Valid(pi.Path); err != nil {
		return err
	} else if ok {
		if _, err := io.CopyN(io.Discard, r, pi.NarSize); err != nil {
			return fmt.Errorf("store: import %q: %w", pi.Path, err)
		}
		return nil
	}

	tmp, err := os.MkdirTemp(s.RealDir, ".tmp-")
	if err != nil {
		return fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	defer nar.RemoveTree(tmp)
	h := newAsyncHasher()
	defer h.stop()
	staged := filepath.Join(tmp, "x")
	if _, err := nar.Restore(io.TeeReader(r, h), staged, nar.RestoreOptions{Size: pi.NarSize, Writeback: true}); err != nil {
		return fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	if got := h.sum(); h.n != pi.NarSize || got != pi.NarHash {
		return &HashMismatchError{Path: pi.Path, WantHash: pi.NarHash, GotHash: got, WantSize: pi.NarSize, GotSize: h.n}
	}
	// One syncfs makes every file and directory of the staged tree durable
	// before it is renamed into place: the same guarantee as an fsync of
	// each, without a journal commit per file.
	if err := syncFS(tmp); err != nil {
		return fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	// Another import of the same path may have finished meanwhile (a
	// receive left over from a cut connection, say): under the path's lock,
	// a path that is valid now stays as it is and ours is discarded, and
	// content without metadata is a crashed import's leftover.
	unlockPath, err := s.lockPath(ctx, pi.Path)
	if err != nil {
		return err
	}
	defer unlockPath()
	if ok, err := s.Valid(pi.Path); err != nil || ok {
		return err
	}
	final := s.RealPath(pi.Path)
	if _, err := os.Lstat(final); err == nil {
		// Content without metadata: an earlier import died between
		// rename and registration.
		if err := nar.RemoveTree(final); err != nil {
			return fmt.Errorf("store: import %q: removing stale content: %w", pi.Path, err)
		}
	}
	if err := os.Rename(staged, final); err != nil {
		return fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	if err := atomicfile.SyncDir(s.RealDir); err != nil {
		return fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	info := *pi
	info.References = sortedUnique(pi.References)
	return s.writeInfo(&info)
}

// UploadPrefix starts the names of bootstrap uploads of the agent binary in
// the store directory. The leftover sweep removes them after an hour.
const UploadPrefix = ".upload-"

// The store lock: imports hold it shared, GC and the leftover sweep hold it
// exclusive, so neither ever sees the other's work half done.
func (s *Store) lockFile() string { return filepath.Join(s.DBDir, ".lock") }

func (s *Store) openLock() (int, error) {
	fd, err := unix.Open(s.lockFile(), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return -1, fmt.Errorf("store: lock: %w", err)
	}
	return fd, nil
}

// lockShared takes the store lock shared. When it can take it exclusive
// without waiting, nobody else is importing, so it first sweeps leftovers of
// interrupted imports.
func (s *Store) lockShared(ctx context.Context) (func(), error) {
	fd, err := s.openLock()
	if err != nil {
		return nil, err
	}
	if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
		err := s.sweep()
		if err == nil {
			err = unix.Flock(fd, unix.LOCK_SH) // downgrade
		}
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		return func() { unix.Close(fd) }, nil
	}
	if err := flockWait(ctx, fd, unix.LOCK_SH); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

// lockPath takes the import lock of one store path (db/.locks/<hash>),
// which serialises the final check, rename and registration of concurrent
// imports of that path. The lock files are removed by the leftover sweep,
// which runs when no import holds the store lock.
func (s *Store) lockPath(ctx context.Context, p string) (func(), error) {
	hash, _, err := SplitPath(s.StoreDir, p)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.DBDir, ".locks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: lock: %w", err)
	}
	fd, err := unix.Open(filepath.Join(dir, hash), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: lock %q: %w", p, err)
	}
	if err := flockWait(ctx, fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

func (s *Store) lockExclusive(ctx context.Context) (func(), error) {
	fd, err := s.openLock()
	if err != nil {
		return nil, err
	}
	if err := flockWait(ctx, fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

func flockWait(ctx context.Context, fd, how int) error {
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("store: lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("store: waiting for the store lock: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sweep removes what interrupted imports left: temporary directories and
// files, and content that was renamed into place but never registered. The
// caller holds the store lock exclusive.
func (s *Store) sweep() error {
	entries, err := os.ReadDir(s.RealDir)
	if err != nil {
		return fmt.Errorf("store: sweep: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		full := filepath.Join(s.RealDir, name)
		if strings.HasPrefix(name, ".tmp-") {
			if err := nar.RemoveTree(full); err != nil {
				return fmt.Errorf("store: sweep: %w", err)
			}
			continue
		}
		if strings.HasPrefix(name, UploadPrefix) {
			// A bootstrap upload: keep it while it may still be in use.
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
				os.Remove(full)
			}
			continue
		}
		if strings.HasPrefix(name, ".") {
			continue
		}
		ok, err := s.Valid(s.StoreDir + "/" + name)
		if err != nil && !errors.Is(err, ErrNotValid) {
			// Not a store path name at all: leave what we do not own.
			continue
		}
		if !ok {
			if err := nar.RemoveTree(full); err != nil {
				return fmt.Errorf("store: sweep: %w", err)
			}
		}
	}
	dbEntries, err := os.ReadDir(s.DBDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: sweep: %w", err)
	}
	for _, e := range dbEntries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.Remove(filepath.Join(s.DBDir, e.Name()))
		}
	}
	// Per-path import locks: nobody imports while the sweep runs.
	os.RemoveAll(filepath.Join(s.DBDir, ".locks"))
	return nil
}

// checkContentAddress checks that pi.Path is the path its NAR hash, name and
// references give, so that a sender cannot name content falsely.
func (s *Store) checkContentAddress(pi *PathInfo) error {
	_, name, err := SplitPath(s.StoreDir, pi.Path)
	if err != nil {
		return fmt.Errorf("store: import: %w", err)
	}
	want, err := MakeSourcePath(s.StoreDir, pi.NarHash, name, pi.References)
	if err != nil {
		return fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	if want != pi.Path {
		return fmt.Errorf("store: import %q: path does not match its NAR hash and references (they give %q)", pi.Path, want)
	}
	return nil
}

// syncFS flushes the filesystem that holds dir (syncfs(2)).
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("syncfs %q: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %q: %w", dir, err)
	}
	return nil
}
