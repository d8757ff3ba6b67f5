package nar

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Dump writes the NAR serialisation of the file tree at path to w. It never
// follows symlinks; sockets, devices and FIFOs are an error naming the file,
// and so is a file whose size changes while it is read.
func Dump(w io.Writer, path string) error {
	d := &dumper{w: bufio.NewWriterSize(w, 256<<10)}
	d.str(Magic)
	if err := d.node(path, "", 0); err != nil {
		return err
	}
	if d.err != nil {
		return d.err
	}
	return d.w.Flush()
}

type dumper struct {
	w     *bufio.Writer
	err   error
	buf   [8]byte
	small []byte // smallContents' buffer, grown to the largest file
}

func (d *dumper) u64(n uint64) {
	if d.err != nil {
		return
	}
	binary.LittleEndian.PutUint64(d.buf[:], n)
	_, d.err = d.w.Write(d.buf[:])
}

var zeros [8]byte

func (d *dumper) pad(n uint64) {
	if d.err != nil || n%8 == 0 {
		return
	}
	_, d.err = d.w.Write(zeros[:8-n%8])
}

func (d *dumper) str(s string) {
	d.u64(uint64(len(s)))
	if d.err == nil {
		_, d.err = d.w.WriteString(s)
	}
	d.pad(uint64(len(s)))
}

func (d *dumper) node(path, rel string, depth int) error {
	if depth >= MaxDepth {
		return fmt.Errorf("nar: dump %q: nested deeper than %d", path, MaxDepth-1)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	d.str("(")
	d.str("type")
	switch m := fi.Mode(); {
	case m.IsRegular():
		d.str("regular")
		if m&0o100 != 0 {
			d.str("executable")
			d.str("")
		}
		d.str("contents")
		if err := d.contents(path, fi.Size()); err != nil {
			return err
		}
	case m&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		if err := CheckTarget(target); err != nil {
			return fmt.Errorf("nar: dump %q: %w", path, err)
		}
		d.str("symlink")
		d.str("target")
		d.str(target)
	case m.IsDir():
		d.str("directory")
		entries, err := os.ReadDir(path) // sorted by name, byte order
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		for _, e := range entries {
			name := e.Name()
			if err := CheckName(name); err != nil {
				return fmt.Errorf("nar: dump %q: %w", path, err)
			}
			d.str("entry")
			d.str("(")
			d.str("name")
			d.str(name)
			d.str("node")
			if err := d.node(filepath.Join(path, name), join(rel, name), depth+1); err != nil {
				return err
			}
			d.str(")")
		}
	default:
		return fmt.Errorf("nar: dump %q: unsupported file type %s", path, fi.Mode().Type())
	}
	d.str(")")
	return d.err
}

// sparseMin is the size from which a file's holes are looked for
// (SEEK_DATA/SEEK_HOLE) and written as zeros without being read.
const sparseMin = 1 << 20

var zeroBuf [64 << 10]byte

// copyFile writes the first size bytes of f: the data regions as read, the
// holes as zeros (which is what reading them gives) without reading them.
func (d *dumper) copyFile(f *os.File, size int64) (int64, error) {
	if size < sparseMin {
		return io.Copy(d.w, io.LimitReader(f, size))
	}
	fd := int(f.Fd())
	var off int64
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // a hole to the end
		} else if err != nil {
			// No SEEK_DATA here: read the rest.
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				return off, err
			}
			n, err := io.Copy(d.w, io.LimitReader(f, size-off))
			return off + n, err
		}
		data = min(data, size)
		for off < data {
			k := min(int64(len(zeroBuf)), data-off)
			if _, err := d.w.Write(zeroBuf[:k]); err != nil {
				return off, err
			}
			off += k
		}
		if off >= size {
			break
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			return off, err
		}
		hole = min(hole, size)
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return off, err
		}
		want := hole - off
		n, err := io.Copy(d.w, io.LimitReader(f, want))
		off += n
		if err != nil {
			return off, err
		}
		if n < want {
			return off, nil // it shrank: the caller says so
		}
	}
	// Position at the end, so that the caller's check for growth reads
	// past size.
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		return off, err
	}
	return off, nil
}

func (d *dumper) contents(path string, size int64) error {
	if size < sparseMin {
		return d.smallContents(path, size)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	defer f.Close()
	d.u64(uint64(size))
	if d.err != nil {
		return d.err
	}
	n, err := d.copyFile(f, size)
	if err != nil {
		return fmt.Errorf("nar: dump %q: %w", path, err)
	}
	if n != size {
		return fmt.Errorf("nar: dump %q: file shrank while reading (%d of %d bytes)", path, n, size)
	}
	if extra, _ := f.Read(d.buf[:1]); extra > 0 {
		return fmt.Errorf("nar: dump %q: file grew while reading", path)
	}
	d.pad(uint64(size))
	return d.err
}

// smallContents writes a file of less than sparseMin bytes: the per-file
// path of a closure of thousands of small files, so it makes the fewest
// system calls it can: open (never following a symlink swapped in since
// the lstat), one read for the whole file and the check that it did not
// grow (a regular file's read returns short only at its end), close.
func (d *dumper) smallContents(path string, size int64) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	if int64(cap(d.small)) < size+1 {
		d.small = make([]byte, size+1)
	}
	buf := d.small[:size+1]
	n := 0
	for n < len(buf) {
		k, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("nar: dump: %w", &os.PathError{Op: "read", Path: path, Err: err})
		}
		n += k
		if k == 0 || n == int(size) && k < len(buf)-(n-k) {
			break // the end of the file
		}
	}
	switch {
	case n > int(size):
		return fmt.Errorf("nar: dump %q: file grew while reading", path)
	case n < int(size):
		return fmt.Errorf("nar: dump %q: file shrank while reading (%d of %d bytes)", path, n, size)
	}
	d.u64(uint64(size))
	if d.err == nil {
		_, d.err = d.w.Write(buf[:size])
	}
	d.pad(uint64(size))
	return d.err
}
