package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// netns is a network namespace kept alive by an open file descriptor of
// this process, never by a bind mount: it disappears when the run's
// processes and this descriptor are gone, even when the test binary is
// killed.
type netns struct {
	f *os.File
}

// newNetns creates an empty network namespace.
func newNetns() (*netns, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is never unlocked: when this goroutine returns, the
		// runtime ends the thread, so no Go code ever runs in the new
		// namespace by accident.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("create network namespace: %w", err)}
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			err = fmt.Errorf("create network namespace: %w", err)
		}
		ch <- result{f, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	return &netns{f: r.f}, nil
}

func (ns *netns) close() error {
	if ns == nil || ns.f == nil {
		return nil
	}
	return ns.f.Close()
}

// ip runs `ip -batch -` with script inside the namespace. In the script,
// "NETNS:n" stands for the namespace extra[n], for `netns` arguments.
func (ns *netns) ip(ctx context.Context, script string, extra ...*netns) error {
	files := []*os.File{ns.f}
	for i, e := range extra {
		files = append(files, e.f)
		script = strings.ReplaceAll(script, fmt.Sprintf("NETNS:%d", i), fmt.Sprintf("/proc/self/fd/%d", 4+i))
	}
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/proc/self/fd/3", "ip", "-batch", "-")
	cmd.ExtraFiles = files
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %q: %w: %s", strings.TrimSpace(script), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// run runs a program inside the namespace.
func (ns *netns) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/proc/self/fd/3", name}, args...)...)
	cmd.ExtraFiles = []*os.File{ns.f}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %q: %w: %s", name, args, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// do runs fn on a locked OS thread that has joined the namespace. Sockets
// that fn creates belong to the namespace and may be used from any
// goroutine afterwards.
func (ns *netns) do(fn func()) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine instead of
		// returning to the scheduler in the wrong namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		fn()
		errc <- nil
	}()
	return <-errc
}

// dial connects to address from inside the namespace.
func (ns *netns) dial(ctx context.Context, network, address string) (net.Conn, error) {
	var (
		c   net.Conn
		err error
	)
	if nserr := ns.do(func() {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
	}); nserr != nil {
		return nil, nserr
	}
	return c, err
}

// listen listens on address inside the namespace.
func (ns *netns) listen(ctx context.Context, network, address string) (net.Listener, error) {
	var (
		l   net.Listener
		err error
	)
	if nserr := ns.do(func() {
		var lc net.ListenConfig
		l, err = lc.Listen(ctx, network, address)
	}); nserr != nil {
		return nil, nserr
	}
	return l, err
}
