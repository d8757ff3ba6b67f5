package secrets

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/declarative/deploy/internal/testenv"
	"github.com/declarative/deploy/manifest"
)

const (
	uidSvc    = 1000  // "svc" in the test passwd
	uidNobody = 65534 // "nobody": the racing reader
)

// fixture is a target-like tree for Install: a run directory, a store of
// ciphertexts, passwd/group files and a host key.
type fixture struct {
	t        *testing.T
	base     string
	runDir   string
	store    string
	etc      string
	identity string
	rcpt     age.Recipient
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.NeedRoot(t)
	base, err := os.MkdirTemp("", "secrets-test-")
	if err != nil {
		t.Fatal(err)
	}
	// The racing reader (another uid) must reach the run directory.
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, base: base, runDir: filepath.Join(base, "run"), store: filepath.Join(base, "store"), etc: filepath.Join(base, "etc")}
	t.Cleanup(func() {
		for unix.Unmount(filepath.Join(f.runDir, generationsDir), unix.MNT_DETACH) == nil {
		}
		os.RemoveAll(base)
	})
	for _, d := range []string{f.store, f.etc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(f.etc, "passwd"), "root:x:0:0:root:/root:/bin/sh\nsvc:x:1000:1000::/var/empty:/usr/sbin/nologin\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")
	write(t, filepath.Join(f.etc, "group"), "root:x:0:\nsvc:x:1000:\nnogroup:x:65534:\n")
	f.identity, f.rcpt = newHostKey(t, base, "host_key")
	return f
}

// newHostKey writes an OpenSSH ed25519 private key and returns its path and
// its age recipient.
func newHostKey(t *testing.T, dir, name string) (string, age.Recipient) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	spub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	r, err := agessh.NewEd25519Recipient(spub)
	if err != nil {
		t.Fatal(err)
	}
	return p, r
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// encrypt stores plaintext encrypted to the host key and returns its path.
func (f *fixture) encrypt(name string, plaintext []byte) string {
	f.t.Helper()
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, f.rcpt)
	if err != nil {
		f.t.Fatal(err)
	}
	w.Write(plaintext)
	if err := w.Close(); err != nil {
		f.t.Fatal(err)
	}
	p := filepath.Join(f.store, rand.Text()[:8]+"-"+name+".age")
	if err := os.WriteFile(p, buf.Bytes(), 0o444); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) secret(name, plaintext, owner, group, mode string) manifest.Secret {
	return manifest.Secret{Name: name, Source: f.encrypt(name, []byte(plaintext)), Path: filepath.Join(f.runDir, "secrets", name),
		Owner: owner, Group: group, Mode: mode}
}

func (f *fixture) opts(gen int, ss ...manifest.Secret) InstallOptions {
	return InstallOptions{RunDir: f.runDir, Generation: gen, Secrets: ss, Identities: []string{f.identity}, EtcDir: f.etc, Logf: f.t.Logf}
}

func (f *fixture) install(gen int, ss ...manifest.Secret) {
	f.t.Helper()
	if err := Install(context.Background(), f.opts(gen, ss...)); err != nil {
		f.t.Fatalf("Install(generation %d) = %v", gen, err)
	}
}

// state is what a reader of RunDir/secrets sees: name → content, plus the
// generation the link names and the generation directories present.
func (f *fixture) state() (cur int, files map[string]string, gens []string) {
	f.t.Helper()
	cur, ok, err := Current(f.runDir)
	if err != nil || !ok {
		f.t.Fatalf("Current = %d, %v, %v", cur, ok, err)
	}
	files = map[string]string{}
	des, err := os.ReadDir(filepath.Join(f.runDir, "secrets"))
	if err != nil {
		f.t.Fatal(err)
	}
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(f.runDir, "secrets", de.Name()))
		if err != nil {
			f.t.Fatal(err)
		}
		files[de.Name()] = string(b)
	}
	des, err = os.ReadDir(filepath.Join(f.runDir, generationsDir))
	if err != nil {
		f.t.Fatal(err)
	}
	for _, de := range des {
		gens = append(gens, de.Name())
	}
	return cur, files, gens
}

