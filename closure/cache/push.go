package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sync"

	"github.com/declarative/deploy/closure"
	"github.com/klauspost/compress/zstd"
)

// Writer is a cache that can be written: an S3 bucket (package s3cache)
// or a directory ([Dir]).
type Writer interface {
	Backend
	// Put stores size bytes of r at key, atomically: a reader sees the
	// whole file or none.
	Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error
	// List returns the keys of the narinfo files the cache has.
	List(ctx context.Context) (map[string]bool, error)
}

// Pusher uploads paths from a store to a cache, signed.
type Pusher struct {
	Cache Writer
	Key   *SecretKey
	// Parallel is how many paths are uploaded at once (default 16: most
	// paths of a fleet are small, and each upload waits on the network).
	Parallel int
	// TempDir holds the compressed NARs while they are uploaded (default
	// the system's temporary directory).
	TempDir string
	// Progress, if set, is called (one call at a time) after each path's
	// narinfo is written, with the compressed size uploaded.
	Progress func(path string, fileSize int64)
}

// PushStats says what a push did.
type PushStats struct {
	Paths     int   // paths asked for
	Uploaded  int   // paths uploaded (the others were there)
	NarBytes  int64 // NAR bytes of the uploaded paths
	FileBytes int64 // compressed bytes uploaded
}

// Push uploads every path of paths (a closure, references first) that the
// cache lacks, finding what it has in one listing. Each path's NAR
// (zstd-compressed) is uploaded before its narinfo, and a narinfo only
// after the narinfos of its references, so the cache never names a
// missing or partial NAR, nor a path whose references it lacks.
func (p *Pusher) Push(ctx context.Context, s *closure.Store, paths []string) (*PushStats, error) {
	if p.Key == nil {
		return nil, errors.New("cache push: no signing key")
	}
	if p.TempDir != "" {
		if err := os.MkdirAll(p.TempDir, 0o700); err != nil {
			return nil, fmt.Errorf("cache push: %w", err)
		}
	}
	if err := p.ensureCacheInfo(ctx, s.StoreDir); err != nil {
		return nil, err
	}
	have, err := p.Cache.List(ctx)
	if err != nil {
		return nil, err
	}
	stats := &PushStats{Paths: len(paths)}
	var todo []*closure.PathInfo
	for _, path := range paths {
		if have[Key(path)] {
			continue
		}
		pi, err := s.Info(path)
		if err != nil {
			return nil, fmt.Errorf("cache push: %w", err)
		}
		todo = append(todo, pi)
	}
	if len(todo) == 0 {
		return stats, nil
	}
	// done[path] closes when path's narinfo is in the cache.
	done := map[string]chan struct{}{}
	for _, pi := range todo {
		done[pi.Path] = make(chan struct{})
	}
	parallel := p.Parallel
	if parallel <= 0 {
		parallel = 16
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	errs := make([]error, len(todo))
	each(ctx, len(todo), parallel, func(i int) {
		pi := todo[i]
		size, err := p.pushOne(ctx, s, pi, done)
		if err != nil {
			errs[i] = err
			cancel()
			return
		}
		close(done[pi.Path])
		mu.Lock()
		defer mu.Unlock()
		stats.Uploaded++
		stats.NarBytes += pi.NarSize
		stats.FileBytes += size
		if p.Progress != nil {
			p.Progress(pi.Path, size)
		}
	})
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return stats, err
		}
	}
	if err := ctx.Err(); err != nil {
		return stats, fmt.Errorf("cache push: %w", err)
	}
	return stats, nil
}

// pushOne uploads pi's compressed NAR, waits for its references' narinfos,
// then writes its signed narinfo. It returns the compressed size.
func (p *Pusher) pushOne(ctx context.Context, s *closure.Store, pi *closure.PathInfo, done map[string]chan struct{}) (int64, error) {
	tmp, err := os.CreateTemp(p.TempDir, "deploy-cache-push-")
	if err != nil {
		return 0, fmt.Errorf("cache push: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	zw, err := zstd.NewWriter(io.MultiWriter(tmp, h), zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, err
	}
	if err := s.Dump(zw, pi.Path); err != nil {
		return 0, fmt.Errorf("cache push: %q: %w", pi.Path, err)
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	ni := &NarInfo{PathInfo: *pi, Compression: "zstd", FileSize: size}
	if isContentAddressed(s.StoreDir, pi) {
		ni.CA = ContentAddress(pi)
	}
	copy(ni.FileHash[:], h.Sum(nil))
	ni.URL = "nar/" + closure.Nix32(ni.FileHash[:]) + ".nar" + Extension("zstd")
	// Keep the signatures the path came with (from a Nix cache, say), as
	// nix copy does, and add ours.
	ni.Sig = append(slices.Clone(pi.Sig), p.Key.Sign(pi))
	slices.Sort(ni.Sig)
	ni.Sig = slices.Compact(ni.Sig)
	if err := p.Cache.Put(ctx, ni.URL, tmp, size, "application/x-nix-nar"); err != nil {
		return 0, fmt.Errorf("cache push: %q: %w", pi.Path, err)
	}
	for _, r := range pi.References {
		if ch := done[r]; ch != nil {
			select {
			case <-ch:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
	}
	data := ni.Marshal()
	if err := p.Cache.Put(ctx, Key(pi.Path), bytes.NewReader(data), int64(len(data)), "text/x-nix-narinfo"); err != nil {
		return 0, fmt.Errorf("cache push: %q: %w", pi.Path, err)
	}
	return size, nil
}

// ensureCacheInfo writes nix-cache-info when the cache has none, and
// checks the store directory of one it has.
func (p *Pusher) ensureCacheInfo(ctx context.Context, storeDir string) error {
	rc, err := p.Cache.Get(ctx, "nix-cache-info")
	if errors.Is(err, fs.ErrNotExist) {
		data := (&CacheInfo{StoreDir: storeDir, WantMassQuery: true, Priority: 40}).Marshal()
		return p.Cache.Put(ctx, "nix-cache-info", bytes.NewReader(data), int64(len(data)), "text/x-nix-cache-info")
	}
	if err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(rc, 1<<16))
	rc.Close()
	if err != nil {
		return &UnavailableError{Cache: p.Cache.String(), Err: err}
	}
	ci, err := ParseCacheInfo(data)
	if err != nil {
		return fmt.Errorf("cache %s: %w", p.Cache, err)
	}
	if ci.StoreDir != storeDir {
		return fmt.Errorf("cache %s holds paths of store %q, these are of %q", p.Cache, ci.StoreDir, storeDir)
	}
	return nil
}

// isContentAddressed reports whether pi.Path is the content address of
// its NAR hash, name and references (deploy's paths are; paths fetched from
// a Nix cache may be input-addressed, and then have no CA).
func isContentAddressed(storeDir string, pi *closure.PathInfo) bool {
	_, name, err := closure.SplitPath(storeDir, pi.Path)
	if err != nil {
		return false
	}
	want, err := closure.MakeSourcePath(storeDir, pi.NarHash, name, pi.References)
	return err == nil && want == pi.Path
}
