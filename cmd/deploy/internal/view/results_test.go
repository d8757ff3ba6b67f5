package view

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/fleet"
)

// allResults is every result a host can end with: those that make a run
// fail (fleet.ResultPrecedence), then the good ones and skipped.
var allResults = append(slices.Clone(fleet.ResultPrecedence), fleet.ResultOK, fleet.ResultUnchanged, fleet.ResultPlanned, fleet.ResultSkipped)

// Every result has a symbol in the live view (the word alone would do, but
// a blank where the others have a mark reads as a bug) and a place in the
// run's summary line.
func TestEveryResultHasASymbol(t *testing.T) {
	for _, r := range allResults {
		if symbols[string(r)] == "" {
			t.Errorf("symbols[%q] is empty: the live view shows the result without its mark", r)
		}
		if !slices.Contains(resultOrder, r) {
			t.Errorf("resultOrder lacks %q: the summary line leaves it out", r)
		}
	}
}

// dryRunStream is the event stream of deploy .#prod --dry-run for one host.
var dryRunStream = []fleet.Event{
	{Type: fleet.EventRunStart, Command: "deploy", Mode: fleet.ModeSwitch, Hosts: []string{"web1"}, Batches: [][]string{{"web1"}}, DryRun: true},
	{Type: fleet.EventBatchStart, Batch: 1, Hosts: []string{"web1"}},
	{Type: fleet.EventPhase, Host: "web1", Phase: fleet.PhaseBuild, State: "started"},
	{Type: fleet.EventPhase, Host: "web1", Phase: fleet.PhaseBuild, State: "done"},
	{Type: fleet.EventPhase, Host: "web1", Phase: fleet.PhaseCopy, State: "started"},
	{Type: fleet.EventPhase, Host: "web1", Phase: fleet.PhaseCopy, State: "done", CopyPaths: 6, Total: 21390950},
}

// A dry run copies nothing: its views say what would be copied, never
// "copy done" (they learn of the dry run from run.start).
func TestDryRunViews(t *testing.T) {
	var buf bytes.Buffer
	pv := &plainView{w: &buf}
	for _, ev := range dryRunStream {
		pv.Event(ev)
	}
	out := buf.String()
	if !strings.Contains(out, "deploy: web1: would copy 6 paths (20.4 MiB)\n") || strings.Contains(out, "copy done") {
		t.Errorf("plain view of a dry run:\n%s\nwant 'web1: would copy 6 paths (20.4 MiB)' and no 'copy done'", out)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "tty"))
	if err != nil {
		t.Fatal(err)
	}
	lv := newLiveView(f, true)
	for _, ev := range dryRunStream {
		lv.Event(ev)
	}
	lv.mu.Lock()
	r := *lv.rows["web1"]
	lv.mu.Unlock()
	lv.Close()
	if r.state == "done" || r.detail != "would copy 6 paths (20.4 MiB)" {
		t.Errorf("live view of a dry run after the copy phase: %s %q, want not done, 'would copy 6 paths (20.4 MiB)'", r.state, r.detail)
	}
	// The same stream without the dry run is a copy.
	buf.Reset()
	pv = &plainView{w: &buf}
	for _, ev := range append([]fleet.Event{{Type: fleet.EventRunStart, Command: "deploy", Mode: fleet.ModeSwitch, Hosts: []string{"web1"}, Batches: [][]string{{"web1"}}}}, dryRunStream[1:]...) {
		pv.Event(ev)
	}
	if !strings.Contains(buf.String(), "deploy: web1: copy done (6 paths, 20.4 MiB)\n") {
		t.Errorf("plain view of a deploy:\n%s\nwant 'web1: copy done (6 paths, 20.4 MiB)'", buf.String())
	}
}
