package fleet

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache"
	"github.com/declarative/deploy/modules"
)

// OpenCacheWriter opens the cache a cache block's url names for pushing:
// s3:// (package s3cache; credentials from the usual AWS places, getenv
// nil meaning the process's environment) or file://.
func OpenCacheWriter(rawURL string, getenv func(string) string) (cache.Writer, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("cache URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "s3":
		return s3cache.Open(rawURL, getenv)
	case "file":
		return cache.Dir(u.Path), nil
	}
	return nil, fmt.Errorf("cache URL %q: want s3:// or file:// to push to", rawURL)
}

// cacheSubstituter substitutes go packages from the fleet's cache: a
// realisation signed by one of the cache block's keys, then the output's
// closure, each path checked as a host checks it.
type cacheSubstituter struct {
	fetcher *cache.Fetcher
	store   *closure.Store
}

func (c *cacheSubstituter) Substitute(ctx context.Context, key string) (string, error) {
	return c.fetcher.Substitute(ctx, c.store, key)
}

// substituter returns the fleet's cache as a substituter for the builder,
// nil without a cache block (or when the builder is told not to).
func (s *Session) substituter() (modules.Substituter, error) {
	if s.Builder.NoSubstitute || s.Fleet == nil || s.Fleet.Cache == nil {
		return nil, nil
	}
	c := s.Fleet.Cache
	backend, err := cache.Open(c.FetchURL, nil)
	if err != nil {
		return nil, err
	}
	var keys []*cache.PublicKey
	for _, k := range c.PublicKeys {
		pk, err := cache.ParsePublicKey(k)
		if err != nil {
			return nil, err
		}
		keys = append(keys, pk)
	}
	return &cacheSubstituter{fetcher: &cache.Fetcher{Cache: backend, Keys: keys, Settings: map[string]string{}}, store: s.Builder.Store}, nil
}

// pushRealisations records in the fleet's cache, signed, the build inputs
// of each go package the builder obtained whose output is among pushed
// (paths now in the cache): other machines then substitute them.
func (s *Session) pushRealisations(ctx context.Context, w cache.Writer, pushed []string) error {
	in := map[string]bool{}
	for _, p := range pushed {
		in[p] = true
	}
	var rs []cache.Realisation
	for _, r := range s.Builder.Realisations() {
		if in[r.Out] {
			rs = append(rs, cache.Realisation{Key: r.Key, Out: r.Out})
		}
	}
	if len(rs) == 0 {
		return nil
	}
	p := &cache.Pusher{Cache: w, Key: s.CacheKey}
	if err := p.PushRealisations(ctx, rs); err != nil {
		return err
	}
	if s.Builder.Logf != nil {
		s.Builder.Logf("cache: %d build realisations recorded (inputs to outputs, for substitution)", len(rs))
	}
	return nil
}

// cacheSpec is what hosts are told about the fleet's cache: where to fetch
// from and which keys to trust; nil without a cache block.
func (s *Session) cacheSpec() *closure.CacheSpec {
	if s.Fleet == nil || s.Fleet.Cache == nil {
		return nil
	}
	return &closure.CacheSpec{URL: s.Fleet.Cache.FetchURL, Keys: s.Fleet.Cache.PublicKeys}
}

