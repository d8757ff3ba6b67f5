package simhost

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"golang.org/x/sync/errgroup"
)

// Bootstrap gives h its first generation, system (a store path of local,
// the operator's store), the way a push deploy does on a target, without
// SSH: agent (a deploy-agent binary the host can read, outside /tmp)
// serves `receive` on the host's stdin and stdout for [closure.Send] (the
// host answers which paths it lacks; only those are sent, each verified
// and committed by the agent), then the system's own agent runs `activate
// --confirm-timeout 0`: the health checks confirm the generation, as in
// pull mode. It returns the activation's output when it fails.
func (h *Host) Bootstrap(ctx context.Context, local *closure.Store, agent, system string) (*closure.TransferStats, error) {
	infos, err := local.Closure(system)
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(infos))
	for i, pi := range infos {
		paths[i] = pi.Path
	}
	cmd := h.Command(ctx, agent, agentapi.VerbReceive)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stats, err := closure.Send(ctx, local, paths, &pipeConn{Reader: stdout, WriteCloser: stdin}, closure.SendOptions{})
	stdin.Close()
	if werr := cmd.Wait(); err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		return stats, fmt.Errorf("%s: receive: %w: %s", h.name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	act := agentapi.ActivateCmd{System: system, Meta: map[string]string{"message": "simhost bootstrap"}}
	out, err := h.Command(ctx, filepath.Join(system, "agent/bin/deploy-agent"), act.Args()...).CombinedOutput()
	if err != nil {
		return stats, fmt.Errorf("%s: activate %s: %w\n%s", h.name, system, err, out)
	}
	return stats, nil
}

type pipeConn struct {
	io.Reader
	io.WriteCloser
}

// SeedStores gives each of hosts the store paths (and their metadata)
// that from holds, as hard links: what an image with the agent in it
// would give them. Store paths are immutable, so hosts sharing an inode
// share nothing they could change. Hosts that already hold a path keep
// theirs.
func (n *Network) SeedStores(ctx context.Context, from *Host, hosts []*Host) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n.opts.Parallel)
	for _, h := range hosts {
		if h == from {
			continue
		}
		g.Go(func() error {
			for _, d := range []string{"store", "db"} {
				src := filepath.Join(from.dir, "state", d)
				if _, err := os.Stat(src); err != nil {
					return err
				}
				dst := filepath.Join(h.dir, "state")
				out, err := exec.CommandContext(gctx, "cp", "-al", "-n", src, dst).CombinedOutput()
				if err != nil {
					return fmt.Errorf("%s: seeding its %s: %v: %s", h.name, d, err, strings.TrimSpace(string(out)))
				}
			}
			return nil
		})
	}
	return g.Wait()
}
