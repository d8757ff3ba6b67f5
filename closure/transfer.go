package closure

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// The transfer protocol, version 1 (docs/transfer.md). The agent serves it
// on one SSH channel (`deploy-agent receive`); the operator drives it with
// [Send]. Control messages are single-line JSON objects with a "t" field;
// each "path" message is followed by exactly narSize bytes of NAR.
//
//	agent → operator  {"t":"hello","proto":"deploy-receive","version":1,"storeDir":...,"agent":...,"features":["cache"]}
//	operator → agent  {"t":"want","paths":[...],"compression":"none"|"zstd","cache":{"url":...,"keys":[...]}}
//	agent → operator  with a cache: {"t":"fetched","path":...,"bytes":N} per path fetched from it,
//	                  or {"t":"cache","error":...} when it could not be used
//	agent → operator  {"t":"missing","paths":[...]}             one round trip
//	operator → agent  (zstd from here on if asked)
//	                  {"t":"path","path":...,"narHash":...,"narSize":N,"references":[...]} + N bytes
//	                  ... one per missing path, references first
//	                  {"t":"end"}
//	agent → operator  {"t":"done","path":...,"bytes":N}          after each path is valid
//	                  {"t":"ok","imported":K}                   or {"t":"error","path":...,"error":...}
const (
	ProtocolName    = "deploy-receive"
	ProtocolVersion = 1
)

// maxLine bounds a control message (a want list of ~500k paths).
const maxLine = 64 << 20

type message struct {
	T           string   `json:"t"`
	Proto       string   `json:"proto,omitempty"`
	Version     int      `json:"version,omitempty"`
	StoreDir    string   `json:"storeDir,omitempty"`
	Agent       string   `json:"agent,omitempty"`
	Paths       []string `json:"paths,omitempty"`
	Compression string   `json:"compression,omitempty"`
	Path        string   `json:"path,omitempty"`
	NarHash     string   `json:"narHash,omitempty"`
	NarSize     int64    `json:"narSize,omitempty"`
	References  []string `json:"references,omitempty"`
	Bytes       int64    `json:"bytes,omitempty"`
	Imported    int      `json:"imported,omitempty"`
	Error       string   `json:"error,omitempty"`
	Current     string   `json:"current,omitempty"`
	BootDefault string   `json:"bootDefault,omitempty"`
	Features    []string `json:"features,omitempty"`
	// Sigs are a path's signatures ("name:base64"); Keys, in a want list,
	// the public keys whose signatures vouch for the names of paths that
	// are not content-addressed (Nix's input-addressed paths).
	Sigs []string `json:"sigs,omitempty"`
	Keys []string `json:"keys,omitempty"`
	// Cache, in a want list, asks the agent to fetch the missing paths it
	// can from a binary cache before answering what is still missing.
	Cache *CacheSpec `json:"cache,omitempty"`
	// Pin (want) names wanted paths to keep as pushed roots once the
	// transfer ends (see Store.Pin); Pinned (ok) says how many were.
	Pin    []string `json:"pin,omitempty"`
	Pinned int      `json:"pinned,omitempty"`
}

// CacheSpec names a binary cache that a receiving agent fetches from: its
// URL as the host reaches it (http(s):// or file://) and the public keys
// ("name:base64") whose signatures it trusts.
type CacheSpec struct {
	URL  string   `json:"url"`
	Keys []string `json:"keys"`
}

// FeatureCache is the hello's feature of agents that fetch from a cache.
const FeatureCache = "cache"

// FetchFunc fetches the paths of want (references first) that the store
// lacks from the cache spec names, and makes them valid; report is called
// for each path made valid. An error that
// wraps [ErrCacheUnavailable] means the cache could not be used (the
// transfer goes on over the connection); any other error ends the transfer.
type FetchFunc func(ctx context.Context, spec *CacheSpec, want []string, report func(path string, narSize int64)) error

// ErrCacheUnavailable marks a cache that could not be used.
var ErrCacheUnavailable = errors.New("cache unavailable")

// ProtocolError is a violation of the transfer protocol by the peer.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "transfer protocol: " + e.Msg }