// pushToCache uploads the closures of the built systems, but for the
// system paths themselves (host-specific; each host gets its own over its
// connection), to the fleet's cache: once, whatever the number of hosts.
// It reports in cache.push events; a cache it cannot push to is not a
// reason to stop the run (hosts fetch what the cache has and get the rest
// over their connections), so it returns nothing.
func (s *Session) pushToCache(ctx context.Context, results map[string]*builder.Result) {
	c := s.Fleet.Cache
	if c == nil {
		return
	}
	if s.CacheKey == nil {
		s.emit(Event{Type: EventCachePush, State: "skipped", Message: c.URL,
			Error: "no signing key (--cache-key or DEPLOY_CACHE_KEY): nothing pushed; hosts fetch what the cache has"})
		return
	}
	var systems []string
	isSystem := map[string]bool{}
	for _, h := range s.Selected {
		if r := results[h.Name]; r != nil {
			systems = append(systems, r.SystemPath)
			isSystem[r.SystemPath] = true
		}
	}
	cl, err := s.Builder.Store.Closure(systems...)
	if err != nil {
		s.emit(Event{Type: EventCachePush, State: "failed", Message: c.URL, Error: err.Error()})
		return
	}
	var paths []string
	for _, pi := range cl {
		if !isSystem[pi.Path] {
			paths = append(paths, pi.Path)
		}
	}
	s.emit(Event{Type: EventCachePush, State: "started", Message: c.URL, Paths: len(paths)})
	stats, err := s.CachePush(ctx, paths)
	if err != nil {
		s.emit(Event{Type: EventCachePush, State: "failed", Message: c.URL, Paths: len(paths), Error: err.Error()})
		return
	}
	s.emit(Event{Type: EventCachePush, State: "done", Message: c.URL, Paths: len(paths), CopyPaths: stats.Uploaded, Total: stats.FileBytes})
}

// CachePush uploads paths (references first) from the local store to the
// fleet's cache, signed with CacheKey, and returns what it did.
func (s *Session) CachePush(ctx context.Context, paths []string) (*cache.PushStats, error) {
	if s.Fleet == nil || s.Fleet.Cache == nil {
		return nil, s.configError(nil, "No cache block", errNoCache)
	}
	if s.CacheKey == nil {
		return nil, &UsageError{Err: fmt.Errorf("no signing key for the cache: pass --cache-key FILE or set DEPLOY_CACHE_KEY (deploy cache key generate NAME makes one)")}
	}
	w, err := OpenCacheWriter(s.Fleet.Cache.URL, s.Getenv)
	if err != nil {
		return nil, err
	}
	p := &cache.Pusher{Cache: w, Key: s.CacheKey, TempDir: s.Builder.CacheDir}
	start := time.Now()
	stats, err := p.Push(ctx, s.Builder.Store, paths)
	if err != nil {
		return stats, err
	}
	if s.Builder.Logf != nil {
		s.Builder.Logf("cache: %d of %d paths uploaded to %s (%d bytes) in %v", stats.Uploaded, stats.Paths, w, stats.FileBytes, time.Since(start).Round(time.Millisecond))
	}
	return stats, s.pushRealisations(ctx, w, paths)
}

// pushClosures pushes the whole closures of roots to the fleet's cache,
// with the cache.push events around it.
func (s *Session) pushClosures(ctx context.Context, roots []string) error {
	cl, err := s.Builder.Store.Closure(roots...)
	if err != nil {
		return err
	}
	paths := make([]string, len(cl))
	for i, pi := range cl {
		paths[i] = pi.Path
	}
	s.emit(Event{Type: EventCachePush, State: "started", Message: s.Fleet.Cache.URL, Paths: len(paths)})
	stats, err := s.CachePush(ctx, paths)
	if err != nil {
		s.emit(Event{Type: EventCachePush, State: "failed", Message: s.Fleet.Cache.URL, Paths: len(paths), Error: err.Error()})
		return err
	}
	s.emit(Event{Type: EventCachePush, State: "done", Message: s.Fleet.Cache.URL, Paths: len(paths), CopyPaths: stats.Uploaded, Total: stats.FileBytes})
	return nil
}

// PushCache builds every selected host and pushes their closures (system
// paths included: deploy cache push is for mirrors and for Nix users too)
// to the fleet's cache (deploy cache push).
func (s *Session) PushCache(ctx context.Context) (*Report, error) {
	rep := s.begin(ModeBuild, nil)
	defer s.end(rep)
	results, err := s.build(ctx, rep)
	if err != nil {
		return rep, err
	}
	var systems []string
	for _, h := range s.Selected {
		systems = append(systems, results[h.Name].SystemPath)
	}
	if err := s.pushClosures(ctx, systems); err != nil {
		return rep, err
	}
	for _, h := range s.Selected {
		hr := rep.Hosts[h.Name]
		hr.Result, hr.Phase = ResultOK, PhaseBuild
		s.finish(hr, Event{})
	}
	return rep, nil
}