func TestInstall(t *testing.T) {
	f := newFixture(t)
	big := strings.Repeat("0123456789abcdef", 10000) // several age chunks
	ss := []manifest.Secret{
		f.secret("db-password", "hunter2\n", "svc", "svc", "0440"),
		f.secret("empty", "", "", "", ""),
		f.secret("big", big, "root", "nogroup", "0400"),
	}
	f.install(1, ss...)
	cur, files, gens := f.state()
	if diff := cmp.Diff(map[string]string{"db-password": "hunter2\n", "empty": "", "big": big}, files); cur != 1 || diff != "" {
		t.Errorf("after Install: generation %d, files (-want +got):\n%s", cur, diff)
	}
	if want := []string{"1"}; !slices.Equal(gens, want) {
		t.Errorf("generation directories = %q, want %q", gens, want)
	}
	tests := []struct {
		name     string
		uid, gid uint32
		mode     uint32
	}{
		{"db-password", uidSvc, uidSvc, 0o440},
		{"empty", 0, 0, 0o400},
		{"big", 0, 65534, 0o400},
	}
	for _, tt := range tests {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(f.runDir, generationsDir, "1", tt.name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != tt.uid || st.Gid != tt.gid || st.Mode&0o7777 != tt.mode || st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("%s: uid %d gid %d mode %o, want %d %d %o", tt.name, st.Uid, st.Gid, st.Mode, tt.uid, tt.gid, tt.mode)
		}
	}
	// The mount: ramfs, nodev,nosuid,noexec; the run directory traversable.
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Join(f.runDir, generationsDir), &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != ramfsMagic || fs.Flags&(unix.ST_NODEV|unix.ST_NOSUID|unix.ST_NOEXEC) != unix.ST_NODEV|unix.ST_NOSUID|unix.ST_NOEXEC {
		t.Errorf("secrets.d: fs type %#x flags %#x, want ramfs with nodev,nosuid,noexec", fs.Type, fs.Flags)
	}
	if fi, err := os.Stat(f.runDir); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("run dir mode = %v, %v; want 0711", fi.Mode(), err)
	}
	// Installing the same generation again is a no-op for readers.
	f.install(1, ss...)
	if cur2, files2, gens2 := f.state(); cur2 != 1 || !cmp.Equal(files, files2) || !slices.Equal(gens, gens2) {
		t.Errorf("second Install(1): generation %d, gens %q, files differ: %v", cur2, gens2, !cmp.Equal(files, files2))
	}
}

