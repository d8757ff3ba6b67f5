package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/internal/e2e"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/secrets"
	"github.com/declarative/deploy/vmtest"
)

// revokeFleet writes a fleet of one host with the secret "db" (unless
// withSecret is false) and, when failing, a health check that fails.
func revokeFleet(t *testing.T, fl *e2e.Fleet, h *vmtest.Host, withSecret, failing bool) {
	t.Helper()
	var body strings.Builder
	if withSecret {
		body.WriteString("  secret \"db\" {\n    source = \"secrets/db.age\"\n  }\n")
	}
	body.WriteString("  service \"app\" {\n    exec_start = \"/bin/sleep infinity\"\n  }\n")
	if failing {
		body.WriteString("  health_check \"broken\" {\n    command = [\"/bin/sh\", \"-c\", \"exit 1\"]\n    timeout = \"3s\"\n  }\n")
	}
	fl.Write(t, "fleet.hcl", fmt.Sprintf("deployment \"prod\" {\n  hosts           = [%s]\n  confirm_timeout = \"20s\"\n}\n\n", fl.Names())+
		e2e.HostBlock(h, body.String()))
}

// encryptDB writes secrets/db.age: plaintext encrypted to h's host key, and
// returns its version.
func encryptDB(t *testing.T, fl *e2e.Fleet, h *vmtest.Host, plaintext string) string {
	t.Helper()
	ct, err := secrets.Encrypt([]byte(plaintext), []secrets.Recipient{{Owner: h.Name(), Key: h.HostKeyLine()}})
	if err != nil {
		t.Fatal(err)
	}
	fl.Write(t, "secrets/db.age", string(ct))
	return manifest.SecretVersion(ct)
}

