package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"filippo.io/age"
	"golang.org/x/sys/unix"

	"github.com/declarative/deploy/internal/atomicfile"
)

// ErrNoTempDir is returned by [PrivateTempDir] when no directory on a
// memory file system is available for the plaintext an editor works on.
var ErrNoTempDir = errors.New("no tmpfs directory for the plaintext ($XDG_RUNTIME_DIR or /dev/shm)")

// PrivateTempDir returns a directory on tmpfs or ramfs for plaintext being
// edited: $XDG_RUNTIME_DIR, then /dev/shm. getenv is os.Getenv or a test's.
func PrivateTempDir(getenv func(string) string) (string, error) {
	for _, d := range []string{getenv("XDG_RUNTIME_DIR"), "/dev/shm"} {
		if d == "" {
			continue
		}
		var fs unix.Statfs_t
		if unix.Statfs(d, &fs) == nil && (fs.Type == tmpfsMagic || fs.Type == ramfsMagic) {
			return d, nil
		}
	}
	return "", ErrNoTempDir
}

// EditOptions are the inputs of [Edit].
type EditOptions struct {
	// File is the .age file; it need not exist yet.
	File string
	// Recipients are every key the result is encrypted to.
	Recipients []Recipient
	// Identities decrypt File when it exists.
	Identities []age.Identity
	// Editor is the editor command, run by /bin/sh with the plaintext
	// file's path as its argument ("vi", "code --wait").
	Editor string
	// TempDir is a directory on a memory file system (see
	// [PrivateTempDir]); the plaintext lives in a private directory
	// created inside it, only while the editor runs.
	TempDir string
	// Stdin, Stdout and Stderr are the editor's.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Logf, if set, receives progress lines (never plaintext).
	Logf func(format string, args ...any)
}

// Edit decrypts File into memory (when it exists), writes the plaintext to
// a file created O_EXCL|O_NOFOLLOW with mode 0600 in a new 0700 directory
// under TempDir, runs the editor on it, reads it back, overwrites it with
// zeros and removes the directory (with anything the editor left there),
// and, if the content changed, encrypts it to Recipients and replaces File
// atomically. It reports whether File was written. An empty result for a
// new file, or an editor that fails, writes nothing.
func Edit(ctx context.Context, o EditOptions) (changed bool, err error) {
	logf := func(format string, args ...any) {
		if o.Logf != nil {
			o.Logf(format, args...)
		}
	}
	if o.TempDir == "" {
		return false, ErrNoTempDir
	}
	if o.Editor == "" {
		return false, errors.New("edit secret: no editor (set $VISUAL or $EDITOR)")
	}
	if len(o.Recipients) == 0 {
		return false, fmt.Errorf("edit secret %q: no recipients", o.File)
	}
	// Check recipients before the operator types anything.
	for _, r := range o.Recipients {
		if _, err := ParseRecipient(r.Key); err != nil {
			return false, fmt.Errorf("edit secret %q: recipient %s: %w", o.File, r.Owner, err)
		}
	}
	var old []byte
	exists := false
	if f, err := os.Open(o.File); err == nil {
		exists = true
		old, err = Decrypt(f, o.Identities)
		f.Close()
		if err != nil {
			return false, fmt.Errorf("edit secret %q: %w", o.File, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("edit secret: %w", err)
	}
	defer clear(old)

	dir, err := os.MkdirTemp(o.TempDir, "deploy-secret-")
	if err != nil {
		return false, fmt.Errorf("edit secret: private directory: %w", err)
	}
	defer wipeDir(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		return false, fmt.Errorf("edit secret: %w", err)
	}
	name := filepath.Base(o.File)
	if ext := filepath.Ext(name); ext == ".age" {
		name = name[:len(name)-len(ext)]
	}
	p := filepath.Join(dir, name)
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return false, fmt.Errorf("edit secret: create %q: %w", p, err)
	}
	tf := os.NewFile(uintptr(fd), p)
	_, werr := tf.Write(old)
	if cerr := tf.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return false, fmt.Errorf("edit secret: write %q: %w", p, werr)
	}

	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", o.Editor+` "$1"`, "deploy-editor", p)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	if err := cmd.Run(); err != nil {
		return false, fmt.Errorf("edit secret %q: editor %q: %w (nothing written)", o.File, o.Editor, err)
	}
	edited, err := readNoFollow(p)
	if err != nil {
		return false, fmt.Errorf("edit secret: read back %q: %w", p, err)
	}
	defer clear(edited)
	switch {
	case exists && bytes.Equal(old, edited):
		logf("%s: unchanged", o.File)
		return false, nil
	case !exists && len(edited) == 0:
		logf("%s: empty, not created", o.File)
		return false, nil
	}
	ct, err := Encrypt(edited, o.Recipients)
	if err != nil {
		return false, fmt.Errorf("edit secret %q: %w", o.File, err)
	}
	if err := atomicfile.Write(o.File, ct, 0o644); err != nil {
		return false, fmt.Errorf("edit secret: %w", err)
	}
	logf("%s: encrypted to %d recipients", o.File, len(o.Recipients))
	return true, nil
}

// readNoFollow reads a regular file without following a symlink at its
// name (an editor that replaced the file by a link to elsewhere is an
// error, not a leak).
func readNoFollow(p string) ([]byte, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var buf bytes.Buffer
	_, err = io.Copy(&buf, io.LimitReader(f, 64<<20))
	return buf.Bytes(), err
}

// wipeDir overwrites every regular file in dir (the editor's swap and
// backup files too) with zeros and removes dir.
func wipeDir(dir string) {
	if fd, err := unix.Open(filepath.Dir(dir), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		_ = removeAt(fd, filepath.Base(dir))
		unix.Close(fd)
	}
	os.RemoveAll(dir)
}

// Rekey decrypts file with ids into memory and encrypts it again to
// rcpts, replacing it atomically. The plaintext is cleared afterwards.
func Rekey(file string, ids []age.Identity, rcpts []Recipient) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("rekey: %w", err)
	}
	pt, err := Decrypt(f, ids)
	f.Close()
	if err != nil {
		return fmt.Errorf("rekey %q: %w", file, err)
	}
	defer clear(pt)
	ct, err := Encrypt(pt, rcpts)
	if err != nil {
		return fmt.Errorf("rekey %q: %w", file, err)
	}
	if err := atomicfile.Write(file, ct, 0o644); err != nil {
		return fmt.Errorf("rekey: %w", err)
	}
	return nil
}

// FileStatus reads file's stanzas and checks them against rcpts (see
// [Check]). A missing file is reported as an error wrapping
// os.ErrNotExist.
func FileStatus(file string, rcpts []Recipient) (Status, error) {
	f, err := os.Open(file)
	if err != nil {
		return Status{}, err
	}
	defer f.Close()
	st, err := ReadStanzas(f)
	if err != nil {
		return Status{}, fmt.Errorf("%q: %w", file, err)
	}
	return Check(st, rcpts)
}
