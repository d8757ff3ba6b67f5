package agentclient

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/secrets"
)

// End-to-end acceptance of secrets (issue 8) against a vmtest host: age
// ciphertext in the fleet, decrypted by the agent with the host key.

// secretFleet is a fleet directory with age files.
type secretFleet struct {
	f     *fixture
	dir   string
	admin string // an age identity file
	rcpts []secrets.Recipient
}

func newSecretFleet(f *fixture) *secretFleet {
	dir := filepath.Join(f.t.TempDir(), "fleet")
	os.MkdirAll(filepath.Join(dir, "secrets"), 0o755)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	admin := filepath.Join(dir, "..", "admin_key")
	os.WriteFile(admin, pem.EncodeToMemory(block), 0o600)
	spub, _ := ssh.NewPublicKey(pub)
	adminLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub)))
	return &secretFleet{f: f, dir: dir, admin: admin,
		rcpts: []secrets.Recipient{{Owner: "host", Key: f.h.HostKeyLine()}, {Owner: "admin", Key: adminLine}}}
}

// put encrypts plaintext to the fleet's recipients as secrets/NAME.age.
func (s *secretFleet) put(name, plaintext string) {
	s.f.t.Helper()
	ct, err := secrets.Encrypt([]byte(plaintext), s.rcpts)
	if err != nil {
		s.f.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "secrets", name+".age"), ct, 0o644); err != nil {
		s.f.t.Fatal(err)
	}
}

// build builds the host from body with the fleet's current secrets and
// copies it; it returns the system path.
func (s *secretFleet) build(body string) string {
	f := s.f
	f.t.Helper()
	hcl := fmt.Sprintf("host %q {\n  address = %q\n  host_key = %q\n%s\n}\n", f.h.Name(), f.h.Addr().String(), f.h.HostKeyLine(), body)
	if err := os.WriteFile(filepath.Join(s.dir, "fleet.hcl"), []byte(hcl), 0o644); err != nil {
		f.t.Fatal(err)
	}
	fl, diags := builder.Load(s.dir)
	if diags.HasErrors() {
		f.t.Fatalf("Load: %v\n%s", diags, hcl)
	}
	res, diags := f.b.Build(context.Background(), fl, f.h.Name())
	if diags.HasErrors() {
		f.t.Fatalf("Build: %v\n%s", diags, hcl)
	}
	if _, err := testClient(f.b.Store, f.client).Copy(context.Background(), []string{res.SystemPath}, res.Manifest.Agent, CopyOptions{}); err != nil {
		f.t.Fatalf("Copy: %v", err)
	}
	return res.SystemPath
}

func secretDecl(name, owner string) string {
	return fmt.Sprintf("  secret %q {\n    source = \"secrets/%s.age\"\n    owner = %q\n  }\n", name, name, owner)
}

// secretSvc is a service running as user app that reads secret (by its
// path, so the builder links the unit to it) and logs "start".
func secretSvc(name, secret string) string {
	read := ""
	if secret != "" {
		read = fmt.Sprintf("cat ${secret.%s.path} > /dev/null || exit 1; ", secret)
	}
	return fmt.Sprintf(`
  service %[1]q {
    exec_start = "/bin/sh -c '%[2]secho start >> /var/tmp/%[1]s.log; while :; do sleep 0.2; done'"
    user       = "app"
    restart    = "no"
  }
`, name, read)
}

const appUser = "  user \"app\" {\n    system = true\n  }\n"

