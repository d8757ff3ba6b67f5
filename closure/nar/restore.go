package nar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// RestoreOptions tunes [Restore].
type RestoreOptions struct {
	// Size is passed to [Parse] (see [Options]).
	Size int64
	// Sync fsyncs every file and directory before Restore returns, so that
	// the tree is durable once it is renamed into place.
	Sync bool
	// Writeback starts the kernel's writeback of file data while it is
	// written (sync_file_range every 8 MiB), so that a later fsync or
	// syncfs has little left to wait for: receiving and flushing overlap.
	Writeback bool
}

// Restore parses an archive from r and recreates it at dest, which must not
// exist. Files get mode 0444, or 0555 when executable; directories 0555.
// Every file is created relative to an already opened parent directory with
// O_NOFOLLOW|O_EXCL, so a symlink in the archive, or one planted while
// restoring, is never followed and nothing is written outside dest. On error
// the partial tree is removed. Restore returns the archive's size. The
// umask is read once, when the program starts: a program that changes it
// later must not restore meanwhile (the modes could come out narrower).
func Restore(r io.Reader, dest string, opts RestoreOptions) (int64, error) {
	parent, err := unix.Open(filepath.Dir(dest), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("nar: restore %q: open parent: %w", dest, err)
	}
	rs := &restorer{dest: dest, rootName: filepath.Base(dest), dirs: []int{parent}, pending: []*sync.WaitGroup{{}}, sync: opts.Sync, writeback: opts.Writeback}
	if opts.Writeback {
		rs.startFlusher(parent)
	}
	n, err := Parse(r, rs, Options{Size: opts.Size})
	// The writers use the open directories: they stop before those close.
	if werr := rs.stopWriters(); err == nil {
		err = werr
	}
	rs.stopFlusher()
	for _, fd := range rs.dirs {
		unix.Close(fd)
	}
	if err != nil {
		if rs.created {
			if rerr := RemoveTree(dest); rerr != nil {
				return n, fmt.Errorf("%w (and removing the partial tree failed: %v)", err, rerr)
			}
		}
		return n, err
	}
	if opts.Sync {
		if err := syncDir(filepath.Dir(dest)); err != nil {
			return n, fmt.Errorf("nar: restore %q: %w", dest, err)
		}
	}
	return n, nil
}

type restorer struct {
	dest      string
	rootName  string
	dirs      []int // open directory fds; dirs[0] is dest's parent
	paths     []string
	pending   []*sync.WaitGroup // per entry of dirs: its files still being written
	created   bool
	sync      bool
	writeback bool
	buf       []byte

	// Small files are written by writers on other goroutines, so that the
	// per-file system calls of one overlap with the parsing (and hashing) of
	// the next; a directory is finished only once its files are written.
	jobs    chan *fileJob
	slots   chan struct{} // a slot per buffer in use: the memory bound
	writers sync.WaitGroup
	errMu   sync.Mutex
	err     error // the writers' first error

	// With Writeback, a flusher syncs the file system every flushEvery
	// bytes written, so that the final sync has little left.
	written atomic.Int64
	flushAt atomic.Int64
	flush   chan struct{}
	flusher sync.WaitGroup
}

const flushEvery = 32 << 20

// wrote counts n bytes written and wakes the flusher every flushEvery.
func (rs *restorer) wrote(n int) {
	if rs.flush == nil {
		return
	}
	w := rs.written.Add(int64(n))
	if at := rs.flushAt.Load(); w >= at && rs.flushAt.CompareAndSwap(at, w+flushEvery) {
		select {
		case rs.flush <- struct{}{}:
		default:
		}
	}
}

func (rs *restorer) startFlusher(fd int) {
	rs.flush = make(chan struct{}, 1)
	rs.flushAt.Store(flushEvery)
	rs.flusher.Add(1)
	go func() {
		defer rs.flusher.Done()
		for range rs.flush {
			unix.Syncfs(fd)
		}
	}()
}

func (rs *restorer) stopFlusher() {
	if rs.flush != nil {
		close(rs.flush)
		rs.flusher.Wait()
	}
}

// smallFile is the largest file handed to a writer; writers is how many
// there are, and inFlight how many files may wait for one (the memory bound:
// inFlight+writers buffers of smallFile bytes per restore). The buffers are
// pooled across restores: an import of thousands of tiny paths must not
// allocate them afresh for each.
const (
	smallFile = 256 << 10
	writers   = 2
	inFlight  = 16
)

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallFile); return &b }}

type fileJob struct {
	dirfd      int
	name, full string
	executable bool
	data       []byte
	buf        *[]byte // data's pooled buffer
	done       *sync.WaitGroup
}

func (rs *restorer) writerErr() error {
	rs.errMu.Lock()
	defer rs.errMu.Unlock()
	return rs.err
}

