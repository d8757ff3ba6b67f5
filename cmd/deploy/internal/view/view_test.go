package view

import (
	"os"
	"path/filepath"
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