func TestSecretsEndToEnd(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := newSecretFleet(f)
	p1, p2, p1b := "pw-"+rand.Text(), "tok-"+rand.Text(), "pw2-"+rand.Text()
	s.put("db", p1)
	s.put("api", p2)
	gen1 := s.build(appUser + secretDecl("db", "app") + secretDecl("api", "app") +
		secretSvc("uses-db", "db") + secretSvc("uses-api", "api") + secretSvc("other", ""))
	f.mustActivate(gen1)
	if got := f.h.Succeed("cat /run/deploy/secrets/db"); got != p1 {
		t.Fatalf("/run/deploy/secrets/db = %q, want the plaintext", got)
	}
	if got := f.h.Succeed("stat -c '%U %G %a' /run/deploy/secrets.d/1/db"); strings.TrimSpace(got) != "app root 400" {
		t.Errorf("db: owner group mode = %q, want app root 400", got)
	}
	for _, u := range []string{"uses-db", "uses-api", "other"} {
		f.waitCount("/var/tmp/"+u+".log", "start", 1)
	}
	// The owner (a service's user) can read it; another user cannot.
	f.h.Succeed("runuser -u app -- cat /run/deploy/secrets/db >/dev/null")
	f.h.Fail("runuser -u nobody -- cat /run/deploy/secrets/db")

	// Plaintext only under /run/deploy/secrets.d: operator cache and fleet,
	// the target's store, /var, /tmp, /etc, /root, the journal, deploy logs.
	for _, root := range []string{filepath.Dir(f.b.Store.RealDir), f.b.CacheDir, s.dir} {
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				if b, _ := os.ReadFile(p); strings.Contains(string(b), p1) {
					t.Errorf("operator file %s contains the plaintext", p)
				}
			}
			return nil
		})
	}
	hits := f.h.Succeed(fmt.Sprintf("grep -rlF %q /var /tmp /etc /root /home /run 2>/dev/null || true", p1))
	for _, h := range strings.Fields(hits) {
		if !strings.HasPrefix(h, "/run/deploy/secrets.d/") {
			t.Errorf("target file %s contains the plaintext", h)
		}
	}
	if strings.TrimSpace(hits) == "" {
		t.Errorf("grep found the plaintext nowhere: the search is broken")
	}
	if n := f.h.Succeed(fmt.Sprintf("journalctl --no-pager -o cat 2>/dev/null | grep -cF %q || true", p1)); strings.TrimSpace(n) != "0" {
		t.Errorf("the journal contains the plaintext %s times", n)
	}

	// Changing db restarts exactly uses-db.
	s.put("db", p1b)
	gen2 := s.build(appUser + secretDecl("db", "app") + secretDecl("api", "app") +
		secretSvc("uses-db", "db") + secretSvc("uses-api", "api") + secretSvc("other", ""))
	f.mustActivate(gen2)
	if got := f.h.Succeed("cat /run/deploy/secrets/db"); got != p1b {
		t.Fatalf("after generation 2, db = %q", got)
	}
	f.waitCount("/var/tmp/uses-db.log", "start", 2)
	for _, u := range []string{"uses-api", "other"} {
		if n := f.count("/var/tmp/"+u+".log", "start"); n != 1 {
			t.Errorf("%s started %d times, want 1 (its secret did not change)", u, n)
		}
	}

	// Removing api removes its file.
	gen3 := s.build(appUser + secretDecl("db", "app") + secretSvc("uses-db", "db") + secretSvc("other", ""))
	f.mustActivate(gen3)
	f.h.Fail("test -e /run/deploy/secrets/api")

	// A tampered ciphertext fails the activation; the host rolls back and
	// the previous secrets stay.
	ct, _ := os.ReadFile(filepath.Join(s.dir, "secrets", "db.age"))
	ct[len(ct)-5] ^= 1
	os.WriteFile(filepath.Join(s.dir, "secrets", "db.age"), ct, 0o644)
	gen4 := s.build(appUser + secretDecl("db", "app") + secretSvc("uses-db", "db") + secretSvc("other", ""))
	_, err := f.activate(gen4, ActivateOptions{})
	var rb *RolledBackError
	if !errors.As(err, &rb) {
		t.Fatalf("activating a tampered secret = %v, want a rollback", err)
	}
	if got := f.h.Succeed("cat /run/deploy/secrets/db"); got != p1b {
		t.Errorf("after the failed activation, db = %q, want the previous plaintext", got)
	}
}

// An unprivileged user polling every path the agent writes during several
// activations never reads a byte of a secret that is not its own.
func TestSecretsRacingReader(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := newSecretFleet(f)
	secret, mine := "root-"+rand.Text(), "mine-"+rand.Text()
	var paths []string
	for g := 1; g <= 4; g++ {
		for _, n := range []string{"root-only", "mine"} {
			paths = append(paths, fmt.Sprintf("/run/deploy/secrets.d/.%d.tmp/.%s.tmp", g, n),
				fmt.Sprintf("/run/deploy/secrets.d/.%d.tmp/%s", g, n), fmt.Sprintf("/run/deploy/secrets.d/%d/%s", g, n))
		}
	}
	paths = append(paths, "/run/deploy/secrets/root-only", "/run/deploy/secrets/mine")
	f.h.Succeed(fmt.Sprintf("systemd-run --unit=racer -p User=nobody /bin/sh -c 'while [ ! -e /tmp/racer-stop ]; do cat %s 2>/dev/null; done > /tmp/racer.out'",
		strings.Join(paths, " ")))
	for g := 1; g <= 4; g++ {
		s.put("root-only", fmt.Sprint(secret, g))
		s.put("mine", fmt.Sprint(mine, g))
		sys := s.build(fmt.Sprintf("  secret \"root-only\" {\n    source = \"secrets/root-only.age\"\n  }\n"+
			"  secret \"mine\" {\n    source = \"secrets/mine.age\"\n    owner = \"nobody\"\n  }\n  file \"/etc/gen\" {\n    content = \"%d\"\n  }\n", g))
		f.mustActivate(sys)
	}
	f.h.Succeed("touch /tmp/racer-stop; while systemctl is-active -q racer; do sleep 0.1; done")
	out := f.h.Succeed("cat /tmp/racer.out")
	if strings.Contains(out, secret) {
		t.Errorf("the unprivileged reader read the root-only secret")
	}
	if !strings.Contains(out, mine) {
		t.Errorf("the reader never read its own secret: it was not racing on the right paths")
	}
}

