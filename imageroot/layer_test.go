package imageroot

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// capNetBindService is security.capability for cap_net_bind_service=ep
// (VFS_CAP_REVISION_2 with the effective flag, permitted bit 10).
var capNetBindService = string([]byte{0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

var mtime = time.Unix(1700000000, 0)

// layer returns a tar of the headers; a regular file's body is its
// Linkname field's value moved out (headers here set no Linkname on files).
func layer(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		h := *h
		body := ""
		if h.Typeflag == tar.TypeReg {
			body, h.Linkname = h.Linkname, ""
			h.Size = int64(len(body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = mtime
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func file(name, body string, mode int64, uid int) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Linkname: body, Mode: mode, Uid: uid, Gid: uid}
}

func dir(name string, mode int64, uid int) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: uid}
}

func link(typ byte, name, to string) *tar.Header {
	return &tar.Header{Typeflag: typ, Name: name, Linkname: to, Mode: 0o777}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("applying owners and file capabilities needs root")
	}
}

func apply(t *testing.T, root string, layers ...[]byte) error {
	t.Helper()
	f, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, l := range layers {
		if _, err := ApplyLayer(f, bytes.NewReader(l), "layer "+string(rune('1'+i))); err != nil {
			return err
		}
	}
	return nil
}

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

func TestApplyLayerKeepsMetadata(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	secret := file("var/lib/db/secret", "s3cret\n", 0o600, 999)
	bin := file("usr/bin/bind", "#!/bin/sh\n", 0o755, 0)
	bin.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": capNetBindService, "SCHILY.xattr.user.origin": "test"}
	err := apply(t, root, layer(t,
		dir("var/", 0o755, 0), dir("var/lib/", 0o755, 0), dir("var/lib/db/", 0o700, 999),
		secret,
		file("usr/bin/su", "#!/bin/sh\n", 0o4755, 0),
		file("usr/bin/wall", "#!/bin/sh\n", 0o2755, 5),
		dir("tmp/", 0o1777, 0),
		bin,
		link(tar.TypeLink, "usr/bin/bind2", "usr/bin/bind"),
		link(tar.TypeSymlink, "usr/bin/sh", "bash"),
		&tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o620, Uid: 7, Gid: 8},
	))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path     string
		mode     uint32
		uid, gid uint32
	}{
		{"var/lib/db", unix.S_IFDIR | 0o700, 999, 999},
		{"var/lib/db/secret", unix.S_IFREG | 0o600, 999, 999},
		{"usr/bin/su", unix.S_IFREG | 0o4755, 0, 0},
		{"usr/bin/wall", unix.S_IFREG | 0o2755, 5, 5},
		{"tmp", unix.S_IFDIR | 0o1777, 0, 0},
		{"usr/bin/bind", unix.S_IFREG | 0o755, 0, 0},
		{"run/fifo", unix.S_IFIFO | 0o620, 7, 8},
		{"usr", unix.S_IFDIR | 0o755, 0, 0}, // made as a parent
	} {
		st := lstat(t, filepath.Join(root, tt.path))
		if st.Mode != tt.mode || st.Uid != tt.uid || st.Gid != tt.gid {
			t.Errorf("%s: mode %o, owner %d:%d; want mode %o, owner %d:%d", tt.path, st.Mode, st.Uid, st.Gid, tt.mode, tt.uid, tt.gid)
		}
	}
	if st := lstat(t, filepath.Join(root, "var/lib/db/secret")); st.Mtim.Sec != mtime.Unix() {
		t.Errorf("secret's mtime = %d, want %d", st.Mtim.Sec, mtime.Unix())
	}
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(root, "usr/bin/bind"), "security.capability", buf)
	if err != nil || string(buf[:n]) != capNetBindService {
		t.Errorf("security.capability = %x, %v; want %x", buf[:max(n, 0)], err, capNetBindService)
	}
	if out, err := exec.Command("getcap", filepath.Join(root, "usr/bin/bind")).CombinedOutput(); err == nil && !strings.Contains(string(out), "cap_net_bind_service=ep") {
		t.Errorf("getcap: %s, want cap_net_bind_service=ep", out)
	}
	if n, err := unix.Lgetxattr(filepath.Join(root, "usr/bin/bind"), "user.origin", buf); err != nil || string(buf[:n]) != "test" {
		t.Errorf("user.origin = %q, %v", buf[:max(n, 0)], err)
	}
	a, b := lstat(t, filepath.Join(root, "usr/bin/bind")), lstat(t, filepath.Join(root, "usr/bin/bind2"))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("bind2 is not a hard link of bind: inodes %d, %d, %d links", a.Ino, b.Ino, a.Nlink)
	}
	if l, err := os.Readlink(filepath.Join(root, "usr/bin/sh")); err != nil || l != "bash" {
		t.Errorf("usr/bin/sh -> %q, %v", l, err)
	}
	// The 0600 file is not readable by another user.
	if _, err := exec.LookPath("setpriv"); err == nil {
		if err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", filepath.Join(root, "var/lib/db/secret")).Run(); err == nil {
			t.Errorf("nobody read the 0600 file")
		}
	}
}