func TestInstallOwnerAndModeBeforeFirstByte(t *testing.T) {
	f := newFixture(t)
	o := f.opts(1, f.secret("a", "secret-a", "svc", "nogroup", "0400"), f.secret("b", "secret-b", "root", "svc", "0640"))
	var seen []string
	o.beforeWrite = func(fd int) {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		seen = append(seen, fmt.Sprintf("%d:%d:%04o:%d", st.Uid, st.Gid, st.Mode&0o7777, st.Size))
	}
	if err := Install(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if want := []string{"1000:65534:0400:0", "0:1000:0640:0"}; !slices.Equal(seen, want) {
		t.Errorf("uid:gid:mode:size before the first write = %q, want %q", seen, want)
	}
}

func TestInstallFailureKeepsPrevious(t *testing.T) {
	const plain = "correct horse battery staple"
	big := strings.Repeat("x", 3*64*1024+100) // 4 chunks
	tests := []struct {
		name   string
		mutate func(f *fixture, o *InstallOptions)
	}{
		{"truncated last bytes", func(f *fixture, o *InstallOptions) { truncate(t, o.Secrets[0].Source, 10) }},
		{"truncated at a chunk boundary", func(f *fixture, o *InstallOptions) {
			// Header, 16-byte nonce, then 64 KiB + 16 per chunk: keep exactly
			// the first full chunk, which is not marked last.
			ct, _ := os.ReadFile(o.Secrets[0].Source)
			hdr := bytes.Index(ct, []byte("\n---")) + 1
			hdr += bytes.IndexByte(ct[hdr:], '\n') + 1
			if err := os.WriteFile(o.Secrets[0].Source, ct[:hdr+16+64*1024+16], 0o444); err != nil {
				t.Fatal(err)
			}
		}},
		{"tampered payload", func(f *fixture, o *InstallOptions) { flip(t, o.Secrets[0].Source, -40) }},
		{"tampered first chunk", func(f *fixture, o *InstallOptions) {
			ct, _ := os.ReadFile(o.Secrets[0].Source)
			flip(t, o.Secrets[0].Source, bytes.Index(ct, []byte("\n---"))+80)
		}},
		{"tampered header", func(f *fixture, o *InstallOptions) { flip(t, o.Secrets[0].Source, 30) }},
		{"wrong identity", func(f *fixture, o *InstallOptions) {
			p, _ := newHostKey(t, f.base, "other_key")
			o.Identities = []string{p}
		}},
		{"missing identity", func(f *fixture, o *InstallOptions) { o.Identities = []string{filepath.Join(f.base, "nonexistent")} }},
		{"missing ciphertext", func(f *fixture, o *InstallOptions) { o.Secrets[0].Source = filepath.Join(f.store, "nonexistent.age") }},
		{"unknown owner", func(f *fixture, o *InstallOptions) { o.Secrets[0].Owner = "nosuchuser" }},
		{"unknown group", func(f *fixture, o *InstallOptions) { o.Secrets[0].Group = "nosuchgroup" }},
		{"bad mode", func(f *fixture, o *InstallOptions) { o.Secrets[0].Mode = "4755" }},
		{"second of two fails", func(f *fixture, o *InstallOptions) {
			o.Secrets = append(o.Secrets, f.secret("zz", plain+"-new", "", "", ""))
			truncate(t, o.Secrets[1].Source, 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.install(1, f.secret("s", plain, "svc", "svc", "0400"), f.secret("t", "other", "", "", ""))
			o := f.opts(2, f.secret("s", big+"new-"+plain, "svc", "svc", "0400"))
			tt.mutate(f, &o)
			err := Install(context.Background(), o)
			if err == nil {
				t.Fatalf("Install(2) succeeded, want an error")
			}
			t.Logf("Install(2) = %v", err)
			if strings.Contains(err.Error(), plain) || strings.Contains(err.Error(), "xxxxxxxx") {
				t.Errorf("error %q contains plaintext", err)
			}
			cur, files, gens := f.state()
			if want := map[string]string{"s": plain, "t": "other"}; cur != 1 || !cmp.Equal(files, want) || !slices.Equal(gens, []string{"1"}) {
				t.Errorf("after failed Install(2) = %v: generation %d, dirs %q, files %q; want generation 1, dirs [1], %q", err, cur, gens, files, want)
			}
		})
	}
}

func truncate(t *testing.T, p string, n int) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b[:len(b)-n], 0o444); err != nil {
		t.Fatal(err)
	}
}

// flip inverts one bit at offset off (negative: from the end).
func flip(t *testing.T, p string, off int) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += len(b)
	}
	b[off] ^= 0x04
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
}

