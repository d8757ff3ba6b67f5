package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/fleet"
)

// cacheCommands are deploy cache's.
var cacheCommands = []command{
	{name: "key", summary: "generate NAME: a signing key pair for the fleet's cache", run: runCacheKey},
	{name: "push", summary: "build hosts and upload their closures to the fleet's cache (DIR#NAME...)", run: runCachePush, targets: true},
}

// runCacheKey is deploy cache key generate NAME: a signing key pair in
// Nix's format. The secret key file is created 0600 and never overwritten;
// the public key is printed (for the fleet's cache block) and written
// beside it.
func runCacheKey(_ context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "generate" {
		return usageErrorf("cache key: want 'deploy cache key generate NAME'")
	}
	var out string
	fs := newFlags(e, "cache key generate", "NAME")
	fs.StringVar(&out, "o", "", "write the secret key to `FILE` and the public key to FILE.pub (default NAME.key)")
	pos, err := parse(fs, args[1:], 1, 1)
	if err != nil {
		return err
	}
	if out == "" {
		out = pos[0] + ".key"
	}
	sk, pk, err := cache.GenerateKey(pos[0])
	if err != nil {
		return &exitError{code: ExitUsage, err: err}
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return withHint(fmt.Errorf("cache key: %q exists", out), ExitUsage, "a signing key is never overwritten: pass -o FILE for a new one")
	}
	if err != nil {
		return err
	}
	_, werr := fmt.Fprintln(f, sk.String())
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(out)
		return err
	}
	if err := os.WriteFile(out+".pub", []byte(pk.String()+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, pk.String())
	fmt.Fprintf(e.stderr, "deploy: secret key in %s (keep it private: it signs what hosts will run), public key in %s.pub\n", out, out)
	return nil
}

// cacheKeyFlag is --cache-key: the signing key of pushes to the fleet's
// cache (default $DEPLOY_CACHE_KEY).
type cacheKeyFlag struct{ file string }

func (f *cacheKeyFlag) register(fs *flag.FlagSet) {
	fs.StringVar(&f.file, "cache-key", "", "secret key `file` that signs pushes to the fleet's cache (default $DEPLOY_CACHE_KEY)")
}

// load reads the key; nil when none is given.
func (f *cacheKeyFlag) load(e *env) (*cache.SecretKey, error) {
	return loadKey(e, f.file, "DEPLOY_CACHE_KEY", "cache key", "deploy cache key generate NAME writes one")
}

// loadKey reads a secret key file in Nix's format: file (a flag's
// value), else the one $env names; nil when neither names one. what and
// hint say which key it is and how to make one.
func loadKey(e *env, file, env, what, hint string) (*cache.SecretKey, error) {
	if file == "" {
		file = e.getenv(env)
	}
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, withHint(fmt.Errorf("%s: %w", what, err), ExitUsage, hint)
	}
	k, err := cache.ParseSecretKey(string(data))
	if err != nil {
		return nil, &exitError{code: ExitUsage, err: fmt.Errorf("%s: %w", file, err)}
	}
	return k, nil
}

// runCachePush is deploy cache push DIR#TARGET: build the selected hosts
// and upload their closures to the fleet's cache.
func runCachePush(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var kf cacheKeyFlag
	var asJSON bool
	fs := newFlags(e, "cache push", "DIR#NAME...")
	bf.register(fs)
	kf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	key, err := kf.load(e)
	if err != nil {
		return err
	}
	v := newView(e, asJSON, false)
	var hf hostFlags
	s := hf.session(e, "cache-push", pos, v)
	s.Builder, s.CacheKey, s.Getenv = b, key, e.getenv
	_, err = runSession(s, v, func() (*fleet.Report, error) {
		if s.Fleet.Cache == nil {
			return nil, withHint(fmt.Errorf("cache push: the fleet in %s has no cache block", s.Fleet.Dir), ExitConfig, "add cache { url = \"s3://...\"  public_keys = [...] } (docs/cache.md)")
		}
		return s.PushCache(ctx)
	})
	return err
}
