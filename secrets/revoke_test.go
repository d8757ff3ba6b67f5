package secrets

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/declarative/deploy/manifest"
)

func version(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func TestParseRevocations(t *testing.T) {
	at := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	tests := []struct {
		name, in string
		want     []Revocation
		wantErr  string
	}{
		{"empty", "", nil, ""},
		{"comments and blanks", "# x\n\n  # y\n", nil, ""},
		{"lines", "# header\n" + version('a') + " secrets/db.age 2026-12-07T04:00:00Z\n\t" + version('b') + "\tsecrets/x.age\t2026-12-07T04:00:00Z  \n",
			[]Revocation{{version('a'), "secrets/db.age", at}, {version('b'), "secrets/x.age", at}}, ""},
		{"no newline at the end", version('a') + " secrets/db.age 2026-12-07T04:00:00Z", []Revocation{{version('a'), "secrets/db.age", at}}, ""},
		{"two fields", "# h\n" + version('a') + " secrets/db.age\n", nil, "line 2: want"},
		{"upper-case hex", "sha256:" + strings.Repeat("A", 64) + " f 2026-12-07T04:00:00Z\n", nil, "line 1: version"},
		{"short hash", "sha256:abc f 2026-12-07T04:00:00Z\n", nil, "line 1: version"},
		{"other hash", "md5:" + strings.Repeat("a", 64) + " f 2026-12-07T04:00:00Z\n", nil, "line 1: version"},
		{"bad time", version('a') + " f yesterday\n", nil, "line 1: time"},
		{"duplicate", version('a') + " f 2026-12-07T04:00:00Z\n" + version('a') + " g 2026-12-07T04:00:00Z\n", nil, "line 2: version " + version('a') + " is listed already on line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRevocations([]byte(tt.in))
			if tt.wantErr != "" {
				var re *RevocationError
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &re) {
					t.Fatalf("ParseRevocations(%q) = %v, %v; want a *RevocationError containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRevocations(%q) = %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseRevocations(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// AddRevocations appends, never rewrites, skips what is listed, and leaves
// a malformed list alone.
func TestAddRevocations(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, RevokedFile)
	at := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	added, err := AddRevocations(dir, []Revocation{{version('b'), "secrets/db.age", at}, {version('a'), "secrets/db.age", at}})
	if err != nil || len(added) != 2 {
		t.Fatalf("AddRevocations (new file) = %v, %v", added, err)
	}
	first, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(first), "# ") || !strings.HasSuffix(string(first), version('b')+" secrets/db.age 2026-12-07T04:00:00Z\n"+version('a')+" secrets/db.age 2026-12-07T04:00:00Z\n") {
		t.Errorf("secrets/revoked =\n%s", first)
	}
	// Again, plus one new: only the new one is appended.
	added, err = AddRevocations(dir, []Revocation{{version('a'), "secrets/db.age", at.Add(time.Hour)}, {version('c'), "secrets/x.age", at}})
	if err != nil || len(added) != 1 || added[0].Version != version('c') {
		t.Fatalf("AddRevocations (one new) = %v, %v", added, err)
	}
	second, _ := os.ReadFile(p)
	if want := string(first) + version('c') + " secrets/x.age 2026-12-07T04:00:00Z\n"; string(second) != want {
		t.Errorf("secrets/revoked after a second revoke:\n%s\nwant\n%s", second, want)
	}
	// Nothing new: the file is not rewritten.
	before, _ := os.Stat(p)
	if added, err := AddRevocations(dir, []Revocation{{version('c'), "secrets/x.age", at}}); err != nil || added != nil {
		t.Errorf("AddRevocations (nothing new) = %v, %v", added, err)
	}
	if after, _ := os.Stat(p); !os.SameFile(before, after) {
		t.Errorf("AddRevocations with nothing new replaced the file")
	}
	rs, err := ReadRevocations(dir)
	if err != nil || !slices.Equal(Versions(rs), []string{version('a'), version('b'), version('c')}) {
		t.Errorf("ReadRevocations = %v, %v", rs, err)
	}
	// Bad input changes nothing.
	for _, bad := range []Revocation{{"sha256:00", "f", at}, {version('d'), "a file", at}, {version('d'), "", at}} {
		if _, err := AddRevocations(dir, []Revocation{bad}); err == nil {
			t.Errorf("AddRevocations(%v) succeeded", bad)
		}
	}
	os.WriteFile(p, append(second, "garbage\n"...), 0o644)
	if _, err := AddRevocations(dir, []Revocation{{version('d'), "f", at}}); err == nil {
		t.Errorf("AddRevocations on a malformed list succeeded")
	}
	if got, _ := os.ReadFile(p); string(got) != string(second)+"garbage\n" {
		t.Errorf("AddRevocations changed a malformed list")
	}
}

// RecordRevoked is the host's union: it only grows, whatever it is given.
func TestRecordRevoked(t *testing.T) {
	p := filepath.Join(t.TempDir(), "revoked-secrets")
	steps := []struct {
		add, want []string
	}{
		{nil, nil},
		{[]string{version('b'), version('a')}, []string{version('a'), version('b')}},
		{[]string{version('c')}, []string{version('a'), version('b'), version('c')}}, // a list without a and b: they stay
		{nil, []string{version('a'), version('b'), version('c')}},                    // an empty list (an older generation)
		{[]string{version('a')}, []string{version('a'), version('b'), version('c')}},
	}
	for i, st := range steps {
		got, err := RecordRevoked(p, st.add)
		if err != nil || !slices.Equal(got, st.want) {
			t.Errorf("step %d: RecordRevoked(%q) = %q, %v; want %q", i, st.add, got, err, st.want)
		}
		if read, err := ReadRevokedRecord(p); err != nil || !slices.Equal(read, st.want) {
			t.Errorf("step %d: ReadRevokedRecord = %q, %v; want %q", i, read, err, st.want)
		}
	}
	data, _ := os.ReadFile(p)
	if want := version('a') + "\n" + version('b') + "\n" + version('c') + "\n"; string(data) != want {
		t.Errorf("record =\n%s\nwant\n%s", data, want)
	}
	if _, err := RecordRevoked(p, []string{"sha256:zz"}); err == nil {
		t.Errorf("RecordRevoked of an invalid version succeeded")
	}
	if got, _ := os.ReadFile(p); string(got) != string(data) {
		t.Errorf("RecordRevoked of an invalid version changed the record")
	}
}

// History: every version the file had in git, on every branch, once each.
func TestHistory(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	dir := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.invalid"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	put := func(content string) {
		t.Helper()
		write(t, filepath.Join(dir, "secrets", "db.age"), content)
		git("add", "-A")
		git("commit", "-q", "-m", content)
	}
	if _, err := History(context.Background(), dir, "secrets/db.age"); err == nil {
		t.Errorf("History outside a git repository succeeded")
	}
	git("init", "-q", "-b", "main")
	os.MkdirAll(filepath.Join(dir, "secrets"), 0o755)
	put("v1")
	put("v2")
	git("checkout", "-q", "-b", "side")
	put("v3")
	git("checkout", "-q", "main")
	put("v1") // back to an old version
	git("rm", "-q", "secrets/db.age")
	git("commit", "-q", "-m", "removed")
	os.MkdirAll(filepath.Join(dir, "secrets"), 0o755)
	write(t, filepath.Join(dir, "secrets", "db.age"), "v4 (not committed)")
	got, err := History(context.Background(), dir, "secrets/db.age")
	if err != nil {
		t.Fatal(err)
	}
	v := func(s string) string { return manifest.SecretVersion([]byte(s)) }
	want := []string{v("v1"), v("v2"), v("v3")}
	slices.Sort(got)
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("History (-want +got):\n%s", diff)
	}
	if got, err := History(context.Background(), dir, "secrets/other.age"); err != nil || len(got) != 0 {
		t.Errorf("History of a file never committed = %q, %v", got, err)
	}
}

// Install refuses a revoked version before anything changes, and wipes a
// revoked version kept for a rollback.
func TestInstallRevoked(t *testing.T) {
	f := newFixture(t)
	v1 := f.secret("db", "hunter2-v1", "", "", "")
	v2 := f.secret("db", "hunter2-v2", "", "", "")
	other := f.secret("other", "other-1", "", "", "")
	f.install(1, v1, other)
	f.install(2, v2, other)
	data, err := os.ReadFile(v1.Source)
	if err != nil {
		t.Fatal(err)
	}
	revoked := []string{manifest.SecretVersion(data)}

	// Generation 1 again, with v1 revoked: refused; generation 2 stays,
	// and so does generation 1's directory (not yet told).
	opts := f.opts(1, v1, other)
	opts.Revoked = revoked
	err = Install(context.Background(), opts)
	var re *RevokedError
	if !errors.As(err, &re) || re.Secret != "db" || re.Version != revoked[0] || re.Generation != 1 {
		t.Fatalf("Install(1) with v1 revoked = %v, want a *RevokedError for db", err)
	}
	if !strings.Contains(err.Error(), `secret "db" of generation 1 is revoked version `+revoked[0]) {
		t.Errorf("error %q does not name the secret, generation and version", err)
	}
	cur, files, _ := f.state()
	if cur != 2 || !cmp.Equal(files, map[string]string{"db": "hunter2-v2", "other": "other-1"}) {
		t.Errorf("after the refused Install: generation %d, files %q; want 2 as it was", cur, files)
	}

	// Generation 3 told of the revocation: generation 2 is kept for a
	// rollback, generation 1's revoked plaintext is gone wherever it is.
	f.install(2, v2, other)
	opts = f.opts(3, v2, other)
	opts.Revoked = revoked
	if err := Install(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	err = filepathWalkFiles(filepath.Join(f.runDir, generationsDir), func(p string, content []byte) {
		if strings.Contains(string(content), "hunter2-v1") {
			t.Errorf("%s still holds the revoked plaintext", p)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The revoked plaintext kept in the previous generation's directory (the
// host ran v1 before the revocation reached it) is wiped by the install
// that learns of it.
func TestInstallWipesRevokedKeptGeneration(t *testing.T) {
	f := newFixture(t)
	v1 := f.secret("db", "hunter2-v1", "", "", "")
	v2 := f.secret("db", "hunter2-v2", "", "", "")
	f.install(1, v1)
	data, _ := os.ReadFile(v1.Source)
	opts := f.opts(2, v2)
	opts.Revoked = []string{manifest.SecretVersion(data)}
	if err := Install(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(f.runDir, generationsDir, "1", "db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("generation 1's revoked db is still there: %v", err)
	}
	// A rollback to generation 1 without the revocation would decrypt
	// again (its directory is no longer intact); with it, it is refused.
	opts = f.opts(1, v1)
	opts.Revoked = []string{manifest.SecretVersion(data)}
	if err := Install(context.Background(), opts); err == nil {
		t.Errorf("Install(1) with v1 revoked succeeded")
	}
	if cur, files, _ := f.state(); cur != 2 || files["db"] != "hunter2-v2" {
		t.Errorf("after the refused rollback: generation %d, files %q", cur, files)
	}
}

func filepathWalkFiles(root string, fn func(p string, content []byte)) error {
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fn(p, b)
		}
		return nil
	})
}
