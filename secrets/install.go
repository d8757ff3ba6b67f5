package secrets

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"filippo.io/age"
	"golang.org/x/sys/unix"

	"github.com/declarative/deploy/manifest"
)

// DefaultIdentity is the host key the agent decrypts with when
// [InstallOptions.Identities] is empty.
const DefaultIdentity = "/etc/ssh/ssh_host_ed25519_key"

const (
	generationsDir = "secrets.d"     // RunDir/secrets.d: the ramfs mount
	currentLink    = "secrets"       // RunDir/secrets -> secrets.d/N
	stateFile      = ".deploy-state" // in secrets.d/N: what the generation holds (no plaintext)
)

// InstallOptions says which secrets of which generation to decrypt, and
// where.
type InstallOptions struct {
	// RunDir is the agent's runtime directory (/run/deploy). Secrets of
	// generation N go to RunDir/secrets.d/N/; RunDir/secrets is switched to
	// it atomically.
	RunDir string
	// Generation is the generation number the secrets belong to.
	Generation int
	// Secrets are the manifest's secrets; Source is the ciphertext's store
	// path (logical), Path the destination the services use.
	Secrets []manifest.Secret
	// RealPath maps a logical store path to where it is on this disk
	// (default: the logical path itself).
	RealPath func(storePath string) string
	// Identities are the private key files to decrypt with (default
	// /etc/ssh/ssh_host_ed25519_key). Each must exist and parse.
	Identities []string
	// EtcDir is the directory whose passwd and group files resolve owners
	// and groups (default /etc).
	EtcDir string
	// AllowTmpfs lets the secrets live on a tmpfs, whose pages the kernel
	// may swap to disk, when a ramfs cannot be mounted (or a tmpfs is
	// mounted there already). Without it that is an error. The host's
	// secrets_allow_tmpfs setting.
	AllowTmpfs bool
	// Revoked are versions ([manifest.SecretVersion]) that must never be
	// decrypted: a secret whose ciphertext is one of them fails Install
	// with a *[RevokedError] before anything changes, and every file of
	// a kept generation directory whose recorded ciphertext is one of them
	// is wiped and removed (so that generation is decrypted again, and
	// refused, on a rollback).
	Revoked []string
	// Logf, if set, receives a line per step (never a secret's content).
	Logf func(format string, args ...any)
	// Warnf, if set, receives what the operator must know about (secrets
	// on swappable memory); the lines also go to Logf.
	Warnf func(format string, args ...any)

	// beforeWrite, if set (by tests), runs on each plaintext file's
	// descriptor just before its first byte is written.
	beforeWrite func(fd int)
	// quietTmpfs: a tmpfs needs no warning (nothing to decrypt).
	quietTmpfs bool
}

func (o *InstallOptions) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

func (o *InstallOptions) warnf(format string, args ...any) {
	o.logf("warning: "+format, args...)
	if o.Warnf != nil {
		o.Warnf(format, args...)
	}
}

// entry is one secret, validated and resolved.
type entry struct {
	name     string
	src      string // real path of the ciphertext
	uid, gid int
	mode     uint32
	dest     string // a destination symlink to place, or "" when Path is RunDir/secrets/NAME
}

