package meshtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/mesh"
)

// streamSize is how much the streaming checks send each way (less with
// -short).
func streamSize() int64 {
	if testing.Short() {
		return 8 << 20
	}
	return 100 << 20
}

// RunTransportTests runs the checks every transport must pass. connect
// returns a fresh, connected client for a host with a POSIX shell and
// coreutils; RunTransportTests closes the clients it gets.
func RunTransportTests(t *testing.T, connect func(t *testing.T) *mesh.Client) {
	cl := connect(t)
	t.Cleanup(func() { cl.Close() })

	t.Run("Quoting", func(t *testing.T) { testQuoting(t, cl) })
	t.Run("ExitCodes", func(t *testing.T) { testExitCodes(t, cl) })
	t.Run("StderrTail", func(t *testing.T) { testStderrTail(t, cl) })
	t.Run("Stdin", func(t *testing.T) { testStdin(t, cl) })
	t.Run("StreamIn", func(t *testing.T) { testStreamIn(t, cl) })
	t.Run("StreamOut", func(t *testing.T) { testStreamOut(t, cl) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, cl) })
	t.Run("Cancel", func(t *testing.T) { testCancel(t, cl) })
	t.Run("Close", func(t *testing.T) { testClose(t, connect(t)) })
}

func testQuoting(t *testing.T, cl *mesh.Client) {
	args := []string{"plain", "two words", "it's", `"double"`, "$HOME", "`id`", "a;b", "", "*", "new\nline", "back\\slash", "ünï"}
	var out bytes.Buffer
	if err := cl.Run(context.Background(), append([]string{"printf", `%s\0`}, args...), nil, &out, nil); err != nil {
		t.Fatalf("Run(printf) = %v", err)
	}
	got := strings.Split(strings.TrimSuffix(out.String(), "\x00"), "\x00")
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", args) {
		t.Errorf("printf %%s\\0 ARGS printed %q, want %q", got, args)
	}
}

func testExitCodes(t *testing.T, cl *mesh.Client) {
	tests := []struct {
		name       string
		cmd        []string
		wantCode   int // 0 = success
		wantStderr string
	}{
		{"true", []string{"true"}, 0, ""},
		{"false", []string{"false"}, 1, ""},
		{"exit 3 with stderr", []string{"sh", "-c", "echo out; echo 'bad thing' >&2; exit 3"}, 3, "bad thing"},
		{"not found", []string{"/nonexistent/command"}, 127, "nonexistent"},
		{"exit 255", []string{"sh", "-c", "exit 255"}, 255, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := cl.Run(context.Background(), tt.cmd, nil, io.Discard, &stderr)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("Run(%q) = %v, want nil", tt.cmd, err)
				}
				return
			}
			var ee *mesh.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("Run(%q) = %v, want *mesh.ExitError", tt.cmd, err)
			}
			if ee.Code != tt.wantCode {
				t.Errorf("Run(%q): exit code %d, want %d", tt.cmd, ee.Code, tt.wantCode)
			}
			if !strings.Contains(ee.Stderr, tt.wantStderr) {
				t.Errorf("Run(%q): ExitError.Stderr = %q, want it to contain %q", tt.cmd, ee.Stderr, tt.wantStderr)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("Run(%q): stderr writer got %q, want it to contain %q", tt.cmd, stderr.String(), tt.wantStderr)
			}
			if tt.wantStderr != "" && !strings.Contains(err.Error(), tt.wantStderr) {
				t.Errorf("Run(%q) error %q does not quote stderr %q", tt.cmd, err, tt.wantStderr)
			}
		})
	}
}

func testStderrTail(t *testing.T, cl *mesh.Client) {
	// 200 KiB of numbered lines on stderr, then exit 1: the tail keeps the
	// last 64 KiB, ending with the last line.
	s, err := cl.Start(context.Background(), []string{"sh", "-c", `i=0; while [ $i -lt 20000 ]; do echo "line $i .........." >&2; i=$((i+1)); done; exit 1`})
	if err != nil {
		t.Fatalf("Start = %v", err)
	}
	s.Stdin.Close()
	io.Copy(io.Discard, s.Stdout)
	err = s.Wait()
	var ee *mesh.ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("Wait = %v, want exit status 1", err)
	}
	tail := s.Stderr()
	if len(tail) != 64<<10 {
		t.Errorf("len(Stderr()) = %d, want %d", len(tail), 64<<10)
	}
	if !bytes.HasSuffix(tail, []byte("line 19999 ..........\n")) {
		t.Errorf("Stderr() ends %q, want the last line", tail[max(0, len(tail)-40):])
	}
	if !strings.Contains(err.Error(), "line 19999") {
		t.Errorf("error %q does not quote the last stderr line", err)
	}
}

