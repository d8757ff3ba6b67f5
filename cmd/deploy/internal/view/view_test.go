package view

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/fleet"
)

// The live view renders to a terminal; here to a file, which is enough to
// check what it draws and that closing it twice (a deferred Close after an
// explicit one) is harmless.
func TestLiveView(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "tty"))
	if err != nil {
		t.Fatal(err)
	}
	v := newLiveView(f, true)
	v.Event(fleet.Event{Type: fleet.EventRunStart, Hosts: []string{"web1", "web2"}})
	v.Event(fleet.Event{Type: fleet.EventPhase, Host: "web1", Phase: fleet.PhaseCopy, State: "started"})
	v.Event(fleet.Event{Type: fleet.EventProgress, Host: "web1", Phase: fleet.PhaseCopy, Sent: 512 << 10, Total: 1 << 20})
	v.Event(fleet.Event{Type: fleet.EventResult, Host: "web2", Result: fleet.ResultRolledBack, Phase: fleet.PhaseActivate, Error: "health check failed", LogTail: []string{"http: 500"}})
	v.Close()
	v.Close()
	data, _ := os.ReadFile(f.Name())
	out := string(data)
	for _, want := range []string{"HOST", "web1", "copy", "▶ running", "[##########..........]", "512.0 KiB / 1.0 MiB", "↺ rolled-back", "health check failed", "web2 | http: 500"} {
		if !strings.Contains(out, want) {
			t.Errorf("live view lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[3") {
		t.Errorf("NO_COLOR view contains colour escapes")
	}
}

// With more hosts than the terminal has rows, the live view draws a line
// per batch (hosts by state, running ones by phase) and the failed hosts,
// never more lines than fit.
func TestLiveViewSummary(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "tty"))
	if err != nil {
		t.Fatal(err)
	}
	v := newLiveView(f, true)
	v.size = func() (int, int) { return 100, 10 }
	var b1, b2 []string
	for i := range 300 {
		h := fmt.Sprintf("h%03d", i)
		if i < 100 {
			b1 = append(b1, h)
		} else {
			b2 = append(b2, h)
		}
	}
	v.Event(fleet.Event{Type: fleet.EventRunStart, Hosts: append(slices.Clone(b1), b2...), Batches: [][]string{b1, b2}})
	v.Event(fleet.Event{Type: fleet.EventBatchStart, Batch: 1, Hosts: b1})
	for i, h := range b1 {
		switch {
		case i < 60:
			v.Event(fleet.Event{Type: fleet.EventResult, Host: h, Result: fleet.ResultOK, Generation: 2})
		case i < 99:
			v.Event(fleet.Event{Type: fleet.EventPhase, Host: h, Phase: fleet.PhaseCopy, State: "started"})
		default:
			v.Event(fleet.Event{Type: fleet.EventResult, Host: h, Result: fleet.ResultFailed, Phase: fleet.PhaseActivate, Error: "health check failed"})
		}
	}
	v.draw(true)
	frame := v.drawn
	v.Close()
	data, _ := os.ReadFile(f.Name())
	out := string(data)
	for _, want := range []string{"300 hosts in 2 batches", "batch 1/2  100 hosts: 60 ✓ ok, 39 ▶ running (copy 39), 1 ✗ failed", "batch 2/2  200 hosts: 200 · waiting", "h099  ✗ failed  health check failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "h000") {
		t.Errorf("summary shows a host that is ok:\n%s", out)
	}
	if frame > 9 {
		t.Errorf("summary drew %d lines on a terminal of 10", frame)
	}
}
