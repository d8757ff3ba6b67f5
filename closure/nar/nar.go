// Package nar reads and writes Nix archives (NAR), byte for byte as Nix does.
//
// # Format
//
// A NAR is a sequence of strings, each a little-endian uint64 length, the
// bytes, and zero padding to a multiple of 8. After the magic "nix-archive-1"
// comes one node:
//
//	node  = "(" "type" ( "regular" ["executable" ""] "contents" DATA
//	                   | "symlink" "target" TARGET
//	                   | "directory" { "entry" "(" "name" NAME "node" node ")" } ) ")"
//
// Entries are sorted by name (byte order) and unique; only the file type, the
// executable bit and the contents are recorded. The same tree always gives the
// same bytes.
//
// # Validation
//
// [Parse] accepts only the canonical form [Dump] writes, so that for every
// accepted input dumping the restored tree gives back the same bytes. It
// rejects bad magic, tags out of order, a non-empty executable marker,
// unsorted or duplicate names, names that are empty, ".", "..", contain "/" or
// NUL or exceed [MaxNameLen] bytes, symlink targets that are empty, contain
// NUL or exceed [MaxTargetLen] bytes, nesting at depth [MaxDepth] or more,
// non-zero padding, trailing data, and length prefixes that exceed the input
// (when its size is known) or a field's limit, before allocating anything.
package nar

import (
	"errors"
	"fmt"
)

// Magic is the first string of every NAR.
const Magic = "nix-archive-1"

// Limits enforced by both [Dump] and [Parse].
const (
	MaxNameLen   = 255  // bytes in a directory entry name
	MaxTargetLen = 4095 // bytes in a symlink target
	MaxDepth     = 64   // nodes at this depth (the root is 0) are rejected
)

// maxTagLen bounds the tokens of the grammar; the longest is "nix-archive-1".
const maxTagLen = 16

// Error describes a malformed archive. Path is the node it was found in
// ("" for the root) and Offset the byte offset into the archive.
type Error struct {
	Path   string
	Offset int64
	Err    error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("nar: offset %d: %v", e.Offset, e.Err)
	}
	return fmt.Sprintf("nar: %q at offset %d: %v", e.Path, e.Offset, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrTrailingData is wrapped by the error for bytes after the root node.
var ErrTrailingData = errors.New("trailing data after archive")

// CheckName reports whether name is acceptable as a directory entry name.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case name == "." || name == "..":
		return fmt.Errorf("name %q not allowed", name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name longer than %d bytes", MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return fmt.Errorf("name %q contains %q", name, name[i])
		}
	}
	return nil
}

// CheckTarget reports whether target is acceptable as a symlink target.
func CheckTarget(target string) error {
	switch {
	case target == "":
		return errors.New("empty symlink target")
	case len(target) > MaxTargetLen:
		return fmt.Errorf("symlink target longer than %d bytes", MaxTargetLen)
	}
	for i := 0; i < len(target); i++ {
		if target[i] == 0 {
			return errors.New("symlink target contains NUL")
		}
	}
	return nil
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
