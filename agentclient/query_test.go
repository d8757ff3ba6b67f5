package agentclient

import (
	"context"
	"errors"
	"strings"
	"testing"

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