func testStdin(t *testing.T, cl *mesh.Client) {
	in := "first line\nsecond line\n\x00binary\xff\n"
	var out bytes.Buffer
	if err := cl.Run(context.Background(), []string{"cat"}, strings.NewReader(in), &out, nil); err != nil {
		t.Fatalf("Run(cat) = %v", err)
	}
	if out.String() != in {
		t.Errorf("cat echoed %q, want %q", out.String(), in)
	}
	// nil stdin: the command sees EOF at once.
	out.Reset()
	if err := cl.Run(context.Background(), []string{"wc", "-c"}, nil, &out, nil); err != nil {
		t.Fatalf("Run(wc -c) = %v", err)
	}
	if strings.TrimSpace(out.String()) != "0" {
		t.Errorf("wc -c with nil stdin = %q, want 0", out.String())
	}
}

// pattern is a deterministic, incompressible-looking stream.
type pattern struct{ r *rand.ChaCha8 }

func newPattern() io.Reader { return &pattern{rand.NewChaCha8([32]byte{1, 2, 3})} }

func (p *pattern) Read(b []byte) (int, error) { return p.r.Read(b) }

func testStreamIn(t *testing.T, cl *mesh.Client) {
	n := streamSize()
	for _, cmd := range [][]string{{"sh", "-c", "cat > /dev/null"}, {"sha256sum"}} {
		t.Run(cmd[0], func(t *testing.T) {
			s, err := cl.Start(context.Background(), cmd)
			if err != nil {
				t.Fatalf("Start(%q) = %v", cmd, err)
			}
			var out bytes.Buffer
			read := make(chan error, 1)
			go func() { _, err := io.Copy(&out, s.Stdout); read <- err }()
			h := sha256.New()
			written, err := io.Copy(s.Stdin, io.TeeReader(io.LimitReader(newPattern(), n), h))
			if err != nil || written != n {
				t.Fatalf("writing %d bytes to %q: wrote %d, %v", n, cmd, written, err)
			}
			if err := s.Stdin.Close(); err != nil {
				t.Fatalf("Stdin.Close() = %v", err)
			}
			if err := <-read; err != nil {
				t.Fatalf("reading stdout: %v", err)
			}
			if err := s.Wait(); err != nil {
				t.Fatalf("Wait() = %v", err)
			}
			if cmd[0] == "sha256sum" {
				want := hex.EncodeToString(h.Sum(nil))
				if got, _, _ := strings.Cut(out.String(), " "); got != want {
					t.Errorf("remote sha256 of %d bytes = %q, want %q", n, got, want)
				}
			}
		})
	}
}

func testStreamOut(t *testing.T, cl *mesh.Client) {
	n := streamSize()
	s, err := cl.Start(context.Background(), []string{"head", "-c", fmt.Sprint(n), "/dev/zero"})
	if err != nil {
		t.Fatalf("Start = %v", err)
	}
	s.Stdin.Close()
	got, err := io.Copy(io.Discard, s.Stdout)
	if err != nil || got != n {
		t.Fatalf("read %d bytes, %v; want %d bytes", got, err, n)
	}
	if err := s.Wait(); err != nil {
		t.Fatalf("Wait() = %v", err)
	}
}

func testConcurrent(t *testing.T, cl *mesh.Client) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			var out bytes.Buffer
			if err := cl.Run(context.Background(), []string{"echo", fmt.Sprint(i)}, nil, &out, nil); err != nil {
				errs <- err
				return
			}
			if out.String() != fmt.Sprintf("%d\n", i) {
				errs <- fmt.Errorf("echo %d printed %q", i, out.String())
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testCancel(t *testing.T, cl *mesh.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// cat on a stdin that never ends: only cancellation stops it, and the
	// closed session then ends cat too (EOF), leaving nothing behind.
	pr, pw := io.Pipe()
	defer pw.Close()
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx, []string{"cat"}, pr, nil, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Run(cat) with a timeout = %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run(cat) did not return after its context expired")
	}
	// The client is still usable.
	if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
		t.Errorf("Run(true) after a cancelled Run = %v", err)
	}
}

func testClose(t *testing.T, cl *mesh.Client) {
	if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
		t.Fatalf("Run(true) = %v", err)
	}
	s, err := cl.Start(context.Background(), []string{"cat"})
	if err != nil {
		t.Fatalf("Start(cat) = %v", err)
	}
	select {
	case <-cl.Dead():
		t.Fatal("Dead() closed on a live client")
	default:
	}
	cl.Close()
	select {
	case <-cl.Dead():
	case <-time.After(10 * time.Second):
		t.Fatal("Dead() not closed after Close")
	}
	if _, err := io.Copy(io.Discard, s.Stdout); err == nil {
		t.Error("reading a session's stdout after Close succeeded, want an error")
	}
	if err := s.Wait(); err == nil {
		t.Error("Wait() after Close = nil, want an error")
	}
	if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err == nil {
		t.Error("Run after Close = nil, want an error")
	}
}
