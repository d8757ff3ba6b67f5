package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"os"

	"github.com/declarative/deploy/closure"

	"github.com/declarative/deploy/closure/nar"
)

// narCommands are deploy nar's.
var narCommands = []command{
	{name: "dump", summary: "write a file tree as a NAR on stdout", run: runNarDump},
	{name: "restore", summary: "restore a NAR from stdin into a new file tree", run: runNarRestore},
	{name: "hash", summary: "the SHA-256 of a tree's NAR, in Nix's base-32", run: runNarHash},
}

func runNarDump(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "nar dump", "PATH")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(e.stdout, 1<<20)
	if err := nar.Dump(w, pos[0]); err != nil {
		return err
	}
	return w.Flush()
}

func runNarRestore(_ context.Context, e *env, args []string) error {
	var sync bool
	fs := newFlags(e, "nar restore", "DEST < NAR")
	fs.BoolVar(&sync, "sync", false, "fsync every file and directory")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	// Restore refuses an existing DEST itself (and leaves it alone); say
	// why before reading the archive.
	if _, err := os.Lstat(pos[0]); err == nil {
		return fmt.Errorf("nar restore: %q exists: restore creates DEST, give a path that does not exist yet", pos[0])
	}
	_, err = nar.Restore(e.stdin, pos[0], nar.RestoreOptions{Sync: sync})
	return err
}

// runNarHash prints the SHA-256 of a tree's NAR in Nix's base-32, like
// nix-hash --type sha256 --base32.
func runNarHash(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "nar hash", "PATH...")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	for _, p := range pos {
		h := sha256.New()
		if err := nar.Dump(h, p); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, closure.Nix32(sum(h)))
	}
	return nil
}

func sum(h hash.Hash) []byte { return h.Sum(nil) }
