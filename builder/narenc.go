package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sort"

	"github.com/declarative/deploy/closure"
)

// memNode is an in-memory file tree: a regular file, a symlink or a
// directory. The builder assembles its objects in memory and hashes their
// NAR serialisation directly, so a rebuild of unchanged inputs writes
// nothing to disk.
type memNode struct {
	dir        map[string]*memNode // non-nil for a directory
	target     string              // non-empty for a symlink
	contents   []byte
	executable bool
}

func memDir() *memNode { return &memNode{dir: map[string]*memNode{}} }

// narBytes serialises n as a NAR (the format of package closure/nar:
// nix-archive-1, entries sorted by name, strings length-prefixed and padded
// to 8 bytes).
func narBytes(n *memNode) []byte {
	var b bytes.Buffer
	str := func(s string) {
		var l [8]byte
		binary.LittleEndian.PutUint64(l[:], uint64(len(s)))
		b.Write(l[:])
		b.WriteString(s)
		if pad := len(s) % 8; pad != 0 {
			b.Write(make([]byte, 8-pad))
		}
	}
	var node func(n *memNode)
	node = func(n *memNode) {
		str("(")
		str("type")
		switch {
		case n.dir != nil:
			str("directory")
			names := make([]string, 0, len(n.dir))
			for name := range n.dir {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				str("entry")
				str("(")
				str("name")
				str(name)
				str("node")
				node(n.dir[name])
				str(")")
			}
		case n.target != "":
			str("symlink")
			str("target")
			str(n.target)
		default:
			str("regular")
			if n.executable {
				str("executable")
				str("")
			}
			str("contents")
			str(string(n.contents))
		}
		str(")")
	}
	str("nix-archive-1")
	node(n)
	return b.Bytes()
}

// addMem adds n to the store unless its path is already valid, and returns
// the path.
func addMem(ctx context.Context, s *closure.Store, n *memNode, name string, refs []string) (string, error) {
	data := narBytes(n)
	p, err := closure.MakeSourcePath(s.StoreDir, sha256.Sum256(data), name, sortedUnique(refs))
	if err != nil {
		return "", err
	}
	if ok, err := s.Valid(p); err != nil {
		return "", err
	} else if ok {
		return p, nil
	}
	pi, err := s.AddNAR(ctx, bytes.NewReader(data), name, refs)
	if err != nil {
		return "", err
	}
	return pi.Path, nil
}

func sortedUnique(ss []string) []string {
	out := append([]string(nil), ss...)
	sort.Strings(out)
	return compactStrings(out)
}