// Rotating the host key: the rekeyed secret decrypts with the new key.
func TestSecretsHostKeyRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := newSecretFleet(f)
	s.put("db", "v1")
	f.mustActivate(s.build(secretDecl("db", "root")))

	// New host key on the target: sshd serves it to new connections (it
	// reads host keys per connection), the agent decrypts with it; the
	// operator pins it (what `deploy keyscan` + host_key do).
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	f.h.Succeed(fmt.Sprintf("umask 077; echo %s | base64 -d > /etc/ssh/ssh_host_ed25519_key.new && mv /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key",
		base64.StdEncoding.EncodeToString(pem.EncodeToMemory(block))))
	signer, _ := ssh.NewSignerFromKey(priv)
	newLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))

	// Not yet rekeyed: the host is no longer a recipient and cannot decrypt.
	tg := target(f.h)
	tg.HostKey = newLine
	activate := func(system string) error {
		c := &Client{Target: tg, Mesh: f.cfg, conn: f.client}
		_, err := c.Activate(context.Background(), system, ActivateOptions{ConfirmTimeout: 4 * time.Second, Logf: t.Logf})
		return err
	}
	s.put("db", "v2")
	err := activate(s.build(secretDecl("db", "root")))
	var rb *RolledBackError
	if !errors.As(err, &rb) {
		t.Fatalf("activation with a secret the host cannot decrypt = %v, want a rollback", err)
	}
	// The rollback reused generation 1's files (its ciphertext is for the
	// old key, which the host no longer has).
	if got := f.h.Succeed("cat /run/deploy/secrets/db"); got != "v1" {
		t.Errorf("after the rolled back activation, db = %q, want v1", got)
	}
	// Rekey to the new key, deploy: the new plaintext arrives.
	ids, err := secrets.LoadIdentities(s.admin)
	if err != nil {
		t.Fatal(err)
	}
	s.rcpts[0].Key = newLine
	if err := secrets.Rekey(filepath.Join(s.dir, "secrets", "db.age"), ids, s.rcpts); err != nil {
		t.Fatal(err)
	}
	if err := activate(s.build(secretDecl("db", "root"))); err != nil {
		t.Fatalf("activation after rekey: %v", err)
	}
	if got := f.h.Succeed("cat /run/deploy/secrets/db"); got != "v2" {
		t.Errorf("after rekey and deploy, db = %q, want v2", got)
	}
}

// Secrets go on a tmpfs (which can swap) only when the host says so, and
// then the activation says so: here a tmpfs is mounted where the secrets
// go, as on a host that cannot mount a ramfs.
func TestSecretsTmpfsOnlyWhenAllowed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := newSecretFleet(f)
	s.put("db", "pw-"+rand.Text())
	f.h.Succeed("mkdir -p /run/deploy/secrets.d && mount -t tmpfs -o nodev,nosuid,noexec,mode=0711 deploy-test /run/deploy/secrets.d")
	refused := s.build(appUser + secretDecl("db", "app"))
	_, err := f.activate(refused, ActivateOptions{})
	var rb *RolledBackError
	if !errors.As(err, &rb) || !strings.Contains(err.Error(), "secrets_allow_tmpfs") {
		t.Fatalf("activation with secrets on a tmpfs, not allowed: %v; want rolled back, naming secrets_allow_tmpfs", err)
	}
	allowed := s.build(appUser + secretDecl("db", "app") + "  secrets_allow_tmpfs = true\n")
	res, err := f.activate(allowed, ActivateOptions{})
	if err != nil {
		t.Fatalf("activation with secrets_allow_tmpfs: %v", err)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "swapped to disk") {
		t.Fatalf("warnings %q, want one saying the secrets can be swapped to disk", res.Warnings)
	}
	f.h.Succeed("test -f /run/deploy/secrets/db")
}
