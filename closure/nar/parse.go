package nar

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sink receives the nodes of an archive from [Parse], in archive order.
// Names are entry names ("" for the root); a Directory call is matched by an
// EndDirectory call after its entries.
type Sink interface {
	Directory(name string) error
	EndDirectory() error
	// File must consume exactly size bytes from r (or return an error).
	File(name string, executable bool, size int64, r io.Reader) error
	Symlink(name, target string) error
}

// Options tunes [Parse].
type Options struct {
	// Size, when positive, is the exact size of the archive: a length prefix
	// beyond it, input ending before it, or data after the root node within
	// it is an error, and Parse reads nothing past it, so a caller can frame
	// archives in a stream. When zero the archive must be the whole input:
	// any byte after the root node is an error.
	Size int64
}

// Parse reads one archive from r, validating it completely (see the package
// documentation), and reports its nodes to sink. It returns the number of
// bytes the archive occupies. On error, sink may have seen a prefix of the
// archive; the caller must discard whatever it built.
func Parse(r io.Reader, sink Sink, opts Options) (int64, error) {
	p := &parser{sink: sink, limit: opts.Size}
	if p.limit > 0 {
		r = io.LimitReader(r, p.limit)
	}
	p.br = bufio.NewReaderSize(r, 64<<10)
	if err := p.expect(Magic, "magic"); err != nil {
		return p.off, err
	}
	if err := p.node("", "", 0); err != nil {
		return p.off, err
	}
	if p.limit > 0 && p.off != p.limit {
		return p.off, p.errf("", "%w: %d bytes", ErrTrailingData, p.limit-p.off)
	}
	if _, err := p.br.ReadByte(); err == nil {
		return p.off, p.errf("", "%w", ErrTrailingData)
	}
	return p.off, nil
}

type parser struct {
	br    *bufio.Reader
	sink  Sink
	off   int64
	limit int64
	buf   [8]byte
}

func (p *parser) errf(path, format string, args ...any) error {
	return &Error{Path: path, Offset: p.off, Err: fmt.Errorf(format, args...)}
}

func (p *parser) readFull(path string, b []byte) error {
	n, err := io.ReadFull(p.br, b)
	p.off += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return p.errf(path, "archive truncated")
		}
		return p.errf(path, "read: %v", err)
	}
	return nil
}

func (p *parser) u64(path string) (uint64, error) {
	if err := p.readFull(path, p.buf[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p.buf[:]), nil
}

func (p *parser) padding(path string, n uint64) error {
	if n%8 == 0 {
		return nil
	}
	pad := p.buf[:8-n%8]
	if err := p.readFull(path, pad); err != nil {
		return err
	}
	for _, b := range pad {
		if b != 0 {
			return p.errf(path, "non-zero padding")
		}
	}
	return nil
}

// str reads a string of at most max bytes; what names the field in errors.
func (p *parser) str(path string, max int, what string) (string, error) {
	n, err := p.u64(path)
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", p.errf(path, "%s: length %d exceeds limit %d", what, n, max)
	}
	if err := p.checkRemaining(path, n); err != nil {
		return "", err
	}
	b := make([]byte, n)
	if err := p.readFull(path, b); err != nil {
		return "", err
	}
	return string(b), p.padding(path, n)
}

func (p *parser) checkRemaining(path string, n uint64) error {
	if p.limit > 0 && n > uint64(p.limit-p.off) {
		return p.errf(path, "length %d exceeds the %d bytes left in the archive", n, p.limit-p.off)
	}
	return nil
}

func (p *parser) expect(tag, what string) error {
	return p.expectAt("", tag, what)
}

func (p *parser) expectAt(path, tag, what string) error {
	s, err := p.str(path, maxTagLen, what)
	if err != nil {
		return err
	}
	if s != tag {
		return p.errf(path, "%s: got %q, want %q", what, s, tag)
	}
	return nil
}