// writeSmall reads a small file's content and hands it to a writer.
func (rs *restorer) writeSmall(fd int, name, full string, executable bool, size int64, r io.Reader) error {
	if err := rs.writerErr(); err != nil {
		return err
	}
	if rs.jobs == nil {
		rs.jobs = make(chan *fileJob, inFlight)
		rs.slots = make(chan struct{}, inFlight+writers)
		for range writers {
			rs.writers.Add(1)
			go rs.writer()
		}
	}
	rs.slots <- struct{}{}
	buf := smallBufs.Get().(*[]byte)
	if _, err := io.ReadFull(r, (*buf)[:size]); err != nil {
		smallBufs.Put(buf)
		<-rs.slots
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil // the parser reports the truncated archive
		}
		return err
	}
	done := rs.pending[len(rs.pending)-1]
	done.Add(1)
	rs.jobs <- &fileJob{dirfd: fd, name: name, full: full, executable: executable, data: (*buf)[:size], buf: buf, done: done}
	return nil
}

func (rs *restorer) writer() {
	defer rs.writers.Done()
	for j := range rs.jobs {
		if rs.writerErr() == nil {
			if err := rs.writeFile(j.dirfd, j.name, j.full, j.executable, j.data); err != nil {
				rs.errMu.Lock()
				if rs.err == nil {
					rs.err = err
				}
				rs.errMu.Unlock()
			}
		}
		smallBufs.Put(j.buf)
		<-rs.slots
		j.done.Done()
	}
}

// writeFile creates one file with its whole content. It is the per-file
// path of a closure of thousands of small files, so it makes the fewest
// system calls it can: the file is created with its final mode (writable
// through this descriptor all the same) where the umask leaves that mode
// alone, and the descriptor is used raw (os.NewFile would add an fcntl).
func (rs *restorer) writeFile(fd int, n, full string, executable bool, data []byte) error {
	mode, chmod := createMode(executable)
	ffd, err := unix.Openat(fd, n, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("nar: restore: create %q: %w", full, err)
	}
	defer unix.Close(ffd)
	for b := data; len(b) > 0; {
		k, err := unix.Write(ffd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("nar: restore: write %q: %w", full, err)
		}
		b = b[k:]
	}
	rs.wrote(len(data))
	if chmod {
		if err := unix.Fchmod(ffd, fileMode(executable)); err != nil {
			return fmt.Errorf("nar: restore: chmod %q: %w", full, err)
		}
	}
	if rs.sync {
		if err := unix.Fsync(ffd); err != nil {
			return fmt.Errorf("nar: restore: fsync %q: %w", full, err)
		}
	}
	return nil
}

// fileMode is a restored file's mode: read-only, executable or not.
func fileMode(executable bool) uint32 {
	if executable {
		return 0o555
	}
	return 0o444
}

// createMode returns the mode to create a file with, and whether it still
// needs an fchmod: when the process's umask would take bits off the final
// mode (or is unknown), the file is created 0600 and chmodded after.
func createMode(executable bool) (uint32, bool) {
	m := fileMode(executable)
	if umask < 0 || uint32(umask)&m != 0 {
		return 0o600, true
	}
	return m, false
}

// umask is the process's umask, read once from /proc/self/status (which
// does not change it, unlike umask(2)); -1 if unknown.
var umask = readUmask()

func readUmask() int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			if u, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return int(u)
			}
		}
	}
	return -1
}

// finishFile sets a written file's mode, fsyncs it if asked, and closes it.
func (rs *restorer) finishFile(f *os.File, executable bool) error {
	if err := f.Chmod(os.FileMode(fileMode(executable))); err != nil {
		return fmt.Errorf("nar: restore: %w", err)
	}
	if rs.sync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("nar: restore: %w", err)
		}
	}
	return f.Close()
}

// stopWriters waits for every handed-over file and returns the writers'
// first error.
func (rs *restorer) stopWriters() error {
	if rs.jobs != nil {
		close(rs.jobs)
		rs.writers.Wait()
		rs.jobs = nil
	}
	return rs.writerErr()
}

// at returns the parent fd and the name to create for the node name.
func (rs *restorer) at(name string) (int, string, string) {
	if len(rs.paths) == 0 {
		return rs.dirs[0], rs.rootName, rs.dest
	}
	return rs.dirs[len(rs.dirs)-1], name, filepath.Join(rs.paths[len(rs.paths)-1], name)
}

// made records that the node just created is dest itself: from now on a
// failure removes dest. Until then dest is not ours (it may exist, and
// then the create failed with EEXIST), and a failure leaves it alone.
func (rs *restorer) made() {
	if len(rs.paths) == 0 {
		rs.created = true
	}
}