func TestInstallRemoveAndRollback(t *testing.T) {
	f := newFixture(t)
	dest := filepath.Join(f.base, "etc", "app", "token")
	tok := f.secret("token", "tok-1", "", "", "")
	tok.Path = dest
	gen1 := []manifest.Secret{f.secret("a", "a-1", "", "", ""), tok}
	gen2 := []manifest.Secret{f.secret("a", "a-2", "", "", "")}
	gen3 := []manifest.Secret{f.secret("a", "a-3", "", "", ""), f.secret("c", "c-3", "", "", "")}
	readDest := func() string {
		b, err := os.ReadFile(dest)
		if errors.Is(err, os.ErrNotExist) {
			if _, lerr := os.Lstat(dest); lerr == nil {
				return "(dangling link)"
			}
			return "(absent)"
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	steps := []struct {
		gen      int
		ss       []manifest.Secret
		files    map[string]string
		dest     string
		dirs     []string
		failWith string
	}{
		{1, gen1, map[string]string{"a": "a-1", "token": "tok-1"}, "tok-1", []string{"1"}, ""},
		{2, gen2, map[string]string{"a": "a-2"}, "(absent)", []string{"1", "2"}, ""},
		{1, gen1, map[string]string{"a": "a-1", "token": "tok-1"}, "tok-1", []string{"1", "2"}, ""}, // rollback
		{3, gen3, map[string]string{"a": "a-3", "c": "c-3"}, "(absent)", []string{"1", "3"}, ""},
		{4, nil, map[string]string{}, "(absent)", []string{"3", "4"}, ""}, // every secret removed
	}
	for i, st := range steps {
		f.install(st.gen, st.ss...)
		cur, files, dirs := f.state()
		if cur != st.gen || !cmp.Equal(files, st.files) || !slices.Equal(dirs, st.dirs) {
			t.Errorf("step %d: Install(%d): generation %d, files %q, dirs %q; want %q, %q", i, st.gen, cur, files, dirs, st.files, st.dirs)
		}
		if got := readDest(); got != st.dest {
			t.Errorf("step %d: Install(%d): destination %s = %q, want %q", i, st.gen, dest, got, st.dest)
		}
	}
	if err := Prune(f.runDir); err != nil {
		t.Fatal(err)
	}
	if _, _, dirs := f.state(); !slices.Equal(dirs, []string{"4"}) {
		t.Errorf("Prune(no keep) left %q, want the current generation [4]", dirs)
	}
}

// TestInstallSymlinksNotFollowed plants a symlink at every path Install
// writes and checks that the symlink's target is never written to.
func TestInstallSymlinksNotFollowed(t *testing.T) {
	tests := []struct {
		name    string
		plant   func(f *fixture, victim string)
		wantErr bool
	}{
		{"run/secrets", func(f *fixture, victim string) {
			os.MkdirAll(f.runDir, 0o711)
			os.Symlink(victim, filepath.Join(f.runDir, "secrets"))
		}, false},
		{"run/.secrets.tmp", func(f *fixture, victim string) {
			os.MkdirAll(f.runDir, 0o711)
			os.Symlink(victim, filepath.Join(f.runDir, ".secrets.tmp"))
		}, false},
		{"run/secrets.d", func(f *fixture, victim string) {
			os.MkdirAll(f.runDir, 0o711)
			os.Symlink(victim, filepath.Join(f.runDir, generationsDir))
		}, true},
		{"run", func(f *fixture, victim string) { os.Symlink(victim, f.runDir) }, true},
		{"secrets.d/.2.tmp", func(f *fixture, victim string) {
			os.Symlink(victim, filepath.Join(f.runDir, generationsDir, ".2.tmp"))
		}, false},
		{"secrets.d/2", func(f *fixture, victim string) {
			os.Symlink(victim, filepath.Join(f.runDir, generationsDir, "2"))
		}, false},
		{"destination", func(f *fixture, victim string) {
			os.MkdirAll(filepath.Join(f.base, "dest"), 0o755)
			os.Symlink(filepath.Join(victim, "file"), filepath.Join(f.base, "dest", "d"))
		}, true},
		{"destination parent", func(f *fixture, victim string) { os.Symlink(victim, filepath.Join(f.base, "dest")) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			victim := filepath.Join(f.base, "victim")
			os.Mkdir(victim, 0o755)
			write(t, filepath.Join(victim, "file"), "untouched")
			if strings.HasPrefix(tt.name, "secrets.d/") {
				f.install(1, f.secret("x", "x-1", "", "", ""))
			}
			tt.plant(f, victim)
			s := f.secret("x", "x-2", "", "", "")
			d := s
			d.Name, d.Path = "d", filepath.Join(f.base, "dest", "d")
			err := Install(context.Background(), f.opts(2, s, d))
			if (err != nil) != tt.wantErr {
				t.Errorf("Install = %v, want error: %v", err, tt.wantErr)
			}
			des, _ := os.ReadDir(victim)
			b, _ := os.ReadFile(filepath.Join(victim, "file"))
			if len(des) != 1 || string(b) != "untouched" {
				t.Errorf("victim directory now holds %d entries, file %q; want only the untouched file", len(des), b)
			}
			var fs unix.Statfs_t
			if unix.Statfs(victim, &fs) == nil && fs.Type == ramfsMagic {
				unix.Unmount(victim, unix.MNT_DETACH)
				t.Errorf("a ramfs was mounted on the symlink's target")
			}
			if err == nil {
				if _, files, _ := f.state(); files["x"] != "x-2" {
					t.Errorf("after Install: x = %q, want x-2", files["x"])
				}
			}
		})
	}
	t.Run("temp file", func(t *testing.T) {
		f := newFixture(t)
		dir := filepath.Join(f.base, "d")
		os.Mkdir(dir, 0o700)
		victim := filepath.Join(f.base, "victim")
		write(t, victim, "untouched")
		os.Symlink(victim, filepath.Join(dir, ".x.tmp"))
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(dfd)
		ids, err := LoadIdentities(f.identity)
		if err != nil {
			t.Fatal(err)
		}
		err = writeSecret(dfd, entry{name: "x", src: f.encrypt("x", []byte("x")), mode: 0o400}, ids, nil)
		if b, _ := os.ReadFile(victim); err == nil || string(b) != "untouched" {
			t.Errorf("writeSecret over a planted symlink = %v, victim %q; want an error and the victim untouched", err, b)
		}
	})
}

func TestInstallExistingMount(t *testing.T) {
	tests := []struct {
		name, fstype, opts string
		flags              uintptr
		allowTmpfs         bool
		wantErr            bool
	}{
		{"tmpfs nodev,nosuid,noexec, allowed", "tmpfs", "mode=0711", unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC, true, false},
		{"tmpfs nodev,nosuid,noexec, not allowed", "tmpfs", "mode=0711", unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC, false, true},
		{"tmpfs without noexec", "tmpfs", "mode=0711", unix.MS_NODEV | unix.MS_NOSUID, true, true},
		{"tmpfs world-writable", "tmpfs", "mode=1777", unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			p := filepath.Join(f.runDir, generationsDir)
			if err := os.MkdirAll(p, 0o711); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("test", p, tt.fstype, tt.flags, tt.opts); err != nil {
				t.Fatal(err)
			}
			opts := f.opts(1, f.secret("x", "x", "", "", ""))
			opts.AllowTmpfs = tt.allowTmpfs
			var warnings []string
			opts.Warnf = func(format string, args ...any) { warnings = append(warnings, fmt.Sprintf(format, args...)) }
			err := Install(context.Background(), opts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Install = %v, want error: %v", err, tt.wantErr)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
			if !tt.wantErr && (len(warnings) != 1 || !strings.Contains(warnings[0], "swapped")) {
				t.Errorf("warnings = %q, want one saying secrets can be swapped", warnings)
			}
			var fs unix.Statfs_t
			unix.Statfs(p, &fs)
			if fs.Type != tmpfsMagic {
				t.Errorf("file system type %#x, want the existing tmpfs (%#x)", fs.Type, tmpfsMagic)
			}
		})
	}
}

// Where a ramfs cannot be mounted, Install falls back to a tmpfs only when
// allowed, and then says so; otherwise it fails and mounts nothing.
func TestInstallRamfsUnavailable(t *testing.T) {
	old := mountRamfs
	mountRamfs = func(string) error { return unix.EPERM }
	t.Cleanup(func() { mountRamfs = old })
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprint("allow tmpfs ", allow), func(t *testing.T) {
			f := newFixture(t)
			opts := f.opts(1, f.secret("x", "x", "", "", ""))
			opts.AllowTmpfs = allow
			var warnings []string
			opts.Warnf = func(format string, args ...any) { warnings = append(warnings, fmt.Sprintf(format, args...)) }
			err := Install(context.Background(), opts)
			var fs unix.Statfs_t
			unix.Statfs(filepath.Join(f.runDir, generationsDir), &fs)
			if !allow {
				if err == nil || !strings.Contains(err.Error(), "secrets_allow_tmpfs") {
					t.Fatalf("Install = %v, want an error naming secrets_allow_tmpfs", err)
				}
				if fs.Type == tmpfsMagic {
					t.Fatal("a tmpfs was mounted although not allowed")
				}
				if _, ok, _ := Current(f.runDir); ok {
					t.Fatal("secrets were installed")
				}
				return
			}
			if err != nil {
				t.Fatalf("Install = %v", err)
			}
			if fs.Type != tmpfsMagic {
				t.Fatalf("file system type %#x, want tmpfs", fs.Type)
			}
			if len(warnings) != 1 || !strings.Contains(warnings[0], "swapped") {
				t.Fatalf("warnings = %q, want one saying secrets can be swapped", warnings)
			}
		})
	}
}

