package nar

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	w   *bufio.Writer
	err error
	buf [8]byte
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

func (d *dumper) contents(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	defer f.Close()
	d.u64(uint64(size))
	if d.err != nil {
		return d.err
	}
	n, err := io.Copy(d.w, io.LimitReader(f, size))
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
