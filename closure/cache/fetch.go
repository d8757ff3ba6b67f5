package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/internal/fanout"
	"github.com/declarative/deploy/internal/limits"
)

// Fetcher fetches paths from a cache into a store, trusting only what its
// keys signed.
type Fetcher struct {
	Cache Backend
	// Keys are the trusted public keys: a path is accepted only when
	// signed by one of them.
	Keys []*PublicKey
	// Parallel is how many paths are fetched at once (default 8).
	Parallel int
	// Progress, if set, is called (one call at a time) as each path
	// becomes valid, with its NAR size.
	Progress func(path string, narSize int64)

	// The limits of what is fetched (0: the default of each). A narinfo
	// larger than MaxNarInfoSize (default 1 MiB), a path whose signed
	// NarSize is above MaxNarSize (default 8 GiB), and a NAR file that
	// goes on past its narinfo's FileSize (or, without one, past what
	// compressing NarSize bytes can yield) are refused, cut off as the
	// excess arrives.
	MaxNarInfoSize int64
	MaxNarSize     int64
	// Timeout is a narinfo's whole deadline and the floor of a NAR's
	// (default 1 minute); a NAR's deadline adds NarSize at MinRate bytes
	// per second (default 64 KiB/s). A fetch past its deadline is cut off
	// and the cache counts as unavailable.
	Timeout time.Duration
	MinRate int64
	// Settings says how to raise each limit, in errors, by the name of its
	// pull block setting (max_document_size, max_nar_size, fetch_timeout,
	// fetch_min_rate); nil means those settings of the pull block, and a
	// name missing from a non-nil map gives no hint.
	Settings map[string]string
}

func (f *Fetcher) setting(names ...string) string {
	if f.Settings == nil {
		return strings.Join(names, " or ") + " in the pull block"
	}
	var out []string
	for _, n := range names {
		if f.Settings[n] != "" {
			out = append(out, f.Settings[n])
		}
	}
	return strings.Join(out, " or ")
}

func orInt(v, def int64) int64 {
	if v > 0 {
		return v
	}
	return def
}

func (f *Fetcher) timeout() time.Duration {
	if f.Timeout > 0 {
		return f.Timeout
	}
	return limits.DefaultTimeout
}

// maxFileSize bounds the compressed file of a NAR of narSize bytes: every
// supported compression's worst case (incompressible input) stays below it.
func maxFileSize(narSize int64) int64 {
	return narSize + narSize/16 + 64<<10
}

// ErrNotCached is a path that [Fetcher.FetchClosure] needs and the cache
// does not have.
var ErrNotCached = errors.New("not in the cache")