func TestApplyLayerWhiteouts(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	err := apply(t, root,
		layer(t, dir("a/", 0o755, 0), file("a/x", "x", 0o644, 0), file("a/y", "y", 0o644, 0),
			dir("b/", 0o755, 0), file("b/old", "old", 0o644, 0), dir("b/sub/", 0o755, 0), file("b/sub/lower", "l", 0o644, 0),
			dir("c/", 0o755, 0), file("c/keep", "k", 0o644, 0)),
		layer(t,
			file("a/.wh.x", "", 0o644, 0),
			// Entries before and after the opaque marker stay; lower ones go,
			// below a directory this layer declares again too.
			dir("b/", 0o755, 0), file("b/new1", "1", 0o644, 0), dir("b/sub/", 0o755, 0), file("b/.wh..wh..opq", "", 0o644, 0),
			file("b/new2", "2", 0o644, 0),
			// A whiteout of what this layer made removes nothing.
			file("c/fresh", "f", 0o644, 0), file("c/.wh.fresh", "", 0o644, 0),
			file("gone/.wh.nothing", "", 0o644, 0),
		),
	)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(root, p)
		got = append(got, rel)
		return nil
	})
	want := []string{".", "a", "a/y", "b", "b/new1", "b/new2", "b/sub", "c", "c/fresh", "c/keep"}
	if !slices.Equal(got, want) {
		t.Errorf("tree = %q, want %q", got, want)
	}
}

func TestApplyLayerHostileEntries(t *testing.T) {
	needRoot(t)
	outside := t.TempDir()
	base := layer(t, dir("etc/", 0o755, 0), file("etc/passwd", "root:x:0:0::/:/bin/sh\n", 0o644, 0),
		link(tar.TypeSymlink, "abs", "/"), link(tar.TypeSymlink, "up", "../../../../../.."),
		link(tar.TypeSymlink, "out", outside), link(tar.TypeSymlink, "etc/climb", "../../../../var/lib"))
	for _, tt := range []struct {
		name  string
		entry *tar.Header
		want  string // an error containing it, or "" for none
		lands string // where the entry must land, relative to the root
	}{
		{"dot-dot name", file("../evil", "x", 0o644, 0), "leaves the root", ""},
		{"dot-dot inside", file("etc/../../evil", "x", 0o644, 0), "leaves the root", ""},
		{"absolute name", file("/etc/abs", "x", 0o644, 0), "", "etc/abs"},
		{"through an absolute symlink", file("abs/etc/pwned", "x", 0o644, 0), "", "etc/pwned"},
		{"through a relative symlink that climbs", file("up/pwned", "x", 0o644, 0), "", "pwned"},
		{"through a symlink to a host path", file("out/pwned", "x", 0o644, 0), "", strings.TrimPrefix(outside, "/") + "/pwned"},
		{"through a dangling symlink that climbs", file("etc/climb/x/pwned", "x", 0o644, 0), "", "var/lib/x/pwned"},
		{"hard link out", link(tar.TypeLink, "ln", "../../etc/shadow"), "outside the root", ""},
		{"hard link through a symlink", link(tar.TypeLink, "ln", "abs/etc/passwd"), "", "ln"},
		{"hard link to nothing", link(tar.TypeLink, "ln", "etc/nothing"), "no such file", ""},
		{"device outside /dev", &tar.Header{Typeflag: tar.TypeChar, Name: "etc/mem", Mode: 0o600, Devmajor: 1, Devminor: 1}, "device node outside /dev", ""},
		{"device under /dev", &tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}, "", ""},
		{"whiteout of the parent", file("etc/.wh...", "", 0o644, 0), "whiteout of nothing", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			err := apply(t, root, base, layer(t, tt.entry))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("apply %q = %v, want no error", tt.entry.Name, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("apply %q = %v, want an error containing %q", tt.entry.Name, err, tt.want)
			}
			var ee *EntryError
			if err != nil && !errors.As(err, &ee) {
				t.Errorf("error %v is not an *EntryError", err)
			}
			if tt.lands != "" {
				if _, err := os.Lstat(filepath.Join(root, tt.lands)); err != nil {
					t.Errorf("the entry did not land at %s: %v", tt.lands, err)
				}
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("something was written outside the root: %v", ents)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(root), "evil")); err == nil {
				t.Errorf("../evil was written")
			}
		})
	}
}

