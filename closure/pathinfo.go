package closure

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// PathInfo is the metadata of a valid store path, stored as a narinfo-style
// text file.
type PathInfo struct {
	Path       string   `json:"path"`       // full store path
	NarHash    [32]byte `json:"-"`          // SHA-256 of the path's NAR
	NarSize    int64    `json:"narSize"`    // size of the NAR in bytes
	References []string `json:"references"` // full store paths, sorted
	Deriver    string   `json:"deriver,omitempty"`
	Sig        []string `json:"signatures,omitempty"`
}

// NarHashString returns the hash in Nix's narinfo form, "sha256:<nix32>".
func (pi *PathInfo) NarHashString() string {
	return "sha256:" + Nix32(pi.NarHash[:])
}

// ParseNarHash parses "sha256:<nix32>" or "sha256:<hex>".
func ParseNarHash(s string) ([32]byte, error) {
	var h [32]byte
	rest, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return h, fmt.Errorf("nar hash %q: want sha256:<nix32>", s)
	}
	if len(rest) == 64 {
		var b []byte
		if _, err := fmt.Sscanf(rest, "%x", &b); err == nil && len(b) == 32 {
			copy(h[:], b)
			return h, nil
		}
	}
	b, err := ParseNix32(rest, 32)
	if err != nil {
		return h, fmt.Errorf("nar hash %q: %w", s, err)
	}
	copy(h[:], b)
	return h, nil
}

// marshal renders the metadata file. References are written as base names,
// as in Nix's narinfo.
func (pi *PathInfo) marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "StorePath: %s\n", pi.Path)
	fmt.Fprintf(&b, "NarHash: %s\n", pi.NarHashString())
	fmt.Fprintf(&b, "NarSize: %d\n", pi.NarSize)
	refs := make([]string, len(pi.References))
	for i, r := range pi.References {
		refs[i] = path.Base(r)
	}
	fmt.Fprintf(&b, "References: %s\n", strings.Join(refs, " "))
	if pi.Deriver != "" {
		fmt.Fprintf(&b, "Deriver: %s\n", pi.Deriver)
	}
	for _, s := range pi.Sig {
		fmt.Fprintf(&b, "Sig: %s\n", s)
	}
	return b.Bytes()
}

// parsePathInfo parses a metadata file of a store in storeDir.
func parsePathInfo(storeDir string, data []byte) (*PathInfo, error) {
	pi := &PathInfo{}
	seen := map[string]bool{}
	// Lines can be long (References of a path with thousands of
	// references), so no line-length-limited scanner here.
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			if k, ok = strings.CutSuffix(line, ":"); !ok {
				return nil, fmt.Errorf("line %q: want Key: value", line)
			}
		}
		if seen[k] && k != "Sig" {
			return nil, fmt.Errorf("field %s repeated", k)
		}
		seen[k] = true
		switch k {
		case "StorePath":
			if _, _, err := SplitPath(storeDir, v); err != nil {
				return nil, err
			}
			pi.Path = v
		case "NarHash":
			h, err := ParseNarHash(v)
			if err != nil {
				return nil, err
			}
			pi.NarHash = h
		case "NarSize":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("field NarSize: %q is not a size", v)
			}
			pi.NarSize = n
		case "References":
			for _, r := range strings.Fields(v) {
				full := storeDir + "/" + r
				if _, _, err := SplitPath(storeDir, full); err != nil {
					return nil, fmt.Errorf("field References: %w", err)
				}
				pi.References = append(pi.References, full)
			}
		case "Deriver":
			pi.Deriver = v
		case "Sig":
			pi.Sig = append(pi.Sig, v)
		}
	}
	for _, k := range []string{"StorePath", "NarHash", "NarSize"} {
		if !seen[k] {
			return nil, fmt.Errorf("field %s missing", k)
		}
	}
	slices.Sort(pi.References)
	return pi, nil
}

// hashWriter is the SHA-256 of a NAR together with its size.
type hashWriter struct {
	h interface {
		Write([]byte) (int, error)
		Sum([]byte) []byte
	}
	n int64
}

func newHashWriter() *hashWriter { return &hashWriter{h: sha256.New()} }

func (w *hashWriter) Write(b []byte) (int, error) {
	w.n += int64(len(b))
	return w.h.Write(b)
}

func (w *hashWriter) sum() [32]byte {
	var out [32]byte
	copy(out[:], w.h.Sum(nil))
	return out
}

// asyncHashChunk is the size of the chunks an asyncHasher hands to its
// goroutine, and asyncHashChunks how many may be in flight.
const (
	asyncHashChunk  = 1 << 20
	asyncHashChunks = 4
)

// asyncHasher computes a NAR hash on its own goroutine: Write copies into a
// chunk and hands full chunks over, so that SHA-256 of one chunk runs beside
// the parsing and file writes of the next. sum waits for the hash; a caller
// that abandons the hash calls stop.
type asyncHasher struct {
	n    int64
	cur  []byte
	work chan []byte
	free chan []byte
	out  chan [32]byte
	made int
	// closed is set once work is closed.
	closed bool
}

func newAsyncHasher() *asyncHasher {
	a := &asyncHasher{
		work: make(chan []byte, asyncHashChunks),
		free: make(chan []byte, asyncHashChunks),
		out:  make(chan [32]byte, 1),
	}
	go func() {
		h := sha256.New()
		for b := range a.work {
			h.Write(b)
			a.free <- b[:0]
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		a.out <- sum
	}()
	return a
}

// hashChunks pools the asyncHashers' chunks: a receive of thousands of
// small paths must not allocate a fresh 1 MiB chunk for each.
var hashChunks = sync.Pool{New: func() any { b := make([]byte, 0, asyncHashChunk); return &b }}

// release returns the chunks to the pool once the goroutine has ended.
func (a *asyncHasher) release() {
	if a.cur != nil {
		a.free <- a.cur
		a.cur = nil
	}
	for len(a.free) > 0 {
		b := (<-a.free)[:0]
		hashChunks.Put(&b)
	}
}

func (a *asyncHasher) Write(b []byte) (int, error) {
	n := len(b)
	a.n += int64(n)
	for len(b) > 0 {
		if a.cur == nil {
			if a.made < asyncHashChunks {
				a.cur = (*hashChunks.Get().(*[]byte))[:0]
				a.made++
			} else {
				a.cur = <-a.free
			}
		}
		c := copy(a.cur[len(a.cur):cap(a.cur)], b)
		a.cur = a.cur[:len(a.cur)+c]
		b = b[c:]
		if len(a.cur) == cap(a.cur) {
			a.work <- a.cur
			a.cur = nil
		}
	}
	return n, nil
}

// sum returns the hash of everything written; the hasher is done after it.
func (a *asyncHasher) sum() [32]byte {
	if len(a.cur) > 0 {
		a.work <- a.cur
		a.cur = nil
	}
	close(a.work)
	a.closed = true
	sum := <-a.out
	a.release()
	return sum
}

// stop ends the goroutine of a hasher whose sum is not wanted (an import
// that failed); after sum it does nothing.
func (a *asyncHasher) stop() {
	if !a.closed {
		close(a.work)
		a.closed = true
		<-a.out
		a.release()
	}
}