func protoErrorf(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

type lineReader struct{ br *bufio.Reader }

func (lr *lineReader) read() (*message, error) {
	var line []byte
	for {
		frag, err := lr.br.ReadSlice('\n')
		line = append(line, frag...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) && len(line) < maxLine {
			continue
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, protoErrorf("control message longer than %d bytes", maxLine)
		}
		if errors.Is(err, io.EOF) {
			if len(line) == 0 {
				return nil, io.EOF
			}
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	m := &message{}
	if err := json.Unmarshal(line, m); err != nil {
		return nil, protoErrorf("bad control message: %v", err)
	}
	return m, nil
}

type lineWriter struct {
	w interface {
		io.Writer
		Flush() error
	}
}

func (lw *lineWriter) write(m *message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := lw.w.Write(append(b, '\n')); err != nil {
		return err
	}
	return lw.w.Flush()
}

// ReceiveOptions tunes [Store.Receive].
type ReceiveOptions struct {
	// Agent names the receiving agent's version in the hello message.
	Agent string
	// Logf, if set, receives a line per imported path.
	Logf func(format string, args ...any)
	// Systems, if set, reports the target's current system and boot
	// default (store paths, "" if none); the hello carries them, so the
	// operator learns in the same round trip whether activation is needed.
	Systems func() (current, bootDefault string)
	// Fetch, if set, fetches from a binary cache when the want list names
	// one (the hello then offers [FeatureCache]).
	Fetch FetchFunc
	// VerifySig, if set, accepts a path that is not content-addressed when
	// one of its signatures is valid by one of keys (the want list's). Only
	// then are such paths accepted.
	VerifySig func(pi *PathInfo, keys []string) error
}

// TransferStats sums up a transfer.
type TransferStats struct {
	Wanted   int   // paths in the operator's list
	Missing  int   // paths the target lacked
	Imported int   // paths made valid
	NarBytes int64 // NAR bytes of the imported paths
	// MissingBytes is the NAR size of the missing paths (what a copy sends).
	MissingBytes int64
	// MissingPaths are the paths the target lacked, references first.
	MissingPaths []string
	// Agent, Current and BootDefault are what the agent's hello said: its
	// version, and the target's current and boot-default systems.
	Agent, Current, BootDefault string
	// Fetched and FetchedBytes count the paths (and their NAR bytes) the
	// agent fetched from the cache; CacheError says why it could not use
	// the cache ("" if it could, or none was asked for).
	Fetched      int
	FetchedBytes int64
	CacheError   string
	// PinAsked is how many of SendOptions.Pin were asked for (not those
	// the host runs or boots already); Pinned is how many of them the
	// agent keeps as pushed roots (0 from agents that keep none).
	PinAsked, Pinned int
}

// Receive serves the agent side of one transfer on r and w (see the
// protocol above): it answers which of the wanted paths are missing, then
// imports each path the operator sends with [Store.Import]. It returns
// after the operator's end message, or at the first error, which it also
// reports to the operator.
func (s *Store) Receive(ctx context.Context, r io.Reader, w io.Writer, opts ReceiveOptions) (*TransferStats, error) {
	bw := bufio.NewWriter(w)
	out := &lineWriter{w: bw}
	in := &lineReader{br: bufio.NewReaderSize(r, 256<<10)}
	stats := &TransferStats{}
	fail := func(path string, err error) (*TransferStats, error) {
		out.write(&message{T: "error", Path: path, Error: err.Error()})
		return stats, err
	}
	hello := &message{T: "hello", Proto: ProtocolName, Version: ProtocolVersion, StoreDir: s.StoreDir, Agent: opts.Agent}
	if opts.Fetch != nil {
		hello.Features = []string{FeatureCache}
	}
	if opts.Systems != nil {
		hello.Current, hello.BootDefault = opts.Systems()
	}
	if err := out.write(hello); err != nil {
		return stats, err
	}
	req, err := in.read()
	if err != nil {
		return stats, fmt.Errorf("transfer: reading the want list: %w", err)
	}
	if req.T != "want" {
		return fail("", protoErrorf("got %q, want a want list", req.T))
	}
	wanted := make(map[string]bool, len(req.Paths))
	for _, p := range req.Paths {
		if _, _, err := SplitPath(s.StoreDir, p); err != nil {
			return fail(p, err)
		}
		wanted[p] = true
	}
	for _, p := range req.Pin {
		if !wanted[p] {
			return fail(p, protoErrorf("asked to pin %q, which is not wanted", p))
		}
	}
	// The store lock, held shared for the whole receive, is taken before
	// the missing list is answered: when this receive is alone, taking it
	// sweeps what interrupted receives left (temporary directories, and
	// batch commits cut by a crash, which may unregister paths), so the
	// answer is about the store as it will be, and a receive with nothing
	// to import still cleans up after a killed one.
	if err := s.init(); err != nil {
		return fail("", err)
	}
	unlock, err := s.lockShared(ctx)
	if err != nil {
		return fail("", err)
	}
	b := &receiveBatch{s: s, ctx: ctx, out: out, stats: stats, logf: opts.Logf, unlock: unlock, keys: req.Keys, verifySig: opts.VerifySig}
	defer b.release()
	if req.Cache != nil && opts.Fetch != nil {
		err := opts.Fetch(ctx, req.Cache, req.Paths, func(p string, n int64) {
			stats.Fetched++
			stats.FetchedBytes += n
			out.write(&message{T: "fetched", Path: p, Bytes: n})
		})
		switch {
		case errors.Is(err, ErrCacheUnavailable):
			stats.CacheError = err.Error()
			if err := out.write(&message{T: "cache", Error: err.Error()}); err != nil {
				return stats, err
			}
		case err != nil:
			return fail("", err)
		}
	}
	missing, err := s.Missing(req.Paths)
	if err != nil {
		return fail("", err)
	}
	stats.Wanted, stats.Missing = len(req.Paths), len(missing)
	if err := out.write(&message{T: "missing", Paths: missing}); err != nil {
		return stats, err
	}
	switch req.Compression {
	case "", "none":
	case "zstd":
		zr, err := zstd.NewReader(in.br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return fail("", err)
		}
		defer zr.Close()
		in = &lineReader{br: bufio.NewReaderSize(zr, 256<<10)}
	default:
		return fail("", protoErrorf("unknown compression %q", req.Compression))
	}
	expected := map[string]bool{}
	for _, p := range missing {
		expected[p] = true
	}
	for {
		m, err := in.read()
		if err != nil {
			// A cut stream: what is staged and verified is still good, so
			// the rerun need not send it again.
			b.flush()
			return stats, fmt.Errorf("transfer: %w", err)
		}
		switch m.T {
		case "end":
			if err := b.flush(); err != nil {
				return fail("", err)
			}
			// Under the shared store lock still: no GC between the last
			// import and the pin.
			var pin []string
			for _, p := range req.Pin {
				if ok, err := s.Valid(p); err == nil && ok {
					pin = append(pin, p)
				}
			}
			if len(pin) > 0 && s.PinsDir != "" {
				if err := s.Pin(pin...); err != nil {
					return fail("", err)
				}
				stats.Pinned = len(pin)
			}
			return stats, out.write(&message{T: "ok", Imported: stats.Imported, Pinned: stats.Pinned})
		case "path":
		default:
			b.flush()
			return fail("", protoErrorf("got %q, want a path or the end", m.T))
		}
		if err := b.add(in.br, m, expected); err != nil {
			b.flush()
			return fail(m.Path, err)
		}
	}
}

// Batch limits of [Store.Receive]: staged paths are committed together
// (see [Store.commit]) once this many NAR bytes or paths are staged, or the
// oldest has waited this long, so that the flushes are paid per batch and
// not per path, while a slow link still sees paths confirmed every second.
// A killed agent loses at most the batch in progress; the rerun re-sends it.
var (
	receiveBatchBytes int64 = 64 << 20
	receiveBatchPaths       = 4096
	receiveBatchAge         = time.Second
)

// receiveBatch stages the paths of one transfer and commits them in
// batches, reporting each path's "done" once it is valid.
type receiveBatch struct {
	s       *Store
	ctx     context.Context
	out     *lineWriter
	stats   *TransferStats
	logf    func(string, ...any)
	unlock  func()          // releases the store lock, held shared for the whole receive
	staged  []*staged       // in arrival order, references first
	pending map[string]bool // the paths in staged
	bytes   int64           // NAR bytes in staged
	since   time.Time       // when the first of staged was staged
	// keys and verifySig accept signed paths that are not
	// content-addressed (see ReceiveOptions.VerifySig).
	keys      []string
	verifySig func(*PathInfo, []string) error
}

// add reads one path's NAR and stages it, committing the batch when full.
func (b *receiveBatch) add(r io.Reader, m *message, expected map[string]bool) error {
	if !expected[m.Path] {
		return protoErrorf("%q was not asked for or was sent twice", m.Path)
	}
	delete(expected, m.Path)
	h, err := ParseNarHash(m.NarHash)
	if err != nil {
		return err
	}
	pi := &PathInfo{Path: m.Path, NarHash: h, NarSize: m.NarSize, References: m.References, Sig: m.Sigs}
	if err := b.ctx.Err(); err != nil {
		return err
	}
	if err := b.s.checkName(pi); err != nil {
		return err
	}
	if err := b.s.checkContentAddress(pi); err != nil {
		// Not its content address: acceptable only as a path signed by
		// a key the want list trusts (a Nix package).
		if b.verifySig == nil || len(b.keys) == 0 || len(pi.Sig) == 0 {
			return err
		}
		if verr := b.verifySig(pi, b.keys); verr != nil {
			return fmt.Errorf("%w (and %v)", err, verr)
		}
	}
	if err := b.s.checkRefs(pi, b.pending); err != nil {
		return err
	}
	if ok, err := b.s.Valid(pi.Path); err != nil {
		return err
	} else if ok {
		// Made valid by someone else since the want list was answered.
		if err := discardNAR(r, pi); err != nil {
			return err
		}
		return b.done(pi)
	}
	st, err := b.s.stage(r, pi)
	if err != nil {
		return err
	}
	if b.pending == nil {
		b.pending = map[string]bool{}
		b.since = time.Now()
	}
	b.staged = append(b.staged, st)
	b.pending[pi.Path] = true
	b.bytes += pi.NarSize
	if b.bytes >= receiveBatchBytes || len(b.staged) >= receiveBatchPaths || time.Since(b.since) >= receiveBatchAge {
		return b.flush()
	}
	return nil
}

// flush commits the staged paths and reports them done.
func (b *receiveBatch) flush() error {
	batch := b.staged
	b.staged, b.pending, b.bytes = nil, nil, 0
	if len(batch) == 0 {
		return nil
	}
	if err := b.s.commit(b.ctx, batch); err != nil {
		return err
	}
	for _, st := range batch {
		if err := b.done(st.pi); err != nil {
			return err
		}
	}
	return nil
}

func (b *receiveBatch) done(pi *PathInfo) error {
	b.stats.Imported++
	b.stats.NarBytes += pi.NarSize
	if b.logf != nil {
		b.logf("received %s (%d bytes)", pi.Path, pi.NarSize)
	}
	return b.out.write(&message{T: "done", Path: pi.Path, Bytes: pi.NarSize})
}

// release discards anything still staged and releases the store lock.
func (b *receiveBatch) release() {
	for _, st := range b.staged {
		st.discard()
	}
	if b.unlock != nil {
		b.unlock()
	}
}

// Progress reports a step of [Send].
type Progress struct {
	Path      string // the path being sent or just confirmed
	Sent      int64  // NAR bytes of all paths written to the connection so far
	Confirmed int64  // NAR bytes of all paths the agent has made valid
	Total     int64  // NAR bytes of all missing paths
	Done      bool   // Path has just been made valid on the target
}

// SendOptions tunes [Send].
type SendOptions struct {
	// Compress asks for a zstd-compressed stream (for slow links).
	Compress bool
	// Progress, if set, is called as data is written and confirmed. It is
	// called from two goroutines, never concurrently.
	Progress func(Progress)
	// DryRun stops after the missing list: nothing is sent, and the stats
	// say what a copy would send.
	DryRun bool
	// Cache, if set (and the agent offers the feature), has the agent
	// fetch what it can from a binary cache first; only the rest is sent.
	Cache *CacheSpec
	// Fetched, if set, is called for each path the agent fetched from the
	// cache.
	Fetched func(path string, narSize int64)
	// Keys are public keys ("name:base64") whose signatures vouch for the
	// names of the paths sent that are not content-addressed (packages
	// from Nix caches); each such path is sent with its signatures.
	Keys []string
	// Pin names paths (of those sent) the agent keeps as pushed roots once
	// the transfer ends, so that a gc before their activation keeps them
	// (see [Store.Pin]); not with DryRun.
	Pin []string
}

// AgentError is an error the agent reported during a transfer.
type AgentError struct {
	Path string
	Msg  string
}

func (e *AgentError) Error() string {
	if e.Path == "" {
		return "agent: " + e.Msg
	}
	return fmt.Sprintf("agent: %q: %s", e.Path, e.Msg)
}

// Send runs the operator side of a transfer over conn (the stdin/stdout of
// `deploy-agent receive`): it sends paths (a closure, references first, as
// [Store.Closure] orders it), learns in one round trip which are missing,
// and streams those from local. If conn is an [io.Closer], it is closed
// when ctx is cancelled, which unblocks the transfer.
func Send(ctx context.Context, local *Store, paths []string, conn io.ReadWriter, opts SendOptions) (*TransferStats, error) {
	if c, ok := conn.(io.Closer); ok {
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
	}
	stats, err := send(ctx, local, paths, conn, opts)
	if err != nil && ctx.Err() != nil {
		return stats, fmt.Errorf("transfer: %w", ctx.Err())
	}
	return stats, err
}

func send(ctx context.Context, local *Store, paths []string, conn io.ReadWriter, opts SendOptions) (*TransferStats, error) {
	stats := &TransferStats{Wanted: len(paths)}
	infos := make(map[string]*PathInfo, len(paths))
	for _, p := range paths {
		pi, err := local.Info(p)
		if err != nil {
			return stats, fmt.Errorf("transfer: local store: %w", err)
		}
		infos[p] = pi
	}
	in := &lineReader{br: bufio.NewReaderSize(conn, 64<<10)}
	bw := bufio.NewWriterSize(conn, 256<<10)
	out := &lineWriter{w: bw}
	hello, err := in.read()
	if err != nil {
		return stats, fmt.Errorf("transfer: waiting for the agent's hello: %w", err)
	}
	if hello.T == "error" {
		return stats, &AgentError{Msg: hello.Error}
	}
	if hello.T != "hello" || hello.Proto != ProtocolName {
		return stats, protoErrorf("the agent did not greet with %q", ProtocolName)
	}
	if hello.Version != ProtocolVersion {
		return stats, protoErrorf("agent speaks version %d, we speak %d", hello.Version, ProtocolVersion)
	}
	if hello.StoreDir != local.StoreDir {
		return stats, fmt.Errorf("transfer: the target's store is %q, these paths are for %q", hello.StoreDir, local.StoreDir)
	}
	stats.Agent, stats.Current, stats.BootDefault = hello.Agent, hello.Current, hello.BootDefault
	compression := "none"
	if opts.Compress && !opts.DryRun {
		compression = "zstd"
	}
	var pin []string
	if !opts.DryRun {
		// A system the host runs, or boots, is a generation there already.
		for _, p := range opts.Pin {
			if p != hello.Current && p != hello.BootDefault {
				pin = append(pin, p)
			}
		}
	}
	stats.PinAsked = len(pin)
	want := &message{T: "want", Paths: paths, Compression: compression, Keys: opts.Keys, Pin: pin}
	if opts.Cache != nil && !opts.DryRun {
		if slices.Contains(hello.Features, FeatureCache) {
			want.Cache = opts.Cache
		} else {
			stats.CacheError = "the agent cannot fetch from a cache (it predates the feature)"
		}
	}
	if err := out.write(want); err != nil {
		return stats, fmt.Errorf("transfer: %w", err)
	}
	var reply *message
	for {
		reply, err = in.read()
		if err != nil {
			return stats, fmt.Errorf("transfer: waiting for the missing list: %w", err)
		}
		if reply.T == "fetched" {
			stats.Fetched++
			stats.FetchedBytes += reply.Bytes
			if opts.Fetched != nil {
				opts.Fetched(reply.Path, reply.Bytes)
			}
			continue
		}
		if reply.T == "cache" {
			stats.CacheError = reply.Error
			continue
		}
		break
	}
	if reply.T == "error" {
		return stats, &AgentError{Path: reply.Path, Msg: reply.Error}
	}
	if reply.T != "missing" {
		return stats, protoErrorf("got %q, want the missing list", reply.T)
	}
	order := make(map[string]int, len(paths))
	for i, p := range paths {
		order[p] = i
	}
	missing := slices.Clone(reply.Paths)
	var total int64
	for _, p := range missing {
		if _, ok := order[p]; !ok {
			return stats, protoErrorf("agent asked for %q, which was not offered", p)
		}
		total += infos[p].NarSize
	}
	slices.SortFunc(missing, func(a, b string) int { return order[a] - order[b] })
	stats.Missing, stats.MissingPaths, stats.MissingBytes = len(missing), missing, total
	if opts.DryRun {
		if err := out.write(&message{T: "end"}); err != nil {
			return stats, fmt.Errorf("transfer: %w", err)
		}
		for {
			m, err := in.read()
			if err != nil {
				return stats, fmt.Errorf("transfer: %w", err)
			}
			switch m.T {
			case "ok":
				return stats, nil
			case "error":
				return stats, &AgentError{Path: m.Path, Msg: m.Error}
			}
		}
	}

	// The writer streams the missing paths while this goroutine reads the
	// agent's confirmations; the mutex keeps Progress calls apart.
	var mu sync.Mutex
	var sent, confirmed int64
	report := func(p Progress) {
		if opts.Progress != nil {
			mu.Lock()
			p.Sent, p.Confirmed, p.Total = sent, confirmed, total
			opts.Progress(p)
			mu.Unlock()
		}
	}
	werr := make(chan error, 1)
	go func() {
		werr <- writePaths(local, missing, infos, bw, opts.Compress, func(p string, n int64) {
			mu.Lock()
			sent += n
			mu.Unlock()
			report(Progress{Path: p})
		})
	}()
	pending := slices.Clone(missing)
	for {
		m, err := in.read()
		if err != nil {
			// A write error explains a closed connection better.
			select {
			case e := <-werr:
				if e != nil {
					return stats, e
				}
			default:
			}
			return stats, fmt.Errorf("transfer: connection to the agent: %w", err)
		}
		switch m.T {
		case "done":
			if len(pending) == 0 || pending[0] != m.Path {
				return stats, protoErrorf("agent confirmed %q out of order", m.Path)
			}
			pending = pending[1:]
			stats.Imported++
			stats.NarBytes += infos[m.Path].NarSize
			mu.Lock()
			confirmed += infos[m.Path].NarSize
			mu.Unlock()
			report(Progress{Path: m.Path, Done: true})
		case "ok":
			if err := <-werr; err != nil {
				return stats, err
			}
			if len(pending) > 0 {
				return stats, protoErrorf("agent finished with %d paths unconfirmed", len(pending))
			}
			stats.Pinned = m.Pinned
			return stats, nil
		case "error":
			return stats, &AgentError{Path: m.Path, Msg: m.Error}
		default:
			return stats, protoErrorf("unexpected %q from the agent", m.T)
		}
	}
}

type flushWriter interface {
	io.Writer
	Flush() error
}

// writePaths streams each missing path (header + NAR), then the end
// message, optionally through zstd.
func writePaths(local *Store, missing []string, infos map[string]*PathInfo, bw *bufio.Writer, compress bool, sentBytes func(string, int64)) error {
	var w flushWriter = bw
	var zw *zstd.Encoder
	if compress {
		var err error
		zw, err = zstd.NewWriter(bw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20))
		if err != nil {
			return err
		}
		w = &zstdFlusher{zw: zw, bw: bw}
	}
	out := &lineWriter{w: w}
	for _, p := range missing {
		pi := infos[p]
		refs := pi.References
		if err := out.write(&message{T: "path", Path: p, NarHash: pi.NarHashString(), NarSize: pi.NarSize, References: refs, Sigs: pi.Sig}); err != nil {
			return fmt.Errorf("transfer: sending %q: %w", p, err)
		}
		cw := &countWriter{w: w, path: p, report: sentBytes}
		if err := local.Dump(cw, p); err != nil {
			return fmt.Errorf("transfer: sending %q: %w", p, err)
		}
		if cw.n != pi.NarSize {
			return fmt.Errorf("transfer: local store path %q dumps to %d bytes, its metadata says %d (run 'deploy store verify')", p, cw.n, pi.NarSize)
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("transfer: sending %q: %w", p, err)
		}
	}
	// The end message goes out together with the end of the zstd frame,
	// in one write: after it the agent reads nothing more.
	if zw != nil {
		if _, err := zw.Write([]byte(`{"t":"end"}` + "\n")); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
		if err := zw.Close(); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
		return bw.Flush()
	}
	return out.write(&message{T: "end"})
}

type zstdFlusher struct {
	zw *zstd.Encoder
	bw *bufio.Writer
}

func (z *zstdFlusher) Write(b []byte) (int, error) { return z.zw.Write(b) }
func (z *zstdFlusher) Flush() error {
	if err := z.zw.Flush(); err != nil {
		return err
	}
	return z.bw.Flush()
}

type countWriter struct {
	w      io.Writer
	n      int64
	path   string
	report func(string, int64)
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	if c.report != nil {
		c.report(c.path, int64(n))
	}
	return n, err
}