func gz(t *testing.T, data []byte) []byte {
	var buf bytes.Buffer
	z := gzip.NewWriter(&buf)
	z.Write(data)
	z.Close()
	return buf.Bytes()
}

func blob(t *testing.T, dir string, data []byte) Layer {
	sum := sha256.Sum256(data)
	p := filepath.Join(dir, hex.EncodeToString(sum[:]))
	if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
	return Layer{Digest: "sha256:" + hex.EncodeToString(sum[:]), Blob: p}
}

func TestRealize(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	blobs, images := t.TempDir(), filepath.Join(t.TempDir(), "images")
	layers := []Layer{
		blob(t, blobs, gz(t, layer(t, dir("etc/", 0o755, 0), link(tar.TypeSymlink, "etc/resolv.conf", "../run/resolv.conf"), file("etc/app.conf", "1", 0o640, 0)))),
		blob(t, blobs, layer(t, file("etc/app.conf", "2", 0o600, 10))),
	}
	const digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	// An interrupted realization's leftovers go.
	os.MkdirAll(filepath.Join(images, ".tmp-111111111111-123", "rootfs"), 0o755)
	made, _, err := Realize(ctx, images, digest, layers)
	if err != nil || !made {
		t.Fatalf("Realize = %v, %v", made, err)
	}
	root := filepath.Join(Path(images, digest), RootDir)
	if b, err := os.ReadFile(filepath.Join(root, "etc/app.conf")); err != nil || string(b) != "2" {
		t.Errorf("app.conf = %q, %v", b, err)
	}
	if st := lstat(t, filepath.Join(root, "etc/app.conf")); st.Mode != unix.S_IFREG|0o600 || st.Uid != 10 {
		t.Errorf("app.conf mode %o uid %d", st.Mode, st.Uid)
	}
	for _, p := range []string{"dev", "proc", "sys", "run", "tmp", "var/tmp", "root", "home", "usr"} {
		if fi, err := os.Lstat(filepath.Join(root, p)); err != nil || !fi.IsDir() {
			t.Errorf("mount point /%s: %v", p, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(root, "etc/resolv.conf")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("etc/resolv.conf is not a regular file: %v", err)
	}
	if fi, _ := os.Stat(images); fi.Mode().Perm() != 0o700 {
		t.Errorf("%s has mode %o, want 0700", images, fi.Mode().Perm())
	}
	if ents, _ := os.ReadDir(images); len(ents) != 1 {
		t.Errorf("%s holds %v, want only the root", images, ents)
	}
	// Again: nothing to do.
	if made, _, err := Realize(ctx, images, digest, layers); made || err != nil {
		t.Errorf("second Realize = %v, %v; want nothing made", made, err)
	}

	// A blob that does not match its digest: no root, no leftovers.
	bad := layers[1]
	bad.Digest = "sha256:" + strings.Repeat("0", 64)
	const other = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	if _, _, err := Realize(ctx, images, other, []Layer{layers[0], bad}); err == nil || !strings.Contains(err.Error(), "has sha256") {
		t.Errorf("Realize with a bad blob = %v, want a digest error", err)
	}
	if ents, _ := os.ReadDir(images); len(ents) != 1 {
		t.Errorf("after a failure %s holds %v, want only the first root", images, ents)
	}
}