// VerifyError is a path the cache has but that failed verification: an
// unsigned or wrongly signed narinfo, a narinfo for another path, or a NAR
// that does not match what was signed. Nothing of it became valid. Unlike an
// *[UnavailableError], it is never a reason to fall back to another source
// silently: someone served content that is not what the keys vouch for.
type VerifyError struct {
	Path string
	Err  error
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("cache: %s: refused: %v", e.Path, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// Fetch makes valid in s every path of want (a closure's paths, references
// first) that s lacks and the cache has, signed by a trusted key and with
// every reference valid or fetched too. It returns the paths it made
// valid. Paths the cache lacks are left for another source. An unreachable
// cache is an *[UnavailableError] (nothing fetched after it); a path that
// fails verification a *[VerifyError].
func (f *Fetcher) Fetch(ctx context.Context, s *closure.Store, want []string) ([]string, error) {
	missing, err := s.Missing(want)
	if err != nil || len(missing) == 0 {
		return nil, err
	}
	parallel := f.Parallel
	if parallel <= 0 {
		parallel = 8
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// 1. The narinfos, in parallel: which paths the cache has, signed.
	infos := make([]*NarInfo, len(missing))
	errs := make([]error, len(missing))
	stopped := each(ctx, len(missing), parallel, func(i int) {
		infos[i], errs[i] = f.narInfo(ctx, s.StoreDir, missing[i])
		if errs[i] != nil {
			cancel()
		}
	})
	if err := firstError(errs); err != nil {
		return nil, err
	}
	if stopped != nil {
		return nil, stopped
	}
	// 2. What can be made valid: a path whose references are all valid
	// already or fetched before it (want puts references first).
	valid := map[string]bool{}
	for _, p := range want {
		valid[p] = true
	}
	for _, p := range missing {
		valid[p] = false
	}
	var take []*NarInfo
	for i, ni := range infos {
		if ni == nil {
			continue
		}
		ok := true
		for _, r := range ni.References {
			if v, known := valid[r]; (known && !v) || (!known && !isValid(s, r)) {
				ok = false
				break
			}
		}
		if ok {
			valid[missing[i]] = true
			take = append(take, ni)
		}
	}
	return f.fetchNARs(ctx, s, take)
}

// FetchClosure makes valid in s the closure of root, which the cache must
// have whole: it reads the narinfos from root through its references
// (verifying each), then fetches every path s lacks, references first. It
// returns the closure, references first.
func (f *Fetcher) FetchClosure(ctx context.Context, s *closure.Store, root string) ([]string, error) {
	infos := map[string]*NarInfo{}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if infos[p] != nil {
			continue
		}
		ni, err := f.narInfo(ctx, s.StoreDir, p)
		if err != nil {
			return nil, err
		}
		if ni == nil {
			return nil, fmt.Errorf("cache %s: %s: %w", f.Cache, p, ErrNotCached)
		}
		infos[p] = ni
		for _, r := range ni.References {
			if r != p && infos[r] == nil {
				queue = append(queue, r)
			}
		}
	}
	// References first: a depth-first post-order from root.
	var order []string
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, r := range infos[p].References {
			if r != p {
				visit(r)
			}
		}
		order = append(order, p)
	}
	visit(root)
	var take []*NarInfo
	for _, p := range order {
		if !isValid(s, p) {
			take = append(take, infos[p])
		}
	}
	if _, err := f.fetchNARs(ctx, s, take); err != nil {
		return nil, err
	}
	for _, p := range order {
		if !isValid(s, p) {
			return nil, fmt.Errorf("cache %s: %s could not be made valid", f.Cache, p)
		}
	}
	return order, nil
}

// fetchNARs fetches and stages the NARs of take (references first) in
// parallel, then commits them in that order.
func (f *Fetcher) fetchNARs(ctx context.Context, s *closure.Store, take []*NarInfo) ([]string, error) {
	if len(take) == 0 {
		return nil, nil
	}
	// A path too large to take refuses the closure before any NAR is
	// asked for (in parallel, another path's download could start first).
	maxNar := orInt(f.MaxNarSize, limits.DefaultNAR)
	for _, ni := range take {
		if ni.NarSize > maxNar {
			return nil, &VerifyError{Path: ni.Path, Err: &limits.TooLargeError{Object: "its NAR", Limit: maxNar, Got: ni.NarSize, Setting: f.setting("max_nar_size")}}
		}
	}
	parallel := f.Parallel
	if parallel <= 0 {
		parallel = 8
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	b, err := s.NewBatch(ctx)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	errs := make([]error, len(take))
	stopped := each(ctx, len(take), parallel, func(i int) {
		errs[i] = f.stage(ctx, b, take[i])
		if errs[i] != nil {
			cancel()
		}
	})
	if err := firstError(errs); err != nil {
		return nil, err
	}
	if stopped != nil {
		return nil, stopped
	}
	order := make([]string, len(take))
	for i, ni := range take {
		order[i] = ni.Path
	}
	committed, err := b.Commit(ctx, order)
	if err != nil {
		return nil, err
	}
	if f.Progress != nil {
		sizes := map[string]int64{}
		for _, ni := range take {
			sizes[ni.Path] = ni.NarSize
		}
		for _, p := range committed {
			f.Progress(p, sizes[p])
		}
	}
	return committed, nil
}

func isValid(s *closure.Store, p string) bool {
	ok, err := s.Valid(p)
	return err == nil && ok
}

// narInfo fetches, parses and verifies p's narinfo; nil when the cache does
// not have p.
func (f *Fetcher) narInfo(ctx context.Context, storeDir, p string) (*NarInfo, error) {
	d := f.timeout()
	ctx, cancel, hit := limits.WithDeadline(ctx, d)
	defer cancel()
	lr := &limits.Reader{Limit: orInt(f.MaxNarInfoSize, limits.DefaultDocument), Object: "narinfo " + Key(p), Setting: f.setting("max_document_size")}
	deadline := func() error {
		return &UnavailableError{Cache: f.Cache.String(), Err: &limits.DeadlineError{Object: "narinfo " + Key(p), Deadline: d, Read: lr.N, Setting: f.setting("fetch_timeout")}}
	}
	rc, err := f.Cache.Get(ctx, Key(p))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if hit(err) {
		return nil, deadline()
	}
	if err != nil {
		return nil, err
	}
	lr.R = rc
	data, err := io.ReadAll(lr)
	rc.Close()
	var tl *limits.TooLargeError
	switch {
	case errors.As(err, &tl):
		return nil, &VerifyError{Path: p, Err: err}
	case hit(err):
		return nil, deadline()
	case err != nil:
		return nil, &UnavailableError{Cache: f.Cache.String(), Err: fmt.Errorf("reading %s: %w", Key(p), err)}
	}
	ni, err := ParseNarInfo(storeDir, data)
	if err != nil {
		return nil, &VerifyError{Path: p, Err: err}
	}
	if ni.Path != p {
		return nil, &VerifyError{Path: p, Err: fmt.Errorf("its narinfo describes %q", ni.Path)}
	}
	if _, err := Verify(&ni.PathInfo, f.Keys); err != nil {
		return nil, &VerifyError{Path: p, Err: err}
	}
	switch ni.Compression {
	case "zstd", "xz", "bzip2", "none":
	default:
		return nil, &VerifyError{Path: p, Err: fmt.Errorf("compression %q is not supported", ni.Compression)}
	}
	return ni, nil
}

// stage downloads ni's NAR, checks the compressed file's hash and size
// when the narinfo gives them, and stages it (which checks the NAR's hash
// and size against the signed narinfo). The file is cut off as soon as
// more arrives than the narinfo claims, and the whole fetch as soon as its
// deadline passes.
func (f *Fetcher) stage(ctx context.Context, b *closure.Batch, ni *NarInfo) error {
	maxNar := orInt(f.MaxNarSize, limits.DefaultNAR)
	if ni.NarSize > maxNar {
		return &VerifyError{Path: ni.Path, Err: &limits.TooLargeError{Object: "its NAR", Limit: maxNar, Got: ni.NarSize, Setting: f.setting("max_nar_size")}}
	}
	// FileSize is not signed: it may only make the bound tighter.
	fileLimit, fileWhat := maxFileSize(ni.NarSize), fmt.Sprintf("%s (the most a NAR of %d bytes compresses to)", ni.URL, ni.NarSize)
	if ni.FileSize > 0 {
		if ni.FileSize > fileLimit {
			return &VerifyError{Path: ni.Path, Err: fmt.Errorf("its narinfo says %s is %d bytes, more than a NAR of %d bytes compresses to", ni.URL, ni.FileSize, ni.NarSize)}
		}
		fileLimit, fileWhat = ni.FileSize, fmt.Sprintf("%s (its narinfo's FileSize)", ni.URL)
	}
	d := limits.Deadline(f.timeout(), orInt(f.MinRate, limits.DefaultMinRate), ni.NarSize)
	ctx, cancel, hit := limits.WithDeadline(ctx, d)
	defer cancel()
	lr := &limits.Reader{Limit: fileLimit, Object: fileWhat}
	deadline := func() error {
		return &UnavailableError{Cache: f.Cache.String(), Err: &limits.DeadlineError{Object: "the NAR of " + ni.Path, Deadline: d, Read: lr.N,
			Setting: f.setting("fetch_timeout", "fetch_min_rate")}}
	}
	rc, err := f.Cache.Get(ctx, ni.URL)
	if errors.Is(err, fs.ErrNotExist) {
		return &VerifyError{Path: ni.Path, Err: fmt.Errorf("its NAR %s is missing", ni.URL)}
	}
	if hit(err) {
		return deadline()
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	lr.R = rc
	fh := &fileHasher{r: lr, h: sha256.New()}
	dr, err := Decompress(fh, ni.Compression)
	if err != nil {
		return &VerifyError{Path: ni.Path, Err: err}
	}
	defer dr.Close()
	// cut says why the stream was cut off, if it was.
	cut := func(err error) error {
		var tl *limits.TooLargeError
		if errors.As(lr.Err(), &tl) {
			return &VerifyError{Path: ni.Path, Err: tl}
		}
		if hit(err) || hit(ctx.Err()) {
			return deadline()
		}
		return nil
	}
	// The signature vouches for the path's name: input-addressed paths
	// of Nix caches are as acceptable as content-addressed ones.
	if err := b.Stage(dr, &ni.PathInfo, true); err != nil {
		if cerr := cut(err); cerr != nil {
			return cerr
		}
		var ue *UnavailableError
		if errors.As(err, &ue) || ctx.Err() != nil {
			return err
		}
		return &VerifyError{Path: ni.Path, Err: err}
	}
	if ni.FileSize > 0 {
		// The rest of the file, if any, for its hash.
		if _, err := io.Copy(fh, lr); err != nil {
			if cerr := cut(err); cerr != nil {
				return cerr
			}
			return &UnavailableError{Cache: f.Cache.String(), Err: fmt.Errorf("reading %s: %w", ni.URL, err)}
		}
		var sum [32]byte
		copy(sum[:], fh.h.Sum(nil))
		if fh.n != ni.FileSize || (ni.FileHash != [32]byte{} && sum != ni.FileHash) {
			return &VerifyError{Path: ni.Path, Err: fmt.Errorf("%s: file size %d or hash does not match the narinfo (FileSize %d)", ni.URL, fh.n, ni.FileSize)}
		}
	}
	return nil
}

// fileHasher hashes what is read through it.
type fileHasher struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (f *fileHasher) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	f.h.Write(p[:n])
	f.n += int64(n)
	return n, err
}

func (f *fileHasher) Write(p []byte) (int, error) {
	f.h.Write(p)
	f.n += int64(len(p))
	return len(p), nil
}

// each runs fn(0..n-1), at most limit at once (see [fanout.Each]). Once
// ctx is done no call starts; each then returns ctx's error, after the
// calls that started have returned.
func each(ctx context.Context, n, limit int, fn func(i int)) error {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	if left := fanout.Each(ctx, idx, limit, func(_ context.Context, i int) { fn(i) }); len(left) > 0 {
		return ctx.Err()
	}
	return nil
}

// firstError returns the most telling error: a verification failure
// before an unavailable cache before anything else.
func firstError(errs []error) error {
	var first, unavailable error
	for _, err := range errs {
		var ve *VerifyError
		var ue *UnavailableError
		switch {
		case err == nil, errors.Is(err, context.Canceled):
		case errors.As(err, &ve):
			return err
		case errors.As(err, &ue):
			if unavailable == nil {
				unavailable = err
			}
		default:
			if first == nil {
				first = err
			}
		}
	}
	if unavailable != nil {
		return unavailable
	}
	if first != nil {
		return first
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
