package closure

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/nar"
)

// An agent store path is named [agentapi.AgentName] and is a directory
// holding one file, [agentapi.AgentBin] (executable); every system closure
// refers to one, and bootstrap installs one from a bare binary.

// AddAgent adds the deploy-agent executable at binary to s as an agent
// store path (see [agentapi.AgentName]) and returns its metadata.
func (s *Store) AddAgent(ctx context.Context, binary string) (*PathInfo, error) {
	tree, cleanup, err := agentTree(binary)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	return s.AddTree(ctx, tree, agentapi.AgentName, nil)
}

// agentTree lays binary out as an agent store path in a temporary
// directory.
func agentTree(binary string) (string, func(), error) {
	tmp, err := os.MkdirTemp("", "deploy-agent-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { nar.RemoveTree(tmp) }
	exe := filepath.Join(tmp, "agent", agentapi.AgentBin)
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		cleanup()
		return "", nil, err
	}
	if err := copyFile(binary, exe, 0o755); err != nil {
		cleanup()
		return "", nil, err
	}
	return filepath.Join(tmp, "agent"), cleanup, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %q: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return fmt.Errorf("copy %q: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %q: %w", src, err)
	}
	return out.Close()
}

// InstallAgent registers binary (normally the running agent itself,
// uploaded to a temporary file) as the agent store path whose NAR hash is
// narHash: it lays the binary out as an agent path, checks the hash, and
// imports it. It fails, changing nothing, when the hash differs: the
// upload was corrupt or is not the agent the operator meant.
func (s *Store) InstallAgent(ctx context.Context, binary string, narHash [32]byte) (*PathInfo, error) {
	tree, cleanup, err := agentTree(binary)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	h := newHashWriter()
	if err := nar.Dump(h, tree); err != nil {
		return nil, err
	}
	if got := h.sum(); got != narHash {
		return nil, fmt.Errorf("install-self: the uploaded agent %q has NAR hash sha256:%s, want sha256:%s", binary, Nix32(got[:]), Nix32(narHash[:]))
	}
	p, err := MakeSourcePath(s.StoreDir, narHash, agentapi.AgentName, nil)
	if err != nil {
		return nil, err
	}
	pi := &PathInfo{Path: p, NarHash: narHash, NarSize: h.n}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(nar.Dump(pw, tree)) }()
	err = s.Import(ctx, pr, pi)
	pr.Close()
	if err != nil {
		return nil, err
	}
	return pi, nil
}