func (p *parser) node(path, name string, depth int) error {
	if depth >= MaxDepth {
		return p.errf(path, "nested deeper than %d", MaxDepth-1)
	}
	if err := p.expectAt(path, "(", "node start"); err != nil {
		return err
	}
	if err := p.expectAt(path, "type", "node type tag"); err != nil {
		return err
	}
	typ, err := p.str(path, maxTagLen, "node type")
	if err != nil {
		return err
	}
	switch typ {
	case "regular":
		if err := p.regular(path, name); err != nil {
			return err
		}
	case "symlink":
		if err := p.expectAt(path, "target", "symlink target tag"); err != nil {
			return err
		}
		target, err := p.str(path, MaxTargetLen, "symlink target")
		if err != nil {
			return err
		}
		if err := CheckTarget(target); err != nil {
			return p.errf(path, "%v", err)
		}
		if err := p.sink.Symlink(name, target); err != nil {
			return err
		}
	case "directory":
		if err := p.directory(path, name, depth); err != nil {
			return err
		}
		return nil // directory consumes its own ")"
	default:
		return p.errf(path, "unknown node type %q", typ)
	}
	return p.expectAt(path, ")", "node end")
}

func (p *parser) regular(path, name string) error {
	tag, err := p.str(path, maxTagLen, "regular file tag")
	if err != nil {
		return err
	}
	executable := false
	if tag == "executable" {
		executable = true
		marker, err := p.str(path, maxTagLen, "executable marker")
		if err != nil {
			return err
		}
		if marker != "" {
			return p.errf(path, "executable marker: got %q, want empty", marker)
		}
		if tag, err = p.str(path, maxTagLen, "regular file tag"); err != nil {
			return err
		}
	}
	if tag != "contents" {
		return p.errf(path, "regular file tag: got %q, want %q", tag, "contents")
	}
	size, err := p.u64(path)
	if err != nil {
		return err
	}
	if size > 1<<62 {
		return p.errf(path, "file size %d out of range", size)
	}
	if err := p.checkRemaining(path, size); err != nil {
		return err
	}
	cr := &countingReader{r: io.LimitReader(p.br, int64(size))}
	if err := p.sink.File(name, executable, int64(size), cr); err != nil {
		p.off += cr.n
		return err
	}
	p.off += cr.n
	if cr.n != int64(size) {
		// The sink stopped early: drain, so that a truncated input is
		// reported as such rather than as a sink bug.
		n, err := io.Copy(io.Discard, cr)
		p.off += n
		if err != nil || cr.n != int64(size) {
			return p.errf(path, "archive truncated")
		}
	}
	return p.padding(path, size)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

func (p *parser) directory(path, name string, depth int) error {
	if err := p.sink.Directory(name); err != nil {
		return err
	}
	prev := ""
	first := true
	for {
		tag, err := p.str(path, maxTagLen, "directory tag")
		if err != nil {
			return err
		}
		if tag == ")" {
			return p.sink.EndDirectory()
		}
		if tag != "entry" {
			return p.errf(path, "directory tag: got %q, want %q or %q", tag, "entry", ")")
		}
		if err := p.expectAt(path, "(", "entry start"); err != nil {
			return err
		}
		if err := p.expectAt(path, "name", "entry name tag"); err != nil {
			return err
		}
		child, err := p.str(path, MaxNameLen, "entry name")
		if err != nil {
			return err
		}
		if err := CheckName(child); err != nil {
			return p.errf(path, "%v", err)
		}
		if !first && child <= prev {
			if child == prev {
				return p.errf(path, "duplicate entry %q", child)
			}
			return p.errf(path, "entry %q not sorted after %q", child, prev)
		}
		first, prev = false, child
		if err := p.expectAt(join(path, child), "node", "entry node tag"); err != nil {
			return err
		}
		if err := p.node(join(path, child), child, depth+1); err != nil {
			return err
		}
		if err := p.expectAt(path, ")", "entry end"); err != nil {
			return err
		}
	}
}
