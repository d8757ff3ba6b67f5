package agentclient

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/vmtest"
)

// standInAgent makes script the running system's agent on h: a stand-in
// for agents of other versions, answering as the test says.
func standInAgent(t *testing.T, h *vmtest.Host, script string) {
	t.Helper()
	h.Succeed(`mkdir -p /tmp/standin/agent/bin /run/deploy && cat > /tmp/standin/agent/bin/deploy-agent <<'EOF'
#!/bin/sh
` + script + `
EOF
chmod 755 /tmp/standin/agent/bin/deploy-agent && ln -sfn /tmp/standin /run/deploy/current-system`)
}

// An agent that answers a drift check with a usage error is too old only
// when it does not know the verb at all; a real usage error is reported
// as it is (verify read every exit 2 as "predates deploy verify").
func TestDriftUsageErrors(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	c := &Client{Target: target(h), Mesh: testConfig(t, nw)}
	defer c.Close()
	ctx := context.Background()

	standInAgent(t, h, `case "$1" in drift) ;; *) exit 1 ;; esac
case " $* " in *" -h "*) exit 0 ;; esac
echo "flag provided but not defined: -verify-store" >&2
exit 2`)
	_, err := c.Drift(ctx, true)
	if err == nil || errors.Is(err, ErrVerbUnknown) || !strings.Contains(err.Error(), "flag provided but not defined") {
		t.Errorf("a usage error of an agent that knows drift: %v, want that error, not %v", err, ErrVerbUnknown)
	}

	standInAgent(t, h, `echo "deploy-agent: unknown command \"$1\"" >&2
exit 2`)
	_, err = c.Drift(ctx, true)
	if !errors.Is(err, ErrVerbUnknown) {
		t.Errorf("an agent that predates drift: %v, want %v", err, ErrVerbUnknown)
	}
}

// The run lock brings the host's drift when the agent knows run-lock
// --drift, in one session; an agent that predates the flag (a usage
// error) is asked again without it, and the reply has no drift, so the
// caller asks for it on its own.
func TestLockDrift(t *testing.T) {
	t.Parallel()
	nw := vmtest.Start(t, 1)
	h := nw.Hosts[0]
	cfg := testConfig(t, nw)
	cfg.Counts = &mesh.Counts{}
	c := &Client{Target: target(h), Mesh: cfg}
	defer c.Close()
	ctx := context.Background()
	run := &agentapi.RunHolder{Run: "r1", Started: time.Now()}

	standInAgent(t, h, `case " $* " in *" --drift "*) reply='{"v":1,"locked":true,"drift":{"v":1,"generation":3,"items":[]}}' ;; *) reply='{"v":1,"locked":true}' ;; esac
read holder; echo "$reply"; cat >/dev/null`)
	reply, err := c.LockDrift(ctx, run, 0, "")
	if err != nil || !reply.Locked || reply.Drift == nil || reply.Drift.Generation != 3 {
		t.Fatalf("LockDrift = %+v, %v; want locked with the drift of generation 3", reply, err)
	}
	c.Unlock()
	if got := cfg.Counts.Host(c.Name()); got.Sessions != 1 {
		t.Errorf("LockDrift opened %d sessions, want 1", got.Sessions)
	}

	standInAgent(t, h, `case " $* " in *" --drift "*) echo "flag provided but not defined: -drift" >&2; exit 2 ;; esac
read holder; echo '{"v":1,"locked":true}'; cat >/dev/null`)
	reply, err = c.LockDrift(ctx, run, 0, "")
	if err != nil || !reply.Locked || reply.Drift != nil || reply.DriftError != "" {
		t.Fatalf("LockDrift with an agent that predates --drift = %+v, %v; want locked, no drift", reply, err)
	}
	c.Unlock()
	if got := cfg.Counts.Host(c.Name()); got.Sessions != 3 {
		t.Errorf("sessions after both: %d, want 3 (1, then the refused --drift and the lock)", got.Sessions)
	}
}
