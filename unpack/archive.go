package unpack

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/declarative/deploy/closure/nar"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ApplyTar applies an uncompressed tar stream to the tree.
func (t *Tree) ApplyTar(r io.Reader, opt Options) error {
	a, err := t.begin(opt)
	if err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		// The reader reports names it considers insecure along with the
		// header; split applies this package's own rules to them.
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return fmt.Errorf("%s: reading tar: %w", a.opt.Name, err)
		}
		if err := a.tarEntry(tr, hdr); err != nil {
			return err
		}
	}
}

func (a *applier) tarEntry(tr *tar.Reader, hdr *tar.Header) error {
	if err := a.t.count(a.opt.Name, hdr.Name, hdr.Size); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		what := map[byte]string{tar.TypeChar: "a character device", tar.TypeBlock: "a block device", tar.TypeFifo: "a FIFO"}[hdr.Typeflag]
		if !a.opt.Layer {
			return a.refuse(hdr.Name, "it is %s, which a package may not hold", what)
		}
		if p := path.Clean(strings.TrimLeft(hdr.Name, "/")); hdr.Typeflag != tar.TypeFifo && p != "dev" && !strings.HasPrefix(p, "dev/") {
			// The agent refuses these when it realizes the root
			// (package imageroot): refuse them at build time.
			return a.refuse(hdr.Name, "it is %s outside /dev, which a host does not realize", what)
		}
		a.skip(hdr.Name, what+" (a store path cannot hold one), skipped")
		return nil
	}
	parts, ok, err := a.split(hdr.Name)
	if err != nil || !ok {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return a.put(hdr.Name, parts, newDir(0))
	case tar.TypeReg, '\x00':
		if len(parts) > 0 && a.opt.Layer && isWhiteout(parts[len(parts)-1]) {
			return a.put(hdr.Name, parts, nil)
		}
		off, err := a.t.spoolFrom(tr, hdr.Size)
		if err != nil {
			return fmt.Errorf("%s: entry %q: %w", a.opt.Name, hdr.Name, err)
		}
		return a.put(hdr.Name, parts, &node{typ: typeFile, exec: hdr.Mode&0o111 != 0, off: off, size: hdr.Size})
	case tar.TypeSymlink:
		if err := nar.CheckTarget(hdr.Linkname); err != nil {
			return a.refuse(hdr.Name, "symbolic link: %v", err)
		}
		return a.put(hdr.Name, parts, &node{typ: typeSymlink, target: hdr.Linkname})
	case tar.TypeLink:
		if len(parts) > 0 && a.opt.Layer && isWhiteout(parts[len(parts)-1]) {
			return a.put(hdr.Name, parts, nil)
		}
		n, err := a.link(hdr.Name, hdr.Linkname)
		if err != nil {
			return err
		}
		return a.put(hdr.Name, parts, n)
	}
	if !a.opt.Layer {
		return a.refuse(hdr.Name, "its type %q is not a file, directory or link", hdr.Typeflag)
	}
	a.skip(hdr.Name, fmt.Sprintf("entry type %q, skipped", hdr.Typeflag))
	return nil
}

func isWhiteout(name string) bool {
	return len(name) > len(whiteoutPrefix) && name[:len(whiteoutPrefix)] == whiteoutPrefix
}

