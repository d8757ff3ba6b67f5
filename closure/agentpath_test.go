package closure

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
)

func TestInstallAgent(t *testing.T) {
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "agent-binary")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho agent\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	local := newTestStore(t, DefaultStoreDir)
	want, err := local.AddAgent(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(want.Path, "-"+agentapi.AgentName) {
		t.Fatalf("AddAgent = %q, want a path named %q", want.Path, agentapi.AgentName)
	}
	if fi, err := os.Stat(filepath.Join(local.RealPath(want.Path), agentapi.AgentBin)); err != nil || fi.Mode().Perm() != 0o555 {
		t.Fatalf("agent executable: %v, %v; want mode 0555", fi, err)
	}

	target := newTestStore(t, DefaultStoreDir)
	wrong := want.NarHash
	wrong[3] ^= 0xff
	if _, err := target.InstallAgent(ctx, bin, wrong); err == nil || !strings.Contains(err.Error(), "NAR hash") {
		t.Fatalf("InstallAgent with a wrong hash = %v, want a hash error", err)
	}
	if paths, _ := target.Paths(); len(paths) != 0 {
		t.Fatalf("a refused install left %v", paths)
	}
	got, err := target.InstallAgent(ctx, bin, want.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	if got.Path != want.Path {
		t.Fatalf("InstallAgent = %q, want %q (as the operator computed it)", got.Path, want.Path)
	}
	// A second install of the same version changes nothing.
	if again, err := target.InstallAgent(ctx, bin, want.NarHash); err != nil || again.Path != want.Path {
		t.Fatalf("second InstallAgent = %v, %v", again, err)
	}
}
