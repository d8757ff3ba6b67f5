package secrets

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/manifest"
)

// RevokedFile is the fleet's list of revoked secret versions, relative to
// the fleet directory.
const RevokedFile = "secrets/revoked"

// revokedHeader opens a revocation list that [AddRevocations] writes.
const revokedHeader = `# Revoked secret versions: no host installs these again, not even by a rollback.
# Written by deploy secrets revoke; one line each: sha256:HEX FILE TIME. Lines are never removed.
`

// Revocation is one line of the fleet's revocation list ([RevokedFile]):
// a version of a secret file that no host may install any more.
type Revocation struct {
	// Version is the revoked ciphertext ([manifest.SecretVersion]).
	Version string `json:"version"`
	// File is the secret file it was a version of, relative to the fleet
	// directory (for the reader; the agent matches versions only).
	File string `json:"file"`
	// Time is when it was revoked.
	Time time.Time `json:"time"`
}

// RevocationError is a malformed line of a revocation list.
type RevocationError struct {
	Line int
	Err  error
}

func (e *RevocationError) Error() string {
	return fmt.Sprintf("%s line %d: %v", RevokedFile, e.Line, e.Err)
}

func (e *RevocationError) Unwrap() error { return e.Err }

// ParseRevocations reads a revocation list: lines "sha256:HEX FILE TIME"
// (fields separated by blanks, TIME in RFC 3339), blank lines and lines
// starting with "#" ignored. A version listed twice is an error, so is any
// malformed line (a *[RevocationError] naming it).
func ParseRevocations(data []byte) ([]Revocation, error) {
	var out []Revocation
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, &RevocationError{n, fmt.Errorf("want \"sha256:HEX FILE TIME\", got %d fields", len(f))}
		}
		if !manifest.ValidSecretVersion(f[0]) {
			return nil, &RevocationError{n, fmt.Errorf("version %q is not sha256: and 64 lowercase hex digits", f[0])}
		}
		if first, dup := seen[f[0]]; dup {
			return nil, &RevocationError{n, fmt.Errorf("version %s is listed already on line %d", f[0], first)}
		}
		t, err := time.Parse(time.RFC3339, f[2])
		if err != nil {
			return nil, &RevocationError{n, fmt.Errorf("time %q is not RFC 3339", f[2])}
		}
		seen[f[0]] = n
		out = append(out, Revocation{Version: f[0], File: f[1], Time: t})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", RevokedFile, err)
	}
	return out, nil
}