// A secret the new generation drops loses its plaintext at once, also in
// the previous generation's directory that is kept for a rollback; the
// rollback decrypts it again.
func TestInstallRemovedSecretWiped(t *testing.T) {
	f := newFixture(t)
	gen1 := []manifest.Secret{f.secret("a", "a-1", "", "", ""), f.secret("gone", "gone-1", "svc", "svc", "0440")}
	gen2 := []manifest.Secret{f.secret("a", "a-2", "", "", "")}
	f.install(1, gen1...)
	f.install(2, gen2...)
	old := filepath.Join(f.runDir, generationsDir, "1")
	if _, err := os.Lstat(filepath.Join(old, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dropped secret is still in generation 1's directory (%v)", err)
	}
	if b, err := os.ReadFile(filepath.Join(old, "a")); err != nil || string(b) != "a-1" {
		t.Fatalf("generation 1's kept secret a = %q, %v", b, err)
	}
	f.install(1, gen1...) // rollback
	if _, files, _ := f.state(); !cmp.Equal(files, map[string]string{"a": "a-1", "gone": "gone-1"}) {
		t.Fatalf("after the rollback: %q", files)
	}
}

// TestInstallRacingReader runs an unprivileged process (uid 65534) that
// polls every path Install writes while it installs many generations, and
// checks that it never reads a byte of a secret it does not own, while it
// does read the secret it owns (so the reader really was racing).
func TestInstallRacingReader(t *testing.T) {
	f := newFixture(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(f.base, "racer")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	const gens = 40
	names := []string{"root-only", "svc-only", "group-svc", "mine"}
	stop := filepath.Join(f.base, "stop")
	cmd := exec.Command(bin, "-test.run=^TestRacingReaderHelper$")
	cmd.Env = append(os.Environ(), "SECRETS_RACER_RUN="+f.runDir, "SECRETS_RACER_NAMES="+strings.Join(names, ","),
		"SECRETS_RACER_GENS="+strconv.Itoa(gens), "SECRETS_RACER_STOP="+stop)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uidNobody, Gid: uidNobody}}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	big := strings.Repeat("s", 200*1024)
	for g := 1; g <= gens; g++ {
		f.install(g,
			f.secret("root-only", big, "root", "root", "0400"),
			f.secret("svc-only", big, "svc", "svc", "0600"),
			f.secret("group-svc", big, "root", "svc", "0440"),
			f.secret("mine", big, "nobody", "nogroup", "0400"))
	}
	write(t, stop, "")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("racer: %v\n%s", err, stderr.String())
	}
	var got map[string]int64
	line := out.String()
	if i := strings.Index(line, "RACER "); i >= 0 {
		line = line[i+len("RACER "):]
		line = line[:strings.IndexByte(line, '\n')]
	}
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("racer output %q: %v\n%s", out.String(), err, stderr.String())
	}
	t.Logf("bytes read by uid %d: %v", uidNobody, got)
	for _, n := range names[:3] {
		if got[n] != 0 {
			t.Errorf("the unprivileged reader read %d bytes of %q", got[n], n)
		}
	}
	if got["mine"] == 0 {
		t.Errorf("the reader never read its own secret: it was not racing on the right paths")
	}
}

