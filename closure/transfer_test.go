package closure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fixture builds a closure of n paths in a local store: leaves, and a root
// that refers to all of them.
func fixture(t *testing.T, n int) (*Store, []string) {
	t.Helper()
	local := newTestStore(t, DefaultStoreDir)
	ctx := context.Background()
	dir := t.TempDir()
	var refs []string
	for i := 0; i < n; i++ {
		src := writeTree(t, filepath.Join(dir, fmt.Sprint("leaf", i)), map[string]string{
			"data": strings.Repeat(fmt.Sprint(i), 1000*(i+1)), "sub/x": "x",
		})
		pi, err := local.AddTree(ctx, src, fmt.Sprint("leaf", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, pi.Path)
	}
	root, err := local.AddTree(ctx, writeTree(t, filepath.Join(dir, "root"), map[string]string{"manifest": "m"}), "system-test", refs)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := local.Closure(root.Path)
	if err != nil {
		t.Fatal(err)
	}
	paths := make([]string, len(cl))
	for i, pi := range cl {
		paths[i] = pi.Path
	}
	return local, paths
}

// connPair runs Receive on one end of a socket pair; mid, if set, sits
// between the two and may tamper with or cut the operator's stream.
func transfer(t *testing.T, local, remote *Store, paths []string, opts SendOptions, mid func(dst io.Writer, src io.Reader)) (*TransferStats, *TransferStats, error, error) {
	t.Helper()
	opConn, agentConn := net.Pipe()
	var agentSide io.Reader = agentConn
	if mid != nil {
		pr, pw := io.Pipe()
		go func() { mid(pw, agentConn); pw.Close() }()
		agentSide = pr
	}
	var wg sync.WaitGroup
	var rstats *TransferStats
	var rerr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		rstats, rerr = remote.Receive(context.Background(), agentSide, agentConn, ReceiveOptions{Agent: "test"})
		agentConn.Close()
	}()
	sstats, serr := Send(context.Background(), local, paths, opConn, opts)
	opConn.Close()
	wg.Wait()
	return sstats, rstats, serr, rerr
}

func TestTransfer(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprint("compress=", compress), func(t *testing.T) {
			local, paths := fixture(t, 5)
			remote := newTestStore(t, DefaultStoreDir)
			var lastProgress Progress
			s, r, serr, rerr := transfer(t, local, remote, paths, SendOptions{Compress: compress, Progress: func(p Progress) { lastProgress = p }}, nil)
			if serr != nil || rerr != nil {
				t.Fatalf("transfer: send %v, receive %v", serr, rerr)
			}
			if s.Missing != len(paths) || s.Imported != len(paths) || r.Imported != len(paths) {
				t.Fatalf("stats: send %+v, receive %+v; want %d paths", s, r, len(paths))
			}
			if lastProgress.Confirmed != lastProgress.Total || lastProgress.Total != s.NarBytes {
				t.Errorf("last progress %+v, want confirmed == total == %d", lastProgress, s.NarBytes)
			}
			if problems, err := remote.Verify(context.Background()); err != nil || len(problems) != 0 {
				t.Fatalf("remote Verify: %v %v", problems, err)
			}
			// A second transfer finds nothing missing.
			s, _, serr, rerr = transfer(t, local, remote, paths, SendOptions{Compress: compress}, nil)
			if serr != nil || rerr != nil || s.Missing != 0 || s.NarBytes != 0 {
				t.Fatalf("second transfer: %+v, %v, %v; want nothing sent", s, serr, rerr)
			}
		})
	}
}

func TestTransferInterruptedResumes(t *testing.T) {
	local, paths := fixture(t, 8)
	remote := newTestStore(t, DefaultStoreDir)
	// Cut the stream after ~40% of it.
	var total int64
	for _, p := range paths {
		pi, _ := local.Info(p)
		total += pi.NarSize
	}
	cut := func(dst io.Writer, src io.Reader) { io.CopyN(dst, src, total*2/5) }
	_, _, serr, rerr := transfer(t, local, remote, paths, SendOptions{}, cut)
	if serr == nil || rerr == nil {
		t.Fatalf("a cut transfer succeeded: send %v, receive %v", serr, rerr)
	}
	valid, _ := remote.Paths()
	if len(valid) == 0 || len(valid) == len(paths) {
		t.Fatalf("after the cut %d of %d paths are valid; want some but not all", len(valid), len(paths))
	}
	if problems, _ := remote.Verify(context.Background()); len(problems) != 0 {
		t.Fatalf("a partial path is valid after the cut: %v", problems)
	}
	s, _, serr, rerr := transfer(t, local, remote, paths, SendOptions{}, nil)
	if serr != nil || rerr != nil {
		t.Fatalf("rerun: %v %v", serr, rerr)
	}
	if s.Missing != len(paths)-len(valid) {
		t.Errorf("rerun sent %d paths, want only the %d still missing", s.Missing, len(paths)-len(valid))
	}
	entries, _ := os.ReadDir(remote.RealDir)
	if len(entries) != len(paths) {
		t.Errorf("store holds %d entries after the rerun, want %d (leftovers?)", len(entries), len(paths))
	}
}

