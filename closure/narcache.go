package closure

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/declarative/deploy/closure/nar"
)

// NARCache keeps the NARs a [Store] dumped in memory, so that a run that
// sends the same paths to many hosts dumps each once and sends the same
// bytes to all of them (set [Store.NARs]). Paths above MaxPath, and any
// path once Max bytes are held, are dumped each time as without a cache.
// Its zero value holds nothing: set the limits.
type NARCache struct {
	// Max bounds the bytes held; MaxPath the NAR size of a path held.
	Max, MaxPath int64

	mu   sync.Mutex
	used int64
	nars map[string]*cachedNAR
}

type cachedNAR struct {
	once sync.Once
	data []byte
	err  error
}

// narChunk is how much of a cached NAR one write carries: the transfer's
// progress and flow control see writes of the size a dump makes.
const narChunk = 256 << 10

// dump writes the NAR of p (at real, narSize bytes by its metadata) to w
// from the cache, dumping it first if no one has. It reports false, having
// written nothing, when the cache does not take p.
func (c *NARCache) dump(w io.Writer, p, real string, narSize int64) (bool, error) {
	if c == nil || narSize > c.MaxPath {
		return false, nil
	}
	c.mu.Lock()
	e := c.nars[p]
	if e == nil {
		if c.used+narSize > c.Max {
			c.mu.Unlock()
			return false, nil
		}
		if c.nars == nil {
			c.nars = map[string]*cachedNAR{}
		}
		e = &cachedNAR{}
		c.nars[p] = e
		c.used += narSize
	}
	c.mu.Unlock()
	e.once.Do(func() {
		var b bytes.Buffer
		b.Grow(int(narSize))
		e.err = nar.Dump(&b, real)
		if e.err == nil && int64(b.Len()) != narSize {
			e.err = fmt.Errorf("store path %q dumps to %d bytes, its metadata says %d (run 'deploy store verify')", p, b.Len(), narSize)
		}
		e.data = b.Bytes()
	})
	if e.err != nil {
		c.mu.Lock()
		if c.nars[p] == e {
			delete(c.nars, p)
			c.used -= narSize
		}
		c.mu.Unlock()
		return true, e.err
	}
	for data := e.data; len(data) > 0; {
		n := min(len(data), narChunk)
		if _, err := w.Write(data[:n]); err != nil {
			return true, err
		}
		data = data[n:]
	}
	return true, nil
}