// Install decrypts the secrets of one generation into RunDir/secrets.d/N/
// and atomically points RunDir/secrets at it. On any error the previous
// generation's secrets stay in place.
//
// Install is idempotent, and it is also how secrets are restored: on
// rollback and at boot the agent calls it again with the older (or booted)
// generation's manifest. When RunDir/secrets.d/N is still there (the kept
// previous generation) and records exactly the same ciphertexts (by
// SHA-256), owners and modes, it is reused without decrypting, so a
// rollback works even after the host key was rotated; otherwise (at boot
// the ramfs is empty) the ciphertexts are decrypted again.
//
// Steps: RunDir/secrets.d is made a ramfs mount (nodev, nosuid, noexec,
// mode 0711) unless it is one already (a tmpfs mount with those options is
// accepted too); each secret is decrypted into a fresh staging directory,
// into a file created O_EXCL|O_NOFOLLOW relative to the directory with its
// final owner and mode before the first byte, and renamed to its name after
// a clean end of the age stream; destination symlinks for secrets whose
// Path is not RunDir/secrets/NAME are placed; the staging directory becomes
// secrets.d/N (an atomic exchange when N exists); RunDir/secrets is
// switched by a temporary symlink and rename(2); destination symlinks only
// the previous generation had are removed; and every generation but this
// one and the previous one is pruned (see [Prune]).
//
// Callers serialize calls (the agent holds its activation lock).
func Install(ctx context.Context, opts InstallOptions) error {
	if opts.RunDir == "" || !filepath.IsAbs(opts.RunDir) {
		return fmt.Errorf("install secrets: run directory %q is not absolute", opts.RunDir)
	}
	if opts.Generation < 0 {
		return fmt.Errorf("install secrets: invalid generation %d", opts.Generation)
	}
	runDir := filepath.Clean(opts.RunDir)
	entries, err := opts.plan(runDir)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	runFD, err := openRunDir(runDir, opts.logf)
	if err != nil {
		return err
	}
	defer unix.Close(runFD)
	fsOpts := opts
	if len(entries) == 0 {
		// No plaintext to keep off swap: any fit mount will do, quietly
		// (the rollback from a generation with secrets to one without).
		fsOpts.AllowTmpfs, fsOpts.Warnf, fsOpts.quietTmpfs = true, nil, true
	}
	dfd, err := openSecretsFS(runFD, runDir, &fsOpts)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)

	prev, hasPrev, err := Current(runDir)
	if err != nil {
		// Not a link we made: it is replaced below, never followed.
		opts.logf("secrets: %v; replacing it", err)
	}
	gen := strconv.Itoa(opts.Generation)
	revoked := map[string]bool{}
	for _, v := range opts.Revoked {
		revoked[strings.TrimPrefix(v, "sha256:")] = true
	}
	state, err := stateOf(entries, revoked)
	if err != nil {
		var re *RevokedError
		if errors.As(err, &re) {
			re.Generation = opts.Generation
			return re
		}
		return fmt.Errorf("install secrets of generation %d: %w", opts.Generation, err)
	}
	if len(revoked) > 0 {
		// Revoked plaintext kept for a rollback goes now; the running
		// generation's goes once the link no longer names it (below).
		wipeRevoked(dfd, revoked, prev, hasPrev, opts.logf)
	}
	var dests []string
	for _, e := range entries {
		if e.dest != "" {
			dests = append(dests, e.dest)
		}
	}
	var prevDests []string
	if hasPrev {
		prevDests = readDests(dfd, strconv.Itoa(prev))
	}

	// A generation directory that holds exactly these ciphertexts with
	// these owners and modes (a rollback to the kept previous generation)
	// is reused without decrypting: rollback works even when the host key
	// changed since.
	reuse := generationIntact(dfd, gen, state, entries)
	stage := "." + gen + ".tmp"
	defer removeAt(dfd, stage)
	if !reuse {
		if err := opts.stage(ctx, dfd, stage, state, entries); err != nil {
			return err
		}
	}

	// Destination symlinks point at RunDir/secrets/NAME, so they are correct
	// for whichever generation the link names; placing them first means a
	// failure leaves the old generation fully in place.
	placed, err := placeDestinations(runDir, entries)
	if err != nil {
		for _, p := range placed {
			if !slices.Contains(prevDests, p) {
				removeDestination(p, runDir)
			}
		}
		return err
	}

	if !reuse {
		// Move the staging directory to secrets.d/N; when N exists, swap
		// them atomically (the deferred removeAt wipes the old one).
		if err := unix.Renameat2(dfd, stage, dfd, gen, unix.RENAME_NOREPLACE); errors.Is(err, unix.EEXIST) {
			if err := unix.Renameat2(dfd, stage, dfd, gen, unix.RENAME_EXCHANGE); err != nil {
				return fmt.Errorf("install secrets: replace %q: %w", filepath.Join(runDir, generationsDir, gen), err)
			}
		} else if err != nil {
			return fmt.Errorf("install secrets: rename %q: %w", filepath.Join(runDir, generationsDir, gen), err)
		}
		if err := unix.Fsync(dfd); err != nil {
			return fmt.Errorf("install secrets: sync %q: %w", filepath.Join(runDir, generationsDir), err)
		}
	}
	if err := switchLink(runFD, currentLink, generationsDir+"/"+gen); err != nil {
		return fmt.Errorf("install secrets: switch %q to generation %d: %w", filepath.Join(runDir, currentLink), opts.Generation, err)
	}
	for _, d := range prevDests {
		if !slices.Contains(dests, d) {
			removeDestination(d, runDir)
		}
	}
	if len(revoked) > 0 {
		wipeRevoked(dfd, revoked, opts.Generation, true, opts.logf)
	}
	// The previous generation is kept for a rollback, but not the
	// plaintext of secrets this generation dropped: wipe them now. A
	// rollback then decrypts that generation again (its directory no
	// longer matches its state).
	if hasPrev && prev != opts.Generation {
		if err := dropRemoved(dfd, strconv.Itoa(prev), entries); err != nil {
			opts.logf("secrets: %v", err)
		}
	}
	keep := []int{opts.Generation}
	if hasPrev {
		keep = append(keep, prev)
	}
	if err := Prune(runDir, keep...); err != nil {
		opts.logf("secrets: prune: %v", err)
	}
	opts.logf("secrets: generation %d: %d secrets in %s", opts.Generation, len(entries), filepath.Join(runDir, generationsDir, gen))
	return nil
}

