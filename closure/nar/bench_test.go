package nar

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// benchTree writes 64 MiB in 1000 small files and 12 large ones.
func benchTree(b *testing.B) (string, int64) {
	b.Helper()
	dir := b.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	var n int64
	for i := 0; i < 1000; i++ {
		p := filepath.Join(dir, "small", fmt.Sprint(i%20), fmt.Sprint(i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, data[:(i*97)%16384], 0o644)
		n += int64((i * 97) % 16384)
	}
	for i := 0; i < 12; i++ {
		os.WriteFile(filepath.Join(dir, fmt.Sprint("large", i)), data, 0o644)
		n += int64(len(data))
	}
	return dir, n
}

func BenchmarkDump(b *testing.B) {
	dir, n := benchTree(b)
	b.SetBytes(n)
	for b.Loop() {
		if err := Dump(io.Discard, dir); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDumpSHA256(b *testing.B) {
	dir, n := benchTree(b)
	b.SetBytes(n)
	for b.Loop() {
		if err := Dump(sha256.New(), dir); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRestore(b *testing.B) {
	dir, n := benchTree(b)
	var buf bytes.Buffer
	if err := Dump(&buf, dir); err != nil {
		b.Fatal(err)
	}
	out := b.TempDir()
	b.SetBytes(n)
	i := 0
	for b.Loop() {
		dest := filepath.Join(out, fmt.Sprint(i))
		i++
		if _, err := Restore(bytes.NewReader(buf.Bytes()), dest, RestoreOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		RemoveTree(dest)
		b.StartTimer()
	}
}