// TestRevokedSecretE2E is issue 26's "revoked secrets stay revoked" on a
// vmtest host with the real CLI, agent, sshd, systemd and age: version 1
// of a secret is deployed (generation 1), rotated to version 2
// (generation 2), revoked with `deploy secrets revoke`, and generation 3
// carries the revocation. Then no way back installs version 1's plaintext:
// `deploy rollback --to 1` keeps version 2 (exit 0, a warning), so does
// the boot after a reboot and the automatic rollback to generation 1 after
// a failed health check (exit 3), and a rollback to generation 1 from a
// generation without the secret, by hand or automatic, fails the host
// (exit 3) leaving it as it was. The plaintext of version 1 is never on the host after generation 3.
func TestRevokedSecretE2E(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	fl := e2e.NewFleet(t, nw)
	r := cli.New(t, nw, fl)
	target := fl.Target("prod")
	const v1Text, v2Text = "hunter2-v1\n", "hunter2-v2\n"

	secretIs := func(t *testing.T, want string) {
		t.Helper()
		if got := h.Succeed("cat /run/deploy/secrets/db"); got != want {
			t.Errorf("/run/deploy/secrets/db = %q, want %q", got, want)
		}
	}
	// noV1 fails unless version 1's plaintext is nowhere under the run
	// and state directories (secrets.d and every kept generation in it).
	noV1 := func(t *testing.T) {
		t.Helper()
		if out := h.Succeed("grep -rl hunter2-v1 /run/deploy /var/lib/deploy 2>/dev/null || true"); out != "" {
			t.Errorf("version 1's plaintext is on the host: %s", out)
		}
	}
	current := func(t *testing.T) string {
		t.Helper()
		return strings.TrimSpace(h.Succeed("readlink /run/deploy/current-system"))
	}

	revokeFleet(t, fl, h, true, false)
	v1 := encryptDB(t, fl, h, v1Text)
	fl.Commit(t, "db v1")
	r.JSON(t, "", target).Want(t, ExitOK)
	secretIs(t, v1Text)

	encryptDB(t, fl, h, v2Text)
	fl.Commit(t, "db v2")
	r.JSON(t, "", target).Want(t, ExitOK)
	secretIs(t, v2Text)

	// deploy secrets revoke: version 1 from git, into secrets/revoked.
	res := r.Run(t, "secrets", "revoke", "-C", fl.Dir, "db").Want(t, ExitOK)
	if res.Stdout != v1+" secrets/db.age\n" {
		t.Fatalf("deploy secrets revoke printed %q, want %q", res.Stdout, v1+" secrets/db.age\n")
	}
	fl.Commit(t, "revoke db v1")
	r.JSON(t, "", target).Want(t, ExitOK) // generation 3 carries the list
	secretIs(t, v2Text)
	if got := h.Succeed("cat /var/lib/deploy/revoked-secrets"); got != v1+"\n" {
		t.Errorf("the host's record = %q, want %q", got, v1+"\n")
	}
	noV1(t)

	t.Run("rollback keeps the running version", func(t *testing.T) {
		res := r.JSON(t, "rollback", target, "--to", "1").Want(t, ExitOK)
		if r := res.Results()[h.Name()]; r.Generation != 1 {
			t.Errorf("rollback result %+v, want generation 1", r)
		}
		warned := false
		for _, ev := range res.Events {
			if ev.Type == fleet.EventWarning && ev.Host == h.Name() && strings.Contains(ev.Message, `secret "db"`) &&
				strings.Contains(ev.Message, v1) && strings.Contains(ev.Message, "revoked") {
				warned = true
			}
		}
		for _, ev := range res.Events {
			if ev.Type == fleet.EventWarning {
				t.Logf("host.warning: %s", ev.Message)
			}
		}
		if !warned {
			t.Errorf("no host.warning naming secret db and its revoked version %s:\n%s", v1, res.Stdout)
		}
		secretIs(t, v2Text)
		noV1(t)
		out := r.Text(t, "generations", target).Want(t, ExitOK).Stdout
		t.Logf("deploy generations:\n%s", out)
		if !regexp.MustCompile(`(?m)^` + h.Name() + `\s+1\s.*current,boot,revoked\s.*\[revoked secret versions: db\]`).MatchString(out) {
			t.Errorf("deploy generations does not mark generation 1 revoked:\n%s", out)
		}
		out = r.Text(t, "status", target).Want(t, ExitOK).Stdout
		t.Logf("deploy status:\n%s", out)
		if !strings.Contains(out, "1 (kept secrets: db)") {
			t.Errorf("deploy status does not say the running generation keeps db:\n%s", out)
		}
	})

	t.Run("boot keeps the running version", func(t *testing.T) {
		h.With(t).Reboot()
		secretIs(t, v2Text)
		noV1(t)
	})

	t.Run("automatic rollback keeps the running version", func(t *testing.T) {
		// Generation 4 fails its health check: the agent returns the host
		// to generation 1, the one it ran, and must not bring v1 back.
		revokeFleet(t, fl, h, true, true)
		fl.Commit(t, "broken health check")
		res := r.JSON(t, "", target).Want(t, ExitRolledBack)
		if r := res.Results()[h.Name()]; r.Result != fleet.ResultRolledBack {
			t.Errorf("deploy result %+v, want rolled back", r)
		}
		secretIs(t, v2Text)
		noV1(t)
	})

	t.Run("automatic rollback without a version to keep fails the host", func(t *testing.T) {
		// The host runs generation 1 (v2 kept). Generation 5 has no db and
		// fails its health check: the way back to generation 1 has no
		// version of db to keep, so the rollback is refused before it
		// changes anything: the host stays as generation 5 left it.
		revokeFleet(t, fl, h, false, true)
		fl.Commit(t, "no secret, broken health check")
		res := r.JSON(t, "", target).Want(t, ExitRolledBack)
		hr := res.Results()[h.Name()]
		t.Logf("host.result: %s: %s", hr.Result, hr.Error)
		if hr.Result != fleet.ResultFailed || !strings.Contains(hr.Error, "the rollback failed too") || !strings.Contains(hr.Error, `secret "db" of generation 1 is the revoked version `+v1) {
			t.Errorf("deploy result %s %q, want failed: the rollback refused for db's revoked version", hr.Result, hr.Error)
		}
		if cur := current(t); cur != hr.System {
			t.Errorf("current-system = %s, want the failed generation's %s (nothing of generation 1 applied)", cur, hr.System)
		}
		if out := h.Succeed("test -e /run/deploy/secrets/db && echo present || echo absent"); out != "absent\n" {
			t.Errorf("db after the refused rollback: %s", out)
		}
		noV1(t)
	})

	t.Run("rollback without a version to keep fails the host", func(t *testing.T) {
		revokeFleet(t, fl, h, false, false)
		fl.Commit(t, "no secret")
		r.JSON(t, "", target).Want(t, ExitOK)
		before := current(t)
		if out := h.Succeed("test -e /run/deploy/secrets/db && echo present || echo absent"); out != "absent\n" {
			t.Fatalf("db after a generation without it: %s", out)
		}
		res := r.JSON(t, "rollback", target, "--to", "1").Want(t, ExitRolledBack)
		hr := res.Results()[h.Name()]
		t.Logf("host.result: %s: %s", hr.Result, hr.Error)
		for _, want := range []string{`secret "db" of generation 1 is the revoked version ` + v1, "no other version of it to keep", "deploy secrets edit db", "nothing was changed"} {
			if hr.Result != fleet.ResultFailed || !strings.Contains(hr.Error, want) {
				t.Errorf("rollback result %s %q, want failed with %q", hr.Result, hr.Error, want)
			}
		}
		if after := current(t); after != before {
			t.Errorf("the failed rollback changed the running system: %s, was %s", after, before)
		}
		if out := h.Succeed("test -e /run/deploy/secrets/db && echo present || echo absent"); out != "absent\n" {
			t.Errorf("db after the refused rollback: %s", out)
		}
		noV1(t)
	})
}

