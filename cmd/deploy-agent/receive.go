package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/limits"
	"golang.org/x/sys/unix"
)

// receiveArgs is the command line of receive (agentapi.ReceiveCmd).
type receiveArgs struct {
	stateDir string
	verbose  bool
}

func parseReceive(args []string, stderr io.Writer) (*receiveArgs, error) {
	fs := newFlagSet(agentapi.VerbReceive, stderr)
	a := &receiveArgs{}
	stateDirVar(fs, &a.stateDir)
	fs.BoolVar(&a.verbose, "v", false, "log every received path to stderr")
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	return a, nil
}

// runReceive serves the transfer protocol on stdin/stdout (see
// docs/transfer.md). Progress lines go to stderr.
func runReceive(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a, err := parseReceive(args, stderr)
	if err != nil {
		return err
	}
	s := closure.NewTargetStore(a.stateDir)
	opts := closure.ReceiveOptions{Agent: version, Systems: runningSystems(s, agentapi.CurrentSystem(agentapi.DefaultRunDir))}
	if a.verbose {
		opts.Logf = func(format string, args ...any) { fmt.Fprintf(stderr, "deploy-agent: "+format+"\n", args...) }
	}
	opts.Fetch = func(ctx context.Context, spec *closure.CacheSpec, want []string, report func(string, int64)) error {
		return fetchFromCache(ctx, s, spec, want, report, stderr)
	}
	opts.VerifySig = verifySig
	if f, ok := stdin.(*os.File); ok {
		growPipe(f)
	}
	stats, err := s.Receive(ctx, stdin, stdout, opts)
	if err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	fmt.Fprintf(stderr, "deploy-agent: received %d of %d wanted paths (%d missing), %d NAR bytes\n", stats.Imported, stats.Wanted, stats.Missing, stats.NarBytes)
	return nil
}

// fetchFromCache fetches what the store lacks of want from the cache spec
// names, trusting only its keys (see cache.Fetcher). A cache it cannot
// reach, that does not answer within the fetcher's deadlines, or that
// offers a path above its size limits, is reported as unavailable, so the
// operator sends the rest.
func fetchFromCache(ctx context.Context, s *closure.Store, spec *closure.CacheSpec, want []string, report func(string, int64), stderr io.Writer) error {
	var keys []*cache.PublicKey
	for _, k := range spec.Keys {
		pk, err := cache.ParsePublicKey(k)
		if err != nil {
			return err
		}
		keys = append(keys, pk)
	}
	if len(keys) == 0 {
		return fmt.Errorf("cache %s: no trusted public keys", spec.URL)
	}
	backend, err := cache.Open(spec.URL, nil)
	if err != nil {
		return err
	}
	f := &cache.Fetcher{Cache: backend, Keys: keys, Progress: report, Settings: map[string]string{}}
	fetched, err := f.Fetch(ctx, s, want)
	var ue *cache.UnavailableError
	var tl *limits.TooLargeError
	// A cache past a deadline, or with a path above the default limits
	// (no pull block sets them here), is not used: nothing of it became
	// valid, and the operator has the paths.
	if errors.As(err, &ue) || errors.As(err, &tl) {
		fmt.Fprintf(stderr, "deploy-agent: %v; the rest comes over the connection\n", err)
		return fmt.Errorf("%w: %v", closure.ErrCacheUnavailable, err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "deploy-agent: fetched %d paths from %s\n", len(fetched), backend)
	return nil
}

// verifySig checks that pi carries a valid signature by one of keys.
func verifySig(pi *closure.PathInfo, keys []string) error {
	var pks []*cache.PublicKey
	for _, k := range keys {
		pk, err := cache.ParsePublicKey(k)
		if err != nil {
			return err
		}
		pks = append(pks, pk)
	}
	_, err := cache.Verify(pi, pks)
	return err
}

// installSelfArgs is the command line of install-self
// (agentapi.InstallSelfCmd).
type installSelfArgs struct {
	stateDir string
	narHash  string
}

func parseInstallSelf(args []string, stderr io.Writer) (*installSelfArgs, error) {
	fs := newFlagSet(agentapi.VerbInstallSelf, stderr)
	a := &installSelfArgs{}
	stateDirVar(fs, &a.stateDir)
	if err := fs.Parse(args); err != nil {
		return nil, usageErr(err)
	}
	if fs.NArg() != 1 {
		return nil, usageErr(errors.New("usage: deploy-agent install-self [--state-dir DIR] NARHASH"))
	}
	a.narHash = fs.Arg(0)
	return a, nil
}

// runInstallSelf registers the running binary as the agent store path
// with the given NAR hash, then removes the binary when it is a bootstrap
// upload (store/.upload-*). It prints the agent's store path.
func runInstallSelf(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseInstallSelf(args, stderr)
	if err != nil {
		return err
	}
	h, err := closure.ParseNarHash(a.narHash)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("install-self: %w", err)
	}
	s := closure.NewTargetStore(a.stateDir)
	pi, err := s.InstallAgent(ctx, exe, h)
	if err != nil {
		return err
	}
	if filepath.Dir(exe) == s.RealDir && strings.HasPrefix(filepath.Base(exe), closure.UploadPrefix) {
		os.Remove(exe)
	}
	fmt.Fprintln(stdout, pi.Path)
	return nil
}

// runningSystems reports the host's current system (the link current) and
// its boot default (the store's profiles/system) as store paths of s (""
// for none): what the transfer's hello and the run lock's reply say.
func runningSystems(s *closure.Store, current string) func() (string, string) {
	return func() (string, string) {
		return resolveSystem(s, current), resolveSystem(s, filepath.Join(s.RootsDir, "system"))
	}
}

// resolveSystem follows link (and links it points to) to the store path of
// a system, or "" when there is none.
func resolveSystem(s *closure.Store, link string) string {
	for hops := 0; hops < 8; hops++ {
		target, err := os.Readlink(link)
		if err != nil {
			return ""
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(link), target)
		}
		if _, _, err := closure.SplitPath(s.StoreDir, target); err == nil {
			return target
		}
		link = target
	}
	return ""
}

// growPipe raises the capacity of a pipe on stdin (sshd's default is 64 KiB)
// so that sshd can hand over a whole SSH window while the agent hashes and
// writes. Best effort: not a pipe, or a lower limit, keeps what there is.
func growPipe(f *os.File) {
	fd := int(f.Fd())
	for size := 8 << 20; size >= 1<<20; size /= 2 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETPIPE_SZ, size); err == nil {
			return
		}
	}
}