// TestRacingReaderHelper is the racing reader of TestInstallRacingReader,
// run in a child process as another uid.
func TestRacingReaderHelper(t *testing.T) {
	run := os.Getenv("SECRETS_RACER_RUN")
	if run == "" {
		t.Skip("helper process for TestInstallRacingReader")
	}
	names := strings.Split(os.Getenv("SECRETS_RACER_NAMES"), ",")
	gens, _ := strconv.Atoi(os.Getenv("SECRETS_RACER_GENS"))
	read := map[string]int64{}
	buf := make([]byte, 64*1024)
	try := func(name, p string) {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return
		}
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				break
			}
			read[name] += int64(n)
		}
		unix.Close(fd)
	}
	for {
		_, err := os.Stat(os.Getenv("SECRETS_RACER_STOP"))
		done := err == nil
		for g := 1; g <= gens; g++ {
			gs := strconv.Itoa(g)
			for _, n := range names {
				try(n, filepath.Join(run, generationsDir, "."+gs+".tmp", "."+n+".tmp"))
				try(n, filepath.Join(run, generationsDir, "."+gs+".tmp", n))
				try(n, filepath.Join(run, generationsDir, gs, "."+n+".tmp"))
				try(n, filepath.Join(run, generationsDir, gs, n))
			}
		}
		for _, n := range names {
			try(n, filepath.Join(run, "secrets", n))
		}
		if done {
			break
		}
	}
	b, _ := json.Marshal(read)
	fmt.Printf("RACER %s\n", b)
	io.WriteString(os.Stdout, "")
}