// plan validates the options' secrets and resolves owners, groups and
// modes, sorted by name.
func (o *InstallOptions) plan(runDir string) ([]entry, error) {
	if len(o.Secrets) == 0 {
		return nil, nil
	}
	etc := o.EtcDir
	if etc == "" {
		etc = "/etc"
	}
	users, err := readIDs(filepath.Join(etc, "passwd"))
	if err != nil {
		return nil, fmt.Errorf("install secrets: %w", err)
	}
	groups, err := readIDs(filepath.Join(etc, "group"))
	if err != nil {
		return nil, fmt.Errorf("install secrets: %w", err)
	}
	seen := map[string]bool{}
	var out []entry
	for _, s := range o.Secrets {
		if !validName(s.Name) {
			return nil, fmt.Errorf("install secrets: invalid secret name %q", s.Name)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("install secrets: duplicate secret %q", s.Name)
		}
		seen[s.Name] = true
		e := entry{name: s.Name, src: s.Source}
		if o.RealPath != nil {
			e.src = o.RealPath(s.Source)
		}
		owner, group := s.Owner, s.Group
		if owner == "" {
			owner = "root"
		}
		if group == "" {
			group = "root"
		}
		var ok bool
		if e.uid, ok = users[owner]; !ok {
			return nil, fmt.Errorf("install secret %q: unknown owner %q (not in %s)", s.Name, owner, filepath.Join(etc, "passwd"))
		}
		if e.gid, ok = groups[group]; !ok {
			return nil, fmt.Errorf("install secret %q: unknown group %q (not in %s)", s.Name, group, filepath.Join(etc, "group"))
		}
		mode := s.Mode
		if mode == "" {
			mode = "0400"
		}
		m, err := strconv.ParseUint(mode, 8, 32)
		if err != nil || m > 0o777 {
			return nil, fmt.Errorf("install secret %q: invalid mode %q (want octal permission bits like \"0400\")", s.Name, mode)
		}
		e.mode = uint32(m)
		own := filepath.Join(runDir, currentLink, s.Name)
		switch p := s.Path; {
		case p == "" || p == own:
		case !filepath.IsAbs(p) || filepath.Clean(p) != p:
			return nil, fmt.Errorf("install secret %q: destination %q is not an absolute clean path", s.Name, p)
		case p == runDir || strings.HasPrefix(p, runDir+"/"):
			return nil, fmt.Errorf("install secret %q: destination %q is inside %q but is not %q", s.Name, p, runDir, own)
		default:
			e.dest = p
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// dropRemoved wipes and removes, from generation directory gen, every
// secret not among entries (by name).
func dropRemoved(dfd int, gen string, entries []entry) error {
	fd, err := unix.Openat(dfd, gen, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open generation %s: %w", gen, err)
	}
	defer unix.Close(fd)
	names, err := readDirNames(fd)
	if err != nil {
		return fmt.Errorf("list generation %s: %w", gen, err)
	}
	keep := map[string]bool{stateFile: true}
	for _, e := range entries {
		keep[e.name] = true
	}
	var errs []error
	for _, n := range names {
		if keep[n] {
			continue
		}
		if err := removeAt(fd, n); err != nil {
			errs = append(errs, fmt.Errorf("remove secret %q of generation %s: %w", n, gen, err))
		}
	}
	if err := unix.Fsync(fd); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validName reports whether a secret name is usable as a file name in the
// generation directory; names starting with "." are reserved for ours.
func validName(n string) bool {
	return n != "" && len(n) <= 200 && !strings.HasPrefix(n, ".") && !strings.ContainsAny(n, "/\x00")
}

// readIDs reads name → id (third field) from a passwd or group file.
func readIDs(path string) (map[string]int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %q: %w", path, err)
	}
	ids := map[string]int{}
	for line := range strings.Lines(string(data)) {
		f := strings.Split(strings.TrimRight(line, "\n"), ":")
		if len(f) < 3 || f[0] == "" || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], "+") || strings.HasPrefix(f[0], "-") {
			continue
		}
		id, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		if _, dup := ids[f[0]]; !dup {
			ids[f[0]] = int(id)
		}
	}
	return ids, nil
}

// writeSecret decrypts e into dir fd sfd: a file created exclusively,
// without following symlinks, chowned and chmodded before the first byte,
// synced, and renamed to its name only after the age stream ended cleanly.
func writeSecret(sfd int, e entry, ids []age.Identity, beforeWrite func(int)) (err error) {
	f, err := os.Open(e.src)
	if err != nil {
		return fmt.Errorf("open ciphertext: %w", err)
	}
	defer f.Close()
	r, err := decryptReader(f, ids)
	if err != nil {
		return err
	}
	tmp := "." + e.name + ".tmp"
	fd, err := unix.Openat(sfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("create %q: %w", tmp, err)
	}
	out := os.NewFile(uintptr(fd), tmp)
	defer func() {
		if err != nil {
			wipeFD(int(out.Fd()))
			out.Close()
			_ = unix.Unlinkat(sfd, tmp, 0)
		}
	}()
	if err := unix.Fchown(fd, e.uid, e.gid); err != nil {
		return fmt.Errorf("chown %q: %w", tmp, err)
	}
	if err := unix.Fchmod(fd, e.mode); err != nil {
		return fmt.Errorf("chmod %q: %w", tmp, err)
	}
	if beforeWrite != nil {
		beforeWrite(fd)
	}
	buf := make([]byte, 32<<10)
	defer clear(buf)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, werr := out.Write(buf[:n]); werr != nil {
				return fmt.Errorf("write %q: %w", tmp, werr)
			}
			clear(buf[:n])
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// age errors say what failed (authentication, truncation),
			// never what the plaintext was.
			return fmt.Errorf("decrypt: %w", rerr)
		}
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync %q: %w", tmp, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("close %q: %w", tmp, err)
	}
	if err := unix.Renameat2(sfd, tmp, sfd, e.name, unix.RENAME_NOREPLACE); err != nil {
		_ = unix.Unlinkat(sfd, tmp, 0)
		return fmt.Errorf("rename %q: %w", tmp, err)
	}
	return nil
}