func (rs *restorer) Directory(name string) error {
	fd, n, full := rs.at(name)
	if err := unix.Mkdirat(fd, n, 0o700); err != nil {
		return fmt.Errorf("nar: restore: mkdir %q: %w", full, err)
	}
	rs.made()
	dfd, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("nar: restore: open %q: %w", full, err)
	}
	rs.dirs = append(rs.dirs, dfd)
	rs.paths = append(rs.paths, full)
	rs.pending = append(rs.pending, &sync.WaitGroup{})
	return nil
}

func (rs *restorer) EndDirectory() error {
	// Its files first: a writer may still be creating one in it.
	rs.pending[len(rs.pending)-1].Wait()
	if err := rs.writerErr(); err != nil {
		return err
	}
	fd := rs.dirs[len(rs.dirs)-1]
	full := rs.paths[len(rs.paths)-1]
	rs.dirs = rs.dirs[:len(rs.dirs)-1]
	rs.paths = rs.paths[:len(rs.paths)-1]
	rs.pending = rs.pending[:len(rs.pending)-1]
	defer unix.Close(fd)
	if rs.sync {
		if err := unix.Fsync(fd); err != nil {
			return fmt.Errorf("nar: restore: fsync %q: %w", full, err)
		}
	}
	if err := unix.Fchmod(fd, 0o555); err != nil {
		return fmt.Errorf("nar: restore: chmod %q: %w", full, err)
	}
	return nil
}

func (rs *restorer) File(name string, executable bool, size int64, r io.Reader) error {
	fd, n, full := rs.at(name)
	if size <= smallFile && len(rs.paths) > 0 {
		return rs.writeSmall(fd, n, full, executable, size, r)
	}
	if err := rs.writerErr(); err != nil {
		return err
	}
	ffd, err := unix.Openat(fd, n, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("nar: restore: create %q: %w", full, err)
	}
	rs.made()
	f := os.NewFile(uintptr(ffd), full)
	defer f.Close()
	if rs.buf == nil {
		rs.buf = make([]byte, 256<<10)
	}
	w := &fileWriter{f: f, writeback: rs.writeback && size > writebackChunk}
	n64, err := io.CopyBuffer(w, r, rs.buf)
	rs.wrote(int(n64))
	if err == nil {
		err = w.finish()
	}
	if err != nil {
		return fmt.Errorf("nar: restore: write %q: %w", full, err)
	}
	return rs.finishFile(f, executable)
}

// writebackChunk is how much file data is written before its writeback is
// started.
const writebackChunk = 8 << 20

// fileWriter writes a large file's content. Chunks of zeros (of at least
// a page) are not written but skipped, so that a sparse file stays sparse
// (the content, and so the NAR hash, is the same); with writeback, the
// kernel's writeback of every full chunk written is started at once
// (SYNC_FILE_RANGE_WRITE does not wait).
type fileWriter struct {
	f         *os.File
	writeback bool
	off       int64 // bytes of content so far, written or skipped
	started   int64 // bytes whose writeback has been started
	hole      bool  // the content ends in a skipped chunk
}

func (w *fileWriter) Write(b []byte) (int, error) {
	if len(b) >= 4096 && allZero(b) {
		if _, err := w.f.Seek(int64(len(b)), io.SeekCurrent); err != nil {
			return 0, err
		}
		w.off += int64(len(b))
		w.hole = true
		return len(b), nil
	}
	n, err := w.f.Write(b)
	w.off += int64(n)
	w.hole = false
	if w.writeback && w.off-w.started >= writebackChunk {
		unix.SyncFileRange(int(w.f.Fd()), w.started, w.off-w.started, unix.SYNC_FILE_RANGE_WRITE)
		w.started = w.off
	}
	return n, err
}

// finish gives the file its length when it ends in a hole.
func (w *fileWriter) finish() error {
	if w.hole {
		return w.f.Truncate(w.off)
	}
	return nil
}

var zeroPage [4096]byte

func allZero(b []byte) bool {
	for len(b) >= len(zeroPage) {
		if !bytes.Equal(b[:len(zeroPage)], zeroPage[:]) {
			return false
		}
		b = b[len(zeroPage):]
	}
	return bytes.Equal(b, zeroPage[:len(b)])
}

func (rs *restorer) Symlink(name, target string) error {
	fd, n, full := rs.at(name)
	if err := unix.Symlinkat(target, fd, n); err != nil {
		return fmt.Errorf("nar: restore: symlink %q: %w", full, err)
	}
	rs.made()
	return nil
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %q: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync %q: %w", dir, err)
	}
	return nil
}

// RemoveTree removes path and everything below it, first making read-only
// directories writable so that restored trees (mode 0555) can be removed by
// their owner. It never follows symlinks. A missing path is not an error.
func RemoveTree(path string) error {
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o700)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %q: %w", path, err)
	}
	return os.RemoveAll(path)
}
