package closure

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
// import (or GC) removes its leftovers. [Store.Receive] imports many paths
// the same way, but commits them in batches (see commit).
func (s *Store) Import(ctx context.Context, r io.Reader, pi *PathInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.checkImport(pi); err != nil {
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
	if err := s.checkRefs(pi, nil); err != nil {
		return err
	}
	if ok, err := s.Valid(pi.Path); err != nil {
		return err
	} else if ok {
		return discardNAR(r, pi)
	}
	st, err := s.stage(r, pi)
	if err != nil {
		return err
	}
	return s.commit(ctx, []*staged{st})
}

// checkImport checks what can be checked of pi before its content arrives.
func (s *Store) checkImport(pi *PathInfo) error {
	if err := s.checkName(pi); err != nil {
		return err
	}
	return s.checkContentAddress(pi)
}

// checkName checks pi's path and NAR size, everything but its content
// address.
func (s *Store) checkName(pi *PathInfo) error {
	if _, _, err := SplitPath(s.StoreDir, pi.Path); err != nil {
		return fmt.Errorf("store: import: %w", err)
	}
	if pi.NarSize <= 0 {
		return fmt.Errorf("store: import %q: NAR size %d", pi.Path, pi.NarSize)
	}
	return nil
}

func discardNAR(r io.Reader, pi *PathInfo) error {
	if _, err := io.CopyN(io.Discard, r, pi.NarSize); err != nil {
		return fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	return nil
}

// staged is a path restored and verified in a private directory of the
// store (tmp/x), not yet durable, not yet in place, not registered.
type staged struct {
	pi  *PathInfo
	tmp string
}

func (st *staged) discard() { nar.RemoveTree(st.tmp) }

// stage reads exactly pi.NarSize bytes of NAR from r into a private
// directory, hashing them on the way, and checks hash and size. The caller
// holds the store lock shared.
func (s *Store) stage(r io.Reader, pi *PathInfo) (*staged, error) {
	tmp, err := os.MkdirTemp(s.RealDir, ".tmp-")
	if err != nil {
		return nil, fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	st := &staged{pi: pi, tmp: tmp}
	h := newAsyncHasher()
	defer h.stop()
	if _, err := nar.Restore(io.TeeReader(r, h), filepath.Join(tmp, "x"), nar.RestoreOptions{Size: pi.NarSize, Writeback: true}); err != nil {
		st.discard()
		return nil, fmt.Errorf("store: import %q: %w", pi.Path, err)
	}
	if got := h.sum(); h.n != pi.NarSize || got != pi.NarHash {
		st.discard()
		return nil, &HashMismatchError{Path: pi.Path, WantHash: pi.NarHash, GotHash: got, WantSize: pi.NarSize, GotSize: h.n}
	}
	return st, nil
}

// batchPrefix starts the names of the intent files of batch commits in the
// db directory.
const batchPrefix = ".batch-"

// commit makes the staged paths valid, in order (references first; every
// reference of each is valid or earlier in batch), with one round of
// flushes for the whole batch instead of one per path:
//
//  1. the metadata of each path is written to a temporary file;
//  2. one syncfs makes every staged tree and metadata file durable;
//  3. for more than one path, an intent file listing them is written
//     durably (temp + fsync + rename + directory fsync);
//  4. each path's tree, then its metadata, is renamed into place, under the
//     path's lock (a path made valid meanwhile by another import is kept
//     and ours discarded);
//  5. the store and db directories are fsynced, and the intent removed.
//
// A crash before 3 leaves only temporary files (the sweep removes them).
// A crash between 3 and 5 may leave any subset of the renames durable, so
// the sweep (recoverBatch) re-checks the listed paths, references first,
// and unregisters any whose content or references did not make it. The
// batch is consumed: commit discards what it does not make valid.
func (s *Store) commit(ctx context.Context, batch []*staged) (err error) {
	var infos []string // temporary metadata files, by batch index
	defer func() {
		for _, st := range batch {
			st.discard()
		}
		for _, f := range infos {
			if f != "" {
				os.Remove(f)
			}
		}
	}()
	for _, st := range batch {
		info := *st.pi
		info.References = sortedUnique(st.pi.References)
		f, err := os.CreateTemp(s.DBDir, ".tmp-info-")
		if err != nil {
			return fmt.Errorf("store: registering %q: %w", st.pi.Path, err)
		}
		infos = append(infos, f.Name())
		_, werr := f.Write(info.marshal())
		cerr := f.Close()
		if err := cmp.Or(werr, cerr, os.Chmod(f.Name(), 0o644)); err != nil {
			return fmt.Errorf("store: registering %q: %w", st.pi.Path, err)
		}
	}
	// One syncfs makes every file and directory of the staged trees durable
	// before they are renamed into place: the same guarantee as an fsync of
	// each, without a journal commit per file.
	if err := syncFS(s.RealDir); err != nil {
		return fmt.Errorf("store: import: %w", err)
	}
	if !sameFS(s.RealDir, s.DBDir) {
		if err := syncFS(s.DBDir); err != nil {
			return fmt.Errorf("store: import: %w", err)
		}
	}
	var intent string
	if len(batch) > 1 {
		var list strings.Builder
		for _, st := range batch {
			list.WriteString(st.pi.Path + "\n")
		}
		intent = filepath.Join(s.DBDir, fmt.Sprintf("%s%d-%d", batchPrefix, os.Getpid(), time.Now().UnixNano()))
		if err := atomicfile.Write(intent, []byte(list.String()), 0o600); err != nil {
			return fmt.Errorf("store: import: %w", err)
		}
	}
	for i, st := range batch {
		if err := s.place(ctx, st, infos[i]); err != nil {
			return err
		}
		infos[i] = ""
	}
	if err := atomicfile.SyncDir(s.RealDir); err != nil {
		return fmt.Errorf("store: import: %w", err)
	}
	if err := atomicfile.SyncDir(s.DBDir); err != nil {
		return fmt.Errorf("store: import: %w", err)
	}
	if intent != "" {
		os.Remove(intent)
	}
	return nil
}

// place renames one staged, durable path and then its metadata into place,
// under the path's lock. Another import of the same path may have finished
// meanwhile (a receive left over from a cut connection, say): a path that
// is valid now stays as it is and ours is discarded, and content without
// metadata is a crashed import's leftover.
func (s *Store) place(ctx context.Context, st *staged, info string) error {
	unlockPath, err := s.lockPath(ctx, st.pi.Path)
	if err != nil {
		return err
	}
	defer unlockPath()
	if ok, err := s.Valid(st.pi.Path); err != nil {
		return err
	} else if ok {
		os.Remove(info)
		return nil
	}
	final := s.RealPath(st.pi.Path)
	if _, err := os.Lstat(final); err == nil {
		if err := nar.RemoveTree(final); err != nil {
			return fmt.Errorf("store: import %q: removing stale content: %w", st.pi.Path, err)
		}
	}
	if err := os.Rename(filepath.Join(st.tmp, "x"), final); err != nil {
		return fmt.Errorf("store: import %q: %w", st.pi.Path, err)
	}
	f, err := s.infoFile(st.pi.Path)
	if err != nil {
		return err
	}
	if err := os.Rename(info, f); err != nil {
		return fmt.Errorf("store: registering %q: %w", st.pi.Path, err)
	}
	return nil
}

// recoverBatch finishes the intent file of a batch commit that was
// interrupted (see commit): in the listed order, references first, a path
// whose content or any reference is not valid is unregistered. Then the
// intent is removed. The caller holds the store lock exclusive.
func (s *Store) recoverBatch(intent string) error {
	data, err := os.ReadFile(intent)
	if err != nil {
		return err
	}
	changed := false
	for _, p := range strings.Fields(string(data)) {
		f, err := s.infoFile(p)
		if err != nil {
			continue
		}
		if _, err := os.Lstat(f); errors.Is(err, fs.ErrNotExist) || s.complete(p) {
			continue // not registered, or registered with all it needs
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		changed = true
	}
	if changed {
		if err := atomicfile.SyncDir(s.DBDir); err != nil {
			return err
		}
	}
	return os.Remove(intent)
}

// complete reports whether p is valid and so is every reference of it.
func (s *Store) complete(p string) bool {
	pi, err := s.Info(p)
	if err != nil {
		return false
	}
	for _, r := range append([]string{p}, pi.References...) {
		if ok, err := s.Valid(r); err != nil || !ok {
			return false
		}
	}
	return true
}

// sameFS reports whether a and b are on the same file system.
func sameFS(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev
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
// interrupted imports, the first time this Store finds the store idle. Not
// at every import: a sweep reads every path's metadata, and a build of a
// thousand hosts imports thousands of paths. What a process that crashes
// meanwhile leaves is garbage that place replaces (content without
// metadata) or never reads (temporary files), and a batch commit it cut
// registered its paths references first, so that what it registered is
// whole; only a power loss breaks that, and then every process starts
// again and sweeps first.
func (s *Store) lockShared(ctx context.Context) (func(), error) {
	fd, err := s.openLock()
	if err != nil {
		return nil, err
	}
	if !s.swept.Load() && unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
		err := s.sweep()
		if err == nil {
			s.swept.Store(true)
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

// Recover finishes what interrupted imports left, under the store lock
// (waiting for imports in flight): batch commits cut by a crash are
// replayed (a listed path whose content or a reference did not reach the
// disk is unregistered) and leftovers are removed. The first import of a
// Store does it itself when it finds the store idle; the agent's boot unit calls it
// so that nothing uses the store after a power loss before it ran.
func (s *Store) Recover(ctx context.Context) error {
	if err := s.init(); err != nil {
		return err
	}
	unlock, err := s.lockExclusive(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return s.sweep()
}

// sweep removes what interrupted imports left: temporary directories and
// files, and content that was renamed into place but never registered. The
// caller holds the store lock exclusive.
func (s *Store) sweep() error {
	// Interrupted batch commits first: what they unregister, the content
	// sweep below then removes.
	if intents, err := filepath.Glob(filepath.Join(s.DBDir, batchPrefix+"*")); err == nil {
		for _, f := range intents {
			if err := s.recoverBatch(f); err != nil {
				return fmt.Errorf("store: sweep: recovering %s: %w", filepath.Base(f), err)
			}
		}
	}
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

// Batch imports many paths the way [Store.Receive] does, for importers
// that fetch paths themselves (from a binary cache): [Batch.Stage] restores
// and checks one path into a private directory and may be called
// concurrently; [Batch.Commit] then makes staged paths valid in reference
// order with one round of flushes. The store lock is held shared from
// [Store.NewBatch] to [Batch.Close], which discards whatever is still
// staged.
type Batch struct {
	s      *Store
	unlock func()
	mu     sync.Mutex
	staged map[string]*staged
}

// NewBatch starts a batch import (sweeping what interrupted imports left
// when no other import runs).
func (s *Store) NewBatch(ctx context.Context) (*Batch, error) {
	if err := s.init(); err != nil {
		return nil, err
	}
	unlock, err := s.lockShared(ctx)
	if err != nil {
		return nil, err
	}
	return &Batch{s: s, unlock: unlock, staged: map[string]*staged{}}, nil
}

// Stage reads exactly pi.NarSize bytes of NAR from r into a private
// directory and checks its hash and size. Unless signed, pi.Path must also
// be the content address of pi (its NAR hash, name and references); signed
// says the caller has verified pi's signature by a key it trusts, which
// then vouches for the path's name (Nix's input-addressed paths).
func (b *Batch) Stage(r io.Reader, pi *PathInfo, signed bool) error {
	if err := b.s.checkName(pi); err != nil {
		return err
	}
	if !signed {
		if err := b.s.checkContentAddress(pi); err != nil {
			return err
		}
	}
	st, err := b.s.stage(r, pi)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.staged[pi.Path]; old != nil {
		old.discard()
	}
	b.staged[pi.Path] = st
	return nil
}

// Commit makes the staged paths among order valid, in that order, which
// must put references first. A staged path whose references are neither
// valid nor committed before it in this call is discarded. It returns the
// paths made valid by this call.
func (b *Batch) Commit(ctx context.Context, order []string) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pending := map[string]bool{}
	var batch []*staged
	for _, p := range order {
		st := b.staged[p]
		if st == nil {
			continue
		}
		delete(b.staged, p)
		if ok, err := b.s.Valid(p); err == nil && ok {
			st.discard()
			continue
		}
		if err := b.s.checkRefs(st.pi, pending); err != nil {
			st.discard()
			continue
		}
		batch = append(batch, st)
		pending[p] = true
	}
	if len(batch) == 0 {
		return nil, nil
	}
	committed := make([]string, len(batch))
	for i, st := range batch {
		committed[i] = st.pi.Path
	}
	if err := b.s.commit(ctx, batch); err != nil {
		return nil, err
	}
	return committed, nil
}

// Close discards what is still staged and releases the store lock.
func (b *Batch) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, st := range b.staged {
		st.discard()
	}
	b.staged = nil
	b.unlock()
}
