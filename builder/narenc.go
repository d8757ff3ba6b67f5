package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"

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

func sortedUnique(ss []string) []string {
	out := append([]string(nil), ss...)
	sort.Strings(out)
	return compactStrings(out)
}

// Batch collects the store objects (files, units, systems) of one or more
// builds and adds them to the store together ([closure.Batch]: one flush to
// disk for all of them, instead of several per object): a build of a
// thousand hosts adds two thousand objects. The systems that [Builder.BuildInto]
// returns are valid once [Batch.Commit] returned nil. It is safe for
// concurrent builds.
type Batch struct {
	store *closure.Store
	b     *closure.Batch
	mu    sync.Mutex
	// order is every object staged, references first; seen says which.
	order []string
	seen  map[string]bool
}

// NewBatch starts a batch of builds' objects; Close ends it.
func (b *Builder) NewBatch(ctx context.Context) (*Batch, error) {
	cb, err := b.Store.NewBatch(ctx)
	if err != nil {
		return nil, err
	}
	return &Batch{store: b.Store, b: cb, seen: map[string]bool{}}, nil
}

// add returns the store path of n, staged for the commit unless it is valid
// already or staged by another build.
func (x *Batch) add(n *memNode, name string, refs []string) (string, error) {
	data := narBytes(n)
	pi := &closure.PathInfo{NarHash: sha256.Sum256(data), NarSize: int64(len(data)), References: sortedUnique(refs)}
	var err error
	if pi.Path, err = closure.MakeSourcePath(x.store.StoreDir, pi.NarHash, name, pi.References); err != nil {
		return "", err
	}
	x.mu.Lock()
	staged := x.seen[pi.Path]
	x.mu.Unlock()
	if staged {
		return pi.Path, nil
	}
	if ok, err := x.store.Valid(pi.Path); err != nil {
		return "", err
	} else if ok {
		return pi.Path, nil
	}
	if err := x.b.Stage(bytes.NewReader(data), pi, false); err != nil {
		return "", err
	}
	// In the order after it is staged, and before its path is returned:
	// whatever refers to it comes later.
	x.mu.Lock()
	if !x.seen[pi.Path] {
		x.seen[pi.Path] = true
		x.order = append(x.order, pi.Path)
	}
	x.mu.Unlock()
	return pi.Path, nil
}

// Commit adds what the builds staged to the store; every object is valid
// when it returns nil.
func (x *Batch) Commit(ctx context.Context) error {
	x.mu.Lock()
	order := x.order
	x.order, x.seen = nil, map[string]bool{}
	x.mu.Unlock()
	if len(order) == 0 {
		return nil
	}
	if _, err := x.b.Commit(ctx, order); err != nil {
		return err
	}
	for _, path := range order {
		if ok, err := x.store.Valid(path); err != nil {
			return err
		} else if !ok {
			// Commit drops a path whose references are not valid.
			return fmt.Errorf("store: %s was not added: a reference is missing", path)
		}
	}
	return nil
}

// Close discards what was not committed and releases the store lock.
func (x *Batch) Close() { x.b.Close() }
