package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/declarative/deploy/mesh"
)

// runExec runs a command on every selected host in parallel. Output lines
// are prefixed with the host's name; each host's output is printed as it
// arrives, line by line, so lines of different hosts never mix.
func runExec(ctx context.Context, e *env, args []string) error {
	var sf fleetSSHFlags
	var parallel int
	fs := newFlags(e, "exec", "TARGET... -- COMMAND [ARG...]")
	sf.register(fs)
	fs.IntVar(&parallel, "parallel", 16, "hosts at once")
	split := -1
	for i, a := range args {
		if a == "--" {
			split = i
			break
		}
	}
	if split < 0 || split == len(args)-1 {
		fs.Usage()
		return usageErrorf("exec: want TARGET... -- COMMAND")
	}
	targets, err := parse(fs, args[:split], 1, -1)
	if err != nil {
		return err
	}
	cmd := args[split+1:]
	_, hosts, err := loadSelected(e, targets)
	if err != nil {
		return err
	}
	cfg := sf.config(e)
	sem := make(chan struct{}, max(parallel, 1))
	var mu sync.Mutex
	var failed, unreachable []string
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			out := &prefixWriter{w: e.stdout, mu: &mu, prefix: h.Name + ": "}
			errw := &prefixWriter{w: e.stderr, mu: &mu, prefix: h.Name + ": "}
			err := execOn(ctx, cfg, meshTarget(h), cmd, out, errw)
			out.flush()
			errw.flush()
			mu.Lock()
			defer mu.Unlock()
			var ee *mesh.ExitError
			switch {
			case err == nil:
			case errors.As(err, &ee):
				failed = append(failed, h.Name)
				fmt.Fprintf(e.stderr, "deploy: %s: %v\n", h.Name, err)
			default:
				unreachable = append(unreachable, h.Name)
				fmt.Fprintf(e.stderr, "deploy: %s: %v\n", h.Name, err)
			}
		}()
	}
	wg.Wait()
	switch {
	case len(unreachable) > 0:
		return &exitError{code: ExitUnreachable, err: fmt.Errorf("exec: unreachable: %s", strings.Join(unreachable, ", "))}
	case len(failed) > 0:
		return &exitError{code: ExitConfig, err: fmt.Errorf("exec: the command failed on %s", strings.Join(failed, ", "))}
	}
	return nil
}

func execOn(ctx context.Context, cfg *mesh.Config, t mesh.Target, cmd []string, stdout, stderr io.Writer) error {
	c, err := cfg.Connect(ctx, t)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Run(ctx, cmd, nil, stdout, stderr)
}

// prefixWriter writes whole lines, each prefixed, under a shared lock.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	buf    bytes.Buffer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf.Write(b)
	for {
		i := bytes.IndexByte(p.buf.Bytes(), '\n')
		if i < 0 {
			return len(b), nil
		}
		line := p.buf.Next(i + 1)
		p.mu.Lock()
		io.WriteString(p.w, p.prefix)
		p.w.Write(line)
		p.mu.Unlock()
	}
}

func (p *prefixWriter) flush() {
	if p.buf.Len() > 0 {
		p.mu.Lock()
		io.WriteString(p.w, p.prefix)
		p.w.Write(p.buf.Bytes())
		io.WriteString(p.w, "\n")
		p.mu.Unlock()
		p.buf.Reset()
	}
}