// A rollback to the kept previous generation reuses its files, so it works
// after the host key changed; after a reboot (empty ramfs) the ciphertext
// is decrypted again and needs a key that is a recipient.
func TestInstallRollbackAfterKeyChange(t *testing.T) {
	f := newFixture(t)
	gen1 := []manifest.Secret{f.secret("a", "a-1", "svc", "", "0400")}
	f.install(1, gen1...)
	f.install(2, f.secret("a", "a-2", "", "", ""))
	newKey, _ := newHostKey(t, f.base, "rotated")
	o := f.opts(1, gen1...)
	o.Identities = []string{newKey}
	if err := Install(context.Background(), o); err != nil {
		t.Fatalf("rollback to the kept generation 1 with another key = %v, want success without decrypting", err)
	}
	if cur, files, _ := f.state(); cur != 1 || files["a"] != "a-1" {
		t.Errorf("after rollback: generation %d, a = %q; want 1, a-1", cur, files["a"])
	}
	// Reboot: the ramfs is gone.
	if err := unix.Unmount(filepath.Join(f.runDir, generationsDir), unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := Install(context.Background(), o); err == nil {
		t.Errorf("Install(1) after a reboot with a key that is not a recipient succeeded")
	}
	f.install(1, gen1...)
	if cur, files, _ := f.state(); cur != 1 || files["a"] != "a-1" {
		t.Errorf("after reboot: generation %d, a = %q; want 1, a-1", cur, files["a"])
	}
}