func TestTransferTamperedRejected(t *testing.T) {
	local, paths := fixture(t, 3)
	remote := newTestStore(t, DefaultStoreDir)
	// Flip one byte of file content in the stream, as it passes.
	flip := func(dst io.Writer, src io.Reader) {
		buf := make([]byte, 64<<10)
		done := false
		for {
			n, err := src.Read(buf)
			if i := strings.Index(string(buf[:n]), "22222222"); i >= 0 && !done {
				buf[i], done = '3', true
			}
			if _, werr := dst.Write(buf[:n]); werr != nil || err != nil {
				return
			}
		}
	}
	_, _, serr, rerr := transfer(t, local, remote, paths, SendOptions{}, flip)
	var hm *HashMismatchError
	if !errors.As(rerr, &hm) {
		t.Fatalf("receive of a tampered stream: %v, want a hash mismatch", rerr)
	}
	var ae *AgentError
	if !errors.As(serr, &ae) || !strings.Contains(serr.Error(), "hash") {
		t.Fatalf("send of a tampered stream: %v, want the agent's hash error", serr)
	}
	if ok, _ := remote.Valid(hm.Path); ok {
		t.Fatalf("tampered path %q is valid", hm.Path)
	}
}

func TestTransferStoreDirMismatch(t *testing.T) {
	local, paths := fixture(t, 1)
	remote := newTestStore(t, "/other/store")
	_, _, serr, _ := transfer(t, local, remote, paths, SendOptions{}, nil)
	if serr == nil || !strings.Contains(serr.Error(), "/other/store") {
		t.Fatalf("Send to a store with another directory: %v, want an error naming it", serr)
	}
}

func TestReceiveRejectsUnrequestedPath(t *testing.T) {
	remote := newTestStore(t, DefaultStoreDir)
	in := strings.NewReader(`{"t":"want","paths":[]}` + "\n" +
		`{"t":"path","path":"` + DefaultStoreDir + `/` + strings.Repeat("0", 32) + `-x","narHash":"sha256:` + strings.Repeat("0", 52) + `","narSize":8}` + "\n")
	var out strings.Builder
	_, err := remote.Receive(context.Background(), in, &out, ReceiveOptions{})
	var pe *ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(out.String(), `"t":"error"`) {
		t.Fatalf("Receive of an unrequested path: %v (sent %q), want a protocol error reported to the peer", err, out.String())
	}
}

func TestTransferDryRunAndSystems(t *testing.T) {
	local, paths := fixture(t, 3)
	remote := newTestStore(t, DefaultStoreDir)
	opConn, agentConn := net.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := remote.Receive(context.Background(), agentConn, agentConn, ReceiveOptions{
			Systems: func() (string, string) { return paths[len(paths)-1], "" },
		})
		agentConn.Close()
		done <- err
	}()
	stats, err := Send(context.Background(), local, paths, opConn, SendOptions{DryRun: true, Compress: true})
	opConn.Close()
	if err != nil || <-done != nil {
		t.Fatalf("dry run: %v", err)
	}
	var want int64
	for _, p := range paths {
		pi, _ := local.Info(p)
		want += pi.NarSize
	}
	if stats.Missing != len(paths) || stats.MissingBytes != want || stats.NarBytes != 0 {
		t.Errorf("dry run stats %+v, want %d missing paths of %d bytes and nothing sent", stats, len(paths), want)
	}
	if stats.Current != paths[len(paths)-1] {
		t.Errorf("hello's current system = %q, want %q", stats.Current, paths[len(paths)-1])
	}
	if got, _ := remote.Paths(); len(got) != 0 {
		t.Fatalf("a dry run imported %v", got)
	}
}