// stage decrypts every entry into a new directory stage under dfd and
// records state there.
func (o *InstallOptions) stage(ctx context.Context, dfd int, stage, state string, entries []entry) (err error) {
	var ids []age.Identity
	if len(entries) > 0 {
		paths := o.Identities
		if len(paths) == 0 {
			paths = []string{DefaultIdentity}
		}
		if ids, err = LoadIdentities(paths...); err != nil {
			return fmt.Errorf("install secrets of generation %d: %w", o.Generation, err)
		}
	}
	if err := removeAt(dfd, stage); err != nil {
		return fmt.Errorf("install secrets: remove stale %q: %w", stage, err)
	}
	if err := unix.Mkdirat(dfd, stage, 0o700); err != nil {
		return fmt.Errorf("install secrets: create %q: %w", stage, err)
	}
	sfd, err := unix.Openat(dfd, stage, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("install secrets: open %q: %w", stage, err)
	}
	defer unix.Close(sfd)
	if err := unix.Fchmod(sfd, 0o711); err != nil {
		return fmt.Errorf("install secrets: chmod %q: %w", stage, err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeSecret(sfd, e, ids, o.beforeWrite); err != nil {
			return fmt.Errorf("install secret %q of generation %d: %w", e.name, o.Generation, err)
		}
	}
	if err := writeStateFile(sfd, state); err != nil {
		return fmt.Errorf("install secrets: %w", err)
	}
	if err := unix.Fsync(sfd); err != nil {
		return fmt.Errorf("install secrets: sync %q: %w", stage, err)
	}
	return nil
}

// RevokedError is [Install]'s refusal to decrypt a revoked version of a
// secret.
type RevokedError struct {
	// Secret is the secret's name, Version its revoked ciphertext
	// ([manifest.SecretVersion]).
	Secret, Version string
	// Generation is the generation being installed.
	Generation int
}

func (e *RevokedError) Error() string {
	return fmt.Sprintf("secret %q of generation %d is revoked version %s: it is never installed again", e.Secret, e.Generation, e.Version)
}

// stateOf describes a generation's secrets: for each, its name, the
// SHA-256 of its ciphertext, uid, gid, mode and destination. A ciphertext
// whose hex SHA-256 is in revoked is a *[RevokedError].
func stateOf(entries []entry, revoked map[string]bool) (string, error) {
	var b strings.Builder
	for _, e := range entries {
		data, err := os.ReadFile(e.src)
		if err != nil {
			return "", fmt.Errorf("secret %q: read ciphertext: %w", e.name, err)
		}
		sum := fmt.Sprintf("%x", sha256.Sum256(data))
		if revoked[sum] {
			return "", &RevokedError{Secret: e.name, Version: "sha256:" + sum}
		}
		fmt.Fprintf(&b, "secret\t%s\t%s\t%d\t%d\t%04o\t%s\n", e.name, sum, e.uid, e.gid, e.mode, e.dest)
	}
	return b.String(), nil
}

// wipeRevoked wipes and removes, from every generation directory under dfd
// but generation except (when hasExcept), each secret whose recorded
// ciphertext is revoked (hex SHA-256s).
func wipeRevoked(dfd int, revoked map[string]bool, except int, hasExcept bool, logf func(string, ...any)) {
	names, err := readDirNames(dfd)
	if err != nil {
		logf("secrets: wiping revoked versions: %v", err)
		return
	}
	for _, gen := range names {
		if n, err := strconv.Atoi(gen); err != nil || (hasExcept && n == except) {
			continue
		}
		var gone []string
		for l := range strings.Lines(readState(dfd, gen)) {
			f := strings.Split(strings.TrimRight(l, "\n"), "\t")
			if len(f) == 7 && revoked[f[2]] && validName(f[1]) {
				gone = append(gone, f[1])
			}
		}
		if len(gone) == 0 {
			continue
		}
		fd, err := unix.Openat(dfd, gen, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			logf("secrets: wiping revoked versions in generation %s: %v", gen, err)
			continue
		}
		for _, name := range gone {
			if err := removeAt(fd, name); err != nil {
				logf("secrets: wiping the revoked version of secret %q in generation %s: %v", name, gen, err)
				continue
			}
			logf("secrets: wiped the revoked version of secret %q kept for generation %s", name, gen)
		}
		_ = unix.Fsync(fd)
		unix.Close(fd)
	}
}

// writeStateFile records a generation's state (see stateOf).
func writeStateFile(sfd int, state string) error {
	fd, err := unix.Openat(sfd, stateFile, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %q: %w", stateFile, err)
	}
	f := os.NewFile(uintptr(fd), stateFile)
	defer f.Close()
	if _, err := f.WriteString(state); err != nil {
		return fmt.Errorf("write %q: %w", stateFile, err)
	}
	return nil
}

// readState returns generation gen's recorded state, or "".
func readState(dfd int, gen string) string {
	fd, err := unix.Openat(dfd, gen+"/"+stateFile, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	f := os.NewFile(uintptr(fd), stateFile)
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return ""
	}
	return string(data)
}

// readDests returns the destination symlinks generation gen placed.
func readDests(dfd int, gen string) []string {
	var out []string
	for l := range strings.Lines(readState(dfd, gen)) {
		f := strings.Split(strings.TrimRight(l, "\n"), "\t")
		if len(f) == 7 && filepath.IsAbs(f[6]) {
			out = append(out, f[6])
		}
	}
	return out
}

// generationIntact reports whether directory gen exists (a real
// directory, not a symlink) with the given state and every secret file
// present with its owner and mode.
func generationIntact(dfd int, gen, state string, entries []entry) bool {
	var st unix.Stat_t
	if unix.Fstatat(dfd, gen, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	if readState(dfd, gen) != state {
		return false
	}
	for _, e := range entries {
		if unix.Fstatat(dfd, gen+"/"+e.name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG ||
			int(st.Uid) != e.uid || int(st.Gid) != e.gid || st.Mode&0o7777 != e.mode {
			return false
		}
	}
	return true
}

// Current returns the generation RunDir/secrets points at; ok is false when
// the link does not exist.
func Current(runDir string) (gen int, ok bool, err error) {
	link := filepath.Join(runDir, currentLink)
	t, err := os.Readlink(link)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read secrets link %q: %w", link, err)
	}
	n, found := strings.CutPrefix(t, generationsDir+"/")
	g, err := strconv.Atoi(n)
	if !found || err != nil || g < 0 {
		return 0, false, fmt.Errorf("read secrets link %q: unexpected target %q", link, t)
	}
	return g, true, nil
}

// switchLink points dir fd's name at target: a temporary symlink renamed
// over name, so readers see the old target or the new one, never none.
func switchLink(dirFD int, name, target string) error {
	tmp := "." + name + ".tmp"
	_ = unix.Unlinkat(dirFD, tmp, 0)
	if err := unix.Symlinkat(target, dirFD, tmp); err != nil {
		return err
	}
	if err := unix.Renameat(dirFD, tmp, dirFD, name); err != nil {
		_ = unix.Unlinkat(dirFD, tmp, 0)
		return err
	}
	return unix.Fsync(dirFD)
}

// Prune removes every generation directory under RunDir/secrets.d except
// those in keep and the one RunDir/secrets points at (never removed), and
// any leftover staging directory. Files are overwritten with zeros before
// they are unlinked. [Install] calls it keeping the new and the previous
// generation.
func Prune(runDir string, keep ...int) error {
	dir := filepath.Join(runDir, generationsDir)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("prune secrets: open %q: %w", dir, err)
	}
	defer unix.Close(dfd)
	kept := map[string]bool{}
	for _, k := range keep {
		kept[strconv.Itoa(k)] = true
	}
	if cur, ok, err := Current(runDir); err != nil {
		return fmt.Errorf("prune secrets: %w", err)
	} else if ok {
		kept[strconv.Itoa(cur)] = true
	}
	names, err := readDirNames(dfd)
	if err != nil {
		return fmt.Errorf("prune secrets: list %q: %w", dir, err)
	}
	var errs []error
	for _, n := range names {
		if kept[n] {
			continue
		}
		if err := removeAt(dfd, n); err != nil {
			errs = append(errs, fmt.Errorf("prune secrets: remove %q: %w", filepath.Join(dir, n), err))
		}
	}
	return errors.Join(errs...)
}

// readDirNames lists the directory fd without consuming fd itself.
func readDirNames(fd int) ([]string, error) {
	d, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(d), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeAt removes name under dir fd without following symlinks; regular
// files are zeroed first. A missing name is not an error.
func removeAt(dfd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		names, err := readDirNames(fd)
		if err == nil {
			for _, n := range names {
				if e := removeAt(fd, n); e != nil && err == nil {
					err = e
				}
			}
		}
		unix.Close(fd)
		if err != nil {
			return err
		}
		return unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
	case unix.S_IFREG:
		if fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
			wipeFD(fd)
			unix.Close(fd)
		}
	}
	return unix.Unlinkat(dfd, name, 0)
}

// wipeFD overwrites a regular file's content with zeros and truncates it.
func wipeFD(fd int) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	zero := make([]byte, 32<<10)
	for off := int64(0); off < st.Size; {
		n := min(int64(len(zero)), st.Size-off)
		w, err := unix.Pwrite(fd, zero[:n], off)
		if err != nil || w <= 0 {
			break
		}
		off += int64(w)
	}
	_ = unix.Fsync(fd)
	_ = unix.Ftruncate(fd, 0)
}