// TestRevokedSecretPullE2E is the pull-mode side: a host in pull mode (a
// MinIO holds the cache and the channel) gets db v1 (serial 1), db v2
// (serial 2) and the revocation of v1 (serial 3); `deploy rollback
// --channel prod --to-serial 1` publishes serial 1's system again, and the
// host activates it keeping v2: v1's plaintext never comes back.
func TestRevokedSecretPullE2E(t *testing.T) {
	t.Parallel()
	p := newPullEnv(t, 1, "canary       = 1")
	h := p.nw.Hosts[0]
	target := p.fl.Target("prod")
	const v1Text, v2Text = "pull-v1\n", "pull-v2\n"
	write := func() {
		p.fl.Write(t, "fleet.hcl", fmt.Sprintf(`deployment "prod" {
  hosts        = [%s]
  %s
  wave_timeout = "10m"
}

role "app" {
  secret "pull-status" {
    source = "secrets/pull-status.age"
  }
  secret "db" {
    source = "secrets/db.age"
  }
  pull {
    channel            = "prod"
    interval           = "2s"
    jitter             = "0s"
    publisher_keys     = [%q]
    status_credentials = secret.pull-status.path
  }
}

defaults {
  roles = [role.app]
}
`, p.fl.Names(), p.waves, p.publisher.Public().String()))
	}
	secretIs := func(t *testing.T, want string) {
		t.Helper()
		if got := h.Succeed("cat /run/deploy/secrets/db"); got != want {
			t.Errorf("/run/deploy/secrets/db = %q, want %q", got, want)
		}
	}
	publish := func(msg string) {
		t.Helper()
		if msg != "" {
			p.fl.Commit(t, msg)
		}
		res := p.r.Run(t, "publish", "--json", "--wait", "--poll", "500ms", "--channel", "prod", target).Want(t, ExitOK)
		if r := res.Results()[h.Name()]; r.Result != fleet.ResultOK {
			t.Fatalf("publish %s: %+v", msg, r)
		}
	}

	write()
	v1 := encryptDB(t, p.fl, h, v1Text)
	p.fl.Commit(t, "join")
	p.r.Text(t, "", target).Want(t, ExitOK) // joins pull mode
	h.WaitForUnit("deploy-pull.timer")
	publish("") // serial 1: db v1
	secretIs(t, v1Text)
	encryptDB(t, p.fl, h, v2Text)
	publish("db v2") // serial 2
	secretIs(t, v2Text)
	p.r.Run(t, "secrets", "revoke", "-C", p.fl.Dir, "db").Want(t, ExitOK)
	publish("revoke db v1") // serial 3
	if got := h.Succeed("cat /var/lib/deploy/revoked-secrets"); got != v1+"\n" {
		t.Errorf("the host's record = %q, want %q", got, v1+"\n")
	}

	p.r.Run(t, "rollback", "--json", "--channel", "prod", "--to-serial", "1", "--wait", target).Want(t, ExitOK)
	if rb := p.head(); rb.RollbackTo != 1 {
		t.Errorf("the channel's head rolls back to %d, want 1", rb.RollbackTo)
	}
	secretIs(t, v2Text)
	if out := h.Succeed("grep -rl pull-v1 /run/deploy /var/lib/deploy 2>/dev/null || true"); out != "" {
		t.Errorf("version 1's plaintext is on the host: %s", out)
	}
	gens := p.generations(h)
	if cur := gens[len(gens)-1]; !cur.Current || !slices.Contains(cur.RevokedSecrets, "db") {
		t.Errorf("the running generation %+v, want serial 1's system marked with the revoked db", cur)
	}
}