// ReadRevocations reads dir's revocation list ([RevokedFile]); a missing
// file is an empty list.
func ReadRevocations(dir string) ([]Revocation, error) {
	data, err := os.ReadFile(filepath.Join(dir, RevokedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseRevocations(data)
}

// Versions returns the versions of rs, sorted and unique: what a manifest
// carries (manifest.Manifest.RevokedSecrets).
func Versions(rs []Revocation) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Version)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// AddRevocations adds rs to dir's revocation list, after its lines (which
// it never changes), skipping versions already listed, and returns those
// it added. The file is replaced atomically, and only when something was
// added: revoking is idempotent and the list only grows. A malformed list
// is an error and is left alone.
func AddRevocations(dir string, rs []Revocation) ([]Revocation, error) {
	p := filepath.Join(dir, RevokedFile)
	data, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	have, err := ParseRevocations(data)
	if err != nil {
		return nil, err
	}
	listed := map[string]bool{}
	for _, r := range have {
		listed[r.Version] = true
	}
	var added []Revocation
	for _, r := range rs {
		if !manifest.ValidSecretVersion(r.Version) {
			return nil, fmt.Errorf("revoke: version %q is not sha256: and 64 lowercase hex digits", r.Version)
		}
		if r.File == "" || strings.ContainsAny(r.File, " \t\n") {
			return nil, fmt.Errorf("revoke: file name %q is empty or contains blanks", r.File)
		}
		if listed[r.Version] {
			continue
		}
		listed[r.Version] = true
		added = append(added, r)
	}
	if len(added) == 0 {
		return nil, nil
	}
	if len(data) == 0 {
		data = []byte(revokedHeader)
	} else if data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	var b bytes.Buffer
	b.Write(data)
	for _, r := range added {
		fmt.Fprintf(&b, "%s %s %s\n", r.Version, r.File, r.Time.UTC().Format(time.RFC3339))
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(p, b.Bytes(), 0o644); err != nil {
		return nil, err
	}
	return added, nil
}

// History returns the versions (see [manifest.SecretVersion]) that file
// (relative to dir) had in every commit of dir's git repository, on every
// branch and tag, oldest first, without duplicates. It runs git.
func History(ctx context.Context, dir, file string) ([]string, error) {
	git := func(stdin io.Reader, args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
		cmd.Stdin = stdin
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	if _, err := git(nil, "rev-parse", "--git-dir"); err != nil {
		return nil, fmt.Errorf("history of %q: %q is not in a git repository: %w", file, dir, err)
	}
	// Every blob the path had: --raw lines ":OLDMODE NEWMODE OLDBLOB NEWBLOB STATUS\tPATH".
	out, err := git(nil, "log", "--all", "--reverse", "--no-renames", "--format=", "--raw", "--no-abbrev", "--", file)
	if err != nil {
		return nil, fmt.Errorf("history of %q: %w", file, err)
	}
	var blobs []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[0], ":") {
			continue
		}
		if b := f[3]; strings.Trim(b, "0") != "" && !slices.Contains(blobs, b) {
			blobs = append(blobs, b)
		}
	}
	if len(blobs) == 0 {
		return nil, nil
	}
	out, err = git(strings.NewReader(strings.Join(blobs, "\n")+"\n"), "cat-file", "--batch")
	if err != nil {
		return nil, fmt.Errorf("history of %q: %w", file, err)
	}
	var versions []string
	r := bufio.NewReader(bytes.NewReader(out))
	for range blobs {
		head, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("history of %q: git cat-file: %w", file, err)
		}
		f := strings.Fields(head)
		if len(f) != 3 || f[1] != "blob" {
			return nil, fmt.Errorf("history of %q: git cat-file: unexpected %q", file, strings.TrimSpace(head))
		}
		size, err := strconv.Atoi(f[2])
		if err != nil || size < 0 {
			return nil, fmt.Errorf("history of %q: git cat-file: unexpected %q", file, strings.TrimSpace(head))
		}
		content := make([]byte, size+1) // and the newline after it
		if _, err := io.ReadFull(r, content); err != nil {
			return nil, fmt.Errorf("history of %q: git cat-file: %w", file, err)
		}
		if v := manifest.SecretVersion(content[:size]); !slices.Contains(versions, v) {
			versions = append(versions, v)
		}
	}
	return versions, nil
}

// ReadRevokedRecord reads a host's record of revoked versions (one
// version a line); a missing file is an empty record.
func ReadRevokedRecord(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revoked secrets: %w", err)
	}
	var out []string
	for n, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		if !manifest.ValidSecretVersion(line) {
			return nil, fmt.Errorf("revoked secrets %q line %d: %q is not a secret version", path, n+1, line)
		}
		out = append(out, line)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// RecordRevoked adds versions to the host's record at path (a file of
// sorted versions, one a line, replaced atomically) and returns the whole
// record. The record only grows: whatever a later generation lists, a
// version once recorded stays. It writes nothing when nothing is new. An
// invalid version is an error and changes nothing.
func RecordRevoked(path string, versions []string) ([]string, error) {
	for _, v := range versions {
		if !manifest.ValidSecretVersion(v) {
			return nil, fmt.Errorf("revoked secrets: %q is not a secret version", v)
		}
	}
	have, err := ReadRevokedRecord(path)
	if err != nil {
		return nil, err
	}
	all := slices.Concat(have, versions)
	slices.Sort(all)
	all = slices.Compact(all)
	if len(all) == len(have) {
		return have, nil
	}
	data := strings.Join(all, "\n") + "\n"
	if err := atomicfile.Write(path, []byte(data), 0o644); err != nil {
		return nil, fmt.Errorf("revoked secrets: %w", err)
	}
	return all, nil
}