// ApplyZip applies a zip archive. Zip files hold no hard links; symbolic
// links (Unix mode bits in the external attributes) are kept.
func (t *Tree) ApplyZip(r io.ReaderAt, size int64, opt Options) error {
	a, err := t.begin(opt)
	if err != nil {
		return err
	}
	zr, err := zip.NewReader(r, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return fmt.Errorf("%s: reading zip: %w", a.opt.Name, err)
	}
	for _, f := range zr.File {
		size := int64(f.UncompressedSize64)
		if f.UncompressedSize64 > 1<<62 {
			size = -1
		}
		if err := a.t.count(a.opt.Name, f.Name, size); err != nil {
			return err
		}
		if err := a.zipEntry(f); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) zipEntry(f *zip.File) error {
	mode := f.Mode()
	if mode&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket|fs.ModeIrregular) != 0 {
		return a.refuse(f.Name, "it is a %s, which a package may not hold", mode.Type())
	}
	parts, ok, err := a.split(f.Name)
	if err != nil || !ok {
		return err
	}
	if mode.IsDir() {
		return a.put(f.Name, parts, newDir(0))
	}
	rc, err := f.Open()
	if err != nil {
		return fmt.Errorf("%s: entry %q: %w", a.opt.Name, f.Name, err)
	}
	defer rc.Close()
	if mode&fs.ModeSymlink != 0 {
		target, err := io.ReadAll(io.LimitReader(rc, nar.MaxTargetLen+1))
		if err != nil {
			return fmt.Errorf("%s: entry %q: %w", a.opt.Name, f.Name, err)
		}
		if err := nar.CheckTarget(string(target)); err != nil {
			return a.refuse(f.Name, "symbolic link: %v", err)
		}
		return a.put(f.Name, parts, &node{typ: typeSymlink, target: string(target)})
	}
	off, err := a.t.spoolFrom(rc, int64(f.UncompressedSize64))
	if err != nil {
		return fmt.Errorf("%s: entry %q: %w", a.opt.Name, f.Name, err)
	}
	return a.put(f.Name, parts, &node{typ: typeFile, exec: mode&0o111 != 0, off: off, size: int64(f.UncompressedSize64)})
}

// Format is an archive format [Detect] recognises.
type Format string

// The formats.
const (
	FormatTar      Format = "tar"
	FormatTarGzip  Format = "tar.gz"
	FormatTarXz    Format = "tar.xz"
	FormatTarZstd  Format = "tar.zst"
	FormatTarBzip2 Format = "tar.bz2"
	FormatZip      Format = "zip"
)

// Detect recognises an archive by its first bytes: a compressed stream
// (gzip, xz, zstd, bzip2) is taken to hold a tar archive.
func Detect(head []byte) (Format, bool) {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return FormatTarGzip, true
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return FormatTarXz, true
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return FormatTarZstd, true
	case bytes.HasPrefix(head, []byte("BZh")):
		return FormatTarBzip2, true
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return FormatZip, true
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return FormatTar, true
	}
	return "", false
}

// Decompress returns the tar stream inside r, a stream of format f (any
// but zip). close releases the decompressor.
func Decompress(r io.Reader, f Format) (tr io.Reader, close func(), err error) {
	nop := func() {}
	switch f {
	case FormatTar:
		return r, nop, nil
	case FormatTarGzip:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case FormatTarXz:
		z, err := xz.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, nop, nil
	case FormatTarZstd:
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	case FormatTarBzip2:
		return bzip2.NewReader(r), nop, nil
	}
	return nil, nil, fmt.Errorf("unpack: %q is not a compressed tar format", f)
}

// ApplyFile applies the archive in the file at p, whatever its format
// (see [Detect]), and returns the format.
func (t *Tree) ApplyFile(p string, opt Options) (Format, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("unpack: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("unpack: %w", err)
	}
	br := bufio.NewReaderSize(f, 64<<10)
	head, _ := br.Peek(512)
	format, ok := Detect(head)
	if opt.Name == "" {
		opt.Name = p
	}
	if !ok {
		return "", fmt.Errorf("%s: not an archive this version can unpack (tar, tar.gz, tar.xz, tar.zst, tar.bz2 or zip)", opt.Name)
	}
	if format == FormatZip {
		return format, t.ApplyZip(f, fi.Size(), opt)
	}
	r, closeFn, err := Decompress(br, format)
	if err != nil {
		return format, fmt.Errorf("%s: %s: %w", opt.Name, format, err)
	}
	defer closeFn()
	if err := t.ApplyTar(r, opt); err != nil {
		return format, err
	}
	return format, nil
}
