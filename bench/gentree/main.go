// Command gentree writes a deterministic tree of mixed file sizes for
// benchmarks: many small files, some medium ones, a few large ones,
// executables and symlinks, in nested directories.
//
//	go run ./bench/gentree -size 1GiB DIR
//
// -shape large writes one file of the size instead; -shape small writes
// 2,000 files of 1 to 64 KiB in 40 directories (the size is ignored).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

func main() {
	size := flag.String("size", "1GiB", "total size of file contents (KiB, MiB, GiB suffixes)")
	shape := flag.String("shape", "mixed", "mixed, large (one file) or small (2,000 files of 1-64 KiB)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: gentree [-size N] DIR")
		os.Exit(2)
	}
	total, err := parseSize(*size)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gentree:", err)
		os.Exit(2)
	}
	gen := map[string]func(string, int64) error{"mixed": generate, "large": generateLarge, "small": generateSmall}[*shape]
	if gen == nil {
		fmt.Fprintf(os.Stderr, "gentree: -shape %q: want mixed, large or small\n", *shape)
		os.Exit(2)
	}
	if err := gen(flag.Arg(0), total); err != nil {
		fmt.Fprintln(os.Stderr, "gentree:", err)
		os.Exit(1)
	}
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return n * mult, nil
}

// generate splits total into 10% small files (0-16 KiB), 20% medium (1 MiB)
// and 70% large (64 MiB or total/16, whichever is smaller).
func generate(dir string, total int64) error {
	rng, write := newWriter()
	var used int64
	for i := 0; used < total/10; i++ {
		n := rng.Int64N(16 << 10)
		mode := os.FileMode(0o644)
		if i%17 == 0 {
			mode = 0o755
		}
		if err := write(filepath.Join(dir, "small", strconv.Itoa(i%64), strconv.Itoa(i/64)+".dat"), n, mode); err != nil {
			return err
		}
		if i%101 == 0 {
			os.Symlink(strconv.Itoa(i/64)+".dat", filepath.Join(dir, "small", strconv.Itoa(i%64), "link"+strconv.Itoa(i)))
		}
		used += n
	}
	for i := 0; used < total*3/10; i++ {
		if err := write(filepath.Join(dir, "medium", strconv.Itoa(i)+".bin"), 1<<20, 0o644); err != nil {
			return err
		}
		used += 1 << 20
	}
	large := min(int64(64<<20), max(total/16, 1<<20))
	for i := 0; used < total; i++ {
		n := min(large, total-used)
		if err := write(filepath.Join(dir, "large", strconv.Itoa(i)+".img"), n, 0o644); err != nil {
			return err
		}
		used += n
	}
	return nil
}

// newWriter returns the tree's random source and a function that writes a
// file of n random bytes, making its directories.
func newWriter() (*rand.Rand, func(p string, n int64, mode os.FileMode) error) {
	rng := rand.New(rand.NewChaCha8([32]byte{'d', 'e', 'p', 'l', 'o', 'y'}))
	buf := make([]byte, 1<<20)
	return rng, func(p string, n int64, mode os.FileMode) error {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(f, 1<<20)
		for n > 0 {
			k := min(n, int64(len(buf)))
			for i := 0; i < int(k); i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8 && i+j < int(k); j++ {
					buf[i+j] = byte(v >> (8 * j))
				}
			}
			w.Write(buf[:k])
			n -= k
		}
		if err := w.Flush(); err != nil {
			return err
		}
		return f.Close()
	}
}

// generateLarge writes one random file of total bytes.
func generateLarge(dir string, total int64) error {
	_, write := newWriter()
	return write(filepath.Join(dir, "large.img"), total, 0o644)
}

// generateSmall writes 2,000 random files of 1 to 64 KiB in 40 directories.
func generateSmall(dir string, _ int64) error {
	rng, write := newWriter()
	for i := range 2000 {
		if err := write(filepath.Join(dir, strconv.Itoa(i%40), strconv.Itoa(i)+".dat"), 1<<10+rng.Int64N(63<<10), 0o644); err != nil {
			return err
		}
	}
	return nil
}
