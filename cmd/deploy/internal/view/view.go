// Package view is what the deploy CLI shows. A run's event stream
// (fleet.Event) becomes a live table on a terminal ([Live]), plain lines
// for logs and pipes ([Plain]) or NDJSON for --json ([JSON]); every state
// has a word and a symbol, colour only decorates. A command's report then
// goes to stdout as result lines ([Results], [Systems]) or tables
// ([StatusTable], [ChannelStatus], [Generations], [Drift], [GC],
// [Reboots]), and a dry run's plan as markdown for CI ([PlanMarkdown]).
// The CLI picks the view and parses the flags; nothing here decides what
// a run does.
package view

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/fleet"
	"golang.org/x/term"
)

// A View renders the event stream of a run. The same events become a live
// table on a terminal, plain lines otherwise, or NDJSON with --json.
type View interface {
	Event(fleet.Event)
	// Close draws what is left; it may be called more than once.
	Close()
}

// JSON writes one event per line to w (docs/events.md).
func JSON(w io.Writer) View { return &jsonView{enc: json.NewEncoder(w)} }

// Plain writes a "deploy: " line per meaningful event to w.
func Plain(w io.Writer) View { return &plainView{w: w} }

// Live redraws a table of the hosts on the terminal w ten times a second,
// without colour when noColor.
func Live(w *os.File, noColor bool) View { return newLiveView(w, noColor) }

// jsonView writes one event per line (docs/events.md).
type jsonView struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (v *jsonView) Event(ev fleet.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.enc.Encode(ev)
}

func (v *jsonView) Close() {}

// plainView writes a line per meaningful event, for logs and pipes.
type plainView struct {
	mu     sync.Mutex
	w      io.Writer
	dryRun bool // the run.start said so
}

func (v *plainView) Event(ev fleet.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if ev.Type == fleet.EventRunStart {
		v.dryRun = ev.DryRun
	}
	if line := plainLine(ev, v.dryRun); line != "" {
		fmt.Fprintln(v.w, "deploy: "+line)
	}
}

func (v *plainView) Close() {}

// quietPhases are the phases of host queries: their plain view says only
// what went wrong (the result is the table on stdout).
var quietPhases = map[fleet.Phase]bool{fleet.PhaseStatus: true, fleet.PhaseGenerations: true, fleet.PhaseGC: true,
	fleet.PhaseExec: true, fleet.PhaseDiff: true, fleet.PhaseLock: true, fleet.PhaseVerify: true}

// plainLine is an event's line, "" for none; dryRun says that the run is
// a dry run, whose copy phase copies nothing.
func plainLine(ev fleet.Event, dryRun bool) string {
	switch ev.Type {
	case fleet.EventRunStart:
		if len(ev.Batches) == 0 {
			return ""
		}
		if ev.DryRun {
			return fmt.Sprintf("%s %d hosts in %d batches (dry run: nothing is copied or activated)", ev.Mode, len(ev.Hosts), len(ev.Batches))
		}
		if ev.Command == "reboot" {
			return fmt.Sprintf("reboot %d hosts in %d batches", len(ev.Hosts), len(ev.Batches))
		}
		if ev.Command == "publish" || ev.Command == "rollback" && ev.Mode == "" {
			return fmt.Sprintf("%s: %d hosts in %d waves", ev.Command, len(ev.Hosts), len(ev.Batches))
		}
		return fmt.Sprintf("%s %d hosts in %d batches", ev.Mode, len(ev.Hosts), len(ev.Batches))
	case fleet.EventBatchStart:
		return fmt.Sprintf("batch %d: %s", ev.Batch, strings.Join(ev.Hosts, ", "))
	case fleet.EventPhase:
		switch {
		case ev.State == "failed":
			return fmt.Sprintf("%s: %s failed: %s", ev.Host, ev.Phase, ev.Error)
		case quietPhases[ev.Phase] || ev.State == "skipped":
			return ""
		case dryRun && ev.Phase == fleet.PhaseCopy && ev.State == "started":
			return fmt.Sprintf("%s: finding what a copy would send", ev.Host)
		case dryRun && ev.Phase == fleet.PhaseCopy && ev.State == "done":
			return fmt.Sprintf("%s: %s", ev.Host, wouldCopy(ev))
		case ev.State == "done" && ev.Phase == fleet.PhaseCopy && ev.FetchedPaths > 0:
			return fmt.Sprintf("%s: copy done (%d paths, %s sent; %d paths, %s fetched from the cache)", ev.Host, ev.CopyPaths, Bytes(ev.Total), ev.FetchedPaths, Bytes(ev.FetchedBytes))
		case ev.State == "done" && ev.Phase == fleet.PhaseCopy:
			return fmt.Sprintf("%s: copy done (%d paths, %s)", ev.Host, ev.CopyPaths, Bytes(ev.Total))
		case ev.State == "done":
			return fmt.Sprintf("%s: %s done", ev.Host, ev.Phase)
		case ev.Message != "":
			return fmt.Sprintf("%s: %s", ev.Host, ev.Message)
		default:
			return fmt.Sprintf("%s: %s %s", ev.Host, ev.Phase, ev.State)
		}
	case fleet.EventLog:
		switch {
		case ev.Host == "":
			// The run's own (a window, a budget): no host to name.
			return ev.Message
		case ev.Phase == "":
			return fmt.Sprintf("%s: %s", ev.Host, ev.Message)
		}
		return fmt.Sprintf("%s: %s: %s", ev.Host, ev.Phase, ev.Message)
	case fleet.EventWarning:
		if ev.Host == "" {
			return "warning: " + ev.Message
		}
		return fmt.Sprintf("%s: warning: %s", ev.Host, ev.Message)
	case fleet.EventPlan:
		s := fmt.Sprintf("%s: would copy %d paths (%s); units start %v, restart %v, reload %v, stop %v; %d files change",
			ev.Host, ev.CopyPaths, Bytes(ev.Total), ev.Start, ev.Restart, ev.Reload, ev.Stop, len(ev.Files))
		if len(ev.Repair) > 0 {
			s += fmt.Sprintf("; would repair %d drifted: %s", len(ev.Repair), strings.Join(ev.Repair, "; "))
		}
		return s
	case fleet.EventResult:
		// The failure itself was printed by its phase line, and the
		// target's log lines as they came: the result says where it ended.
		if quietPhases[ev.Phase] && ev.Result != fleet.ResultSkipped {
			return ""
		}
		s := fmt.Sprintf("%s: %s", ev.Host, ev.Result)
		if ev.Generation != 0 {
			s += fmt.Sprintf(" (generation %d)", ev.Generation)
		}
		if ev.Error != "" {
			s += " in " + string(ev.Phase)
		}
		if ev.Result == fleet.ResultSkipped && ev.Message != "" {
			// Why it was left alone: an earlier batch, a budget.
			s += ": " + ev.Message
		}
		return s
	case fleet.EventRollback:
		return fmt.Sprintf("rolling back %s: %s", strings.Join(ev.Hosts, ", "), ev.Message)
	case fleet.EventHalt:
		return "stopping: " + ev.Message
	case fleet.EventCachePush:
		return cacheLine(ev)
	case fleet.EventPublish:
		return publishLine(ev)
	case fleet.EventRunDone:
		switch ev.Command {
		case "status", "generations", "gc", "exec", "diff", "build", "verify", "":
			return ""
		}
		var parts []string
		for _, r := range resultOrder {
			if hs := ev.Summary[r]; len(hs) > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", len(hs), r))
			}
		}
		return "done: " + strings.Join(parts, ", ")
	}
	return ""
}

// wouldCopy is what a dry run's copy phase found.
func wouldCopy(ev fleet.Event) string {
	return fmt.Sprintf("would copy %d paths (%s)", ev.CopyPaths, Bytes(ev.Total))
}

// cacheLine describes a cache.push event.
func cacheLine(ev fleet.Event) string {
	switch ev.State {
	case "started":
		return fmt.Sprintf("cache: pushing the closures (%d paths) to %s", ev.Paths, ev.Message)
	case "done":
		return fmt.Sprintf("cache: %d of %d paths uploaded (%s) to %s", ev.CopyPaths, ev.Paths, Bytes(ev.Total), ev.Message)
	}
	return fmt.Sprintf("cache %s: %s: %s", ev.Message, ev.State, ev.Error)
}

var resultOrder = []fleet.Result{fleet.ResultOK, fleet.ResultUnchanged, fleet.ResultPlanned, fleet.ResultRolledBack,
	fleet.ResultFailed, fleet.ResultRefused, fleet.ResultUnreachable, fleet.ResultLocked, fleet.ResultCommandFailed, fleet.ResultDrifted, fleet.ResultSkipped}

// liveView redraws a per-host table on the terminal ten times a second,
// when something changed or a row's timer runs. When the rows do not fit
// the terminal (hundreds of hosts), it draws one summary line per batch
// instead, then the hosts that failed and the notes, as many as fit: a
// table taller than the screen cannot be redrawn in place, and a redraw
// of hundreds of rows per tick is work nobody can read. Every state has a
// word and a symbol; colour only decorates.
type liveView struct {
	mu      sync.Mutex
	w       *os.File
	hosts   []string
	rows    map[string]*liveRow
	notes   []string
	drawn   int
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
	styles  liveStyles
	start   time.Time
	// batchOf is each host's batch (1-based) and batches their number;
	// batch is the batch that runs now (0: none yet).
	batchOf map[string]int
	batches int
	batch   int
	dryRun  bool // the run.start said so
	// dirty says that an event came since the last draw.
	dirty bool
	// size is the terminal's width and height (0, 0 when unknown).
	size func() (int, int)
}

type liveRow struct {
	phase      fleet.Phase
	state      string // running, ok, failed, waiting...
	sent, tot  int64
	rateSample []sample
	started    time.Time
	ended      time.Time
	detail     string
	bad        bool
	good       bool
}

type sample struct {
	t time.Time
	n int64
}

type liveStyles struct {
	good, bad, dim, bold lipgloss.Style
}

func newLiveView(w *os.File, noColor bool) *liveView {
	st := liveStyles{
		good: lipgloss.NewStyle().Foreground(lipgloss.Color("2")),
		bad:  lipgloss.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
		dim:  lipgloss.NewStyle().Foreground(lipgloss.Color("8")),
		bold: lipgloss.NewStyle().Bold(true),
	}
	if noColor {
		st = liveStyles{}
	}
	v := &liveView{w: w, rows: map[string]*liveRow{}, done: make(chan struct{}), stopped: make(chan struct{}), styles: st, start: time.Now()}
	v.size = func() (int, int) {
		w, h, err := term.GetSize(int(v.w.Fd()))
		if err != nil {
			return 0, 0
		}
		return w, h
	}
	go v.loop()
	return v
}

func (v *liveView) Event(ev fleet.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.dirty = true
	row := func(h string) *liveRow {
		r := v.rows[h]
		if r == nil {
			r = &liveRow{state: "waiting", started: time.Now()}
			v.rows[h] = r
			v.hosts = append(v.hosts, h)
		}
		return r
	}
	switch ev.Type {
	case fleet.EventRunStart:
		v.dryRun = ev.DryRun
		for _, h := range ev.Hosts {
			row(h)
		}
		v.batchOf, v.batches = map[string]int{}, len(ev.Batches)
		for i, b := range ev.Batches {
			for _, h := range b {
				v.batchOf[h] = i + 1
			}
		}
	case fleet.EventBatchStart:
		v.batch = ev.Batch
	case fleet.EventPhase:
		r := row(ev.Host)
		r.phase = ev.Phase
		switch ev.State {
		case "started":
			r.state, r.detail, r.ended = "running", ev.Message, time.Time{}
			if ev.Phase == fleet.PhaseCopy || ev.Phase == fleet.PhaseRollback {
				r.started = time.Now()
			}
		case "failed":
			r.state, r.detail, r.bad = "failed", ev.Error, true
		case "done":
			r.state = "done"
			switch {
			case ev.Phase == fleet.PhaseCopy && v.dryRun:
				r.state, r.detail = "planned", wouldCopy(ev)
			case ev.Phase == fleet.PhaseCopy:
				r.detail = fmt.Sprintf("%d paths, %s", ev.CopyPaths, Bytes(ev.Total))
			}
			if b := v.batchOf[ev.Host]; (ev.Phase == fleet.PhaseBuild || ev.Phase == fleet.PhaseLock) && b > v.batch && v.batches > 1 {
				// Built (or locked), its batch not yet started: it waits,
				// and the timer stops until its copy starts.
				r.state, r.detail, r.ended = "waiting", fmt.Sprintf("waiting for batch %d of %d", b, v.batches), time.Now()
			}
		}
	case fleet.EventProgress:
		r := row(ev.Host)
		r.sent, r.tot = ev.Sent, ev.Total
		r.rateSample = append(r.rateSample, sample{time.Now(), ev.Sent})
		if len(r.rateSample) > 20 {
			r.rateSample = r.rateSample[1:]
		}
	case fleet.EventLog:
		if ev.Host == "" {
			v.notes = append(v.notes, ev.Message)
			break
		}
		row(ev.Host).detail = ev.Message
	case fleet.EventWarning:
		if ev.Host == "" {
			v.notes = append(v.notes, "warning: "+ev.Message)
			break
		}
		row(ev.Host).detail = "warning: " + ev.Message
	case fleet.EventPlan:
		r := row(ev.Host)
		r.state, r.good = "planned", true
		r.detail = fmt.Sprintf("copy %d paths (%s); start %d, restart %d, stop %d units; %d files", ev.CopyPaths, Bytes(ev.Total), len(ev.Start), len(ev.Restart), len(ev.Stop), len(ev.Files))
		if len(ev.Repair) > 0 {
			r.detail += fmt.Sprintf("; repair %d drifted", len(ev.Repair))
		}
	case fleet.EventResult:
		r := row(ev.Host)
		r.state, r.ended = string(ev.Result), time.Now()
		r.good = ev.Result == fleet.ResultOK || ev.Result == fleet.ResultUnchanged || ev.Result == fleet.ResultPlanned
		r.bad = !r.good && ev.Result != fleet.ResultSkipped
		switch {
		case ev.Error != "":
			r.detail = ev.Error
		case ev.Generation != 0:
			r.detail = fmt.Sprintf("generation %d", ev.Generation)
		default:
			r.detail = ev.Message
		}
		for _, l := range ev.LogTail {
			v.notes = append(v.notes, ev.Host+" | "+l)
		}
	case fleet.EventRollback:
		v.notes = append(v.notes, "rolling back "+strings.Join(ev.Hosts, ", ")+": "+ev.Message)
	case fleet.EventHalt:
		v.notes = append(v.notes, "stopping: "+ev.Message)
	case fleet.EventCachePush:
		if ev.State != "started" {
			v.notes = append(v.notes, cacheLine(ev))
		}
	case fleet.EventPublish:
		v.notes = append(v.notes, publishLine(ev))
	}
}

// publishLine describes a channel.publish event.
func publishLine(ev fleet.Event) string {
	switch ev.State {
	case "started":
		return ev.Message
	case "done":
		line := fmt.Sprintf("channel %s: serial %d published", ev.Channel, ev.Serial)
		if ev.Message != "" {
			line += "; " + ev.Message
		}
		return line
	}
	return fmt.Sprintf("channel %s: serial %d: publishing failed", ev.Channel, ev.Serial)
}

func (v *liveView) loop() {
	defer close(v.stopped)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			v.draw(false)
		case <-v.done:
			v.draw(true)
			return
		}
	}
}

// Close draws the final table and stops redrawing; it may be called more
// than once.
func (v *liveView) Close() {
	v.once.Do(func() {
		close(v.done)
		<-v.stopped
	})
}

// symbols mark each state and result of the live view's rows.
var symbols = map[string]string{"waiting": "·", "running": "▶", "done": "▶", "ok": "✓", "unchanged": "=", "planned": "?",
	"rolled-back": "↺", "failed": "✗", "unreachable": "✗", "locked": "✗", "command-failed": "✗", "refused": "✗",
	"drifted": "≠", "skipped": "-"}

// draw redraws the table (or the batches' summary) when an event came
// since the last draw, a row's timer runs, or final says so.
func (v *liveView) draw(final bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	width, height := v.size()
	if width <= 20 {
		width = 80
	}
	compact := height > 0 && 1+len(v.hosts)+len(v.notes) > height-1
	if !final && !v.dirty && (compact || !v.timing()) {
		return
	}
	v.dirty = false
	var lines []string
	if compact {
		lines = v.summary(width, max(height-1, 2))
	} else {
		lines = v.table(width)
	}
	var b strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", v.drawn)
	}
	for _, l := range lines {
		b.WriteString("\x1b[2K" + l + "\n")
	}
	if len(lines) < v.drawn {
		// A shorter drawing than the last (the table became a summary):
		// clear what is left below it.
		b.WriteString("\x1b[J")
	}
	v.drawn = len(lines)
	io.WriteString(v.w, b.String())
}

// timing reports whether a row's timer is running (its elapsed time
// changes without an event).
func (v *liveView) timing() bool {
	for _, r := range v.rows {
		if r.state != "waiting" && r.ended.IsZero() {
			return true
		}
	}
	return false
}

// summaryOrder is the order of the states in a batch's summary line.
var summaryOrder = []string{"ok", "unchanged", "planned", "running", "done", "waiting", "rolled-back", "failed",
	"unreachable", "locked", "command-failed", "refused", "drifted", "skipped"}

// summary is the compact drawing, at most height lines: one line per batch
// (its hosts by state, running ones by phase), then the hosts that failed,
// then the last notes.
func (v *liveView) summary(width, height int) []string {
	n := max(v.batches, 1)
	type tally struct {
		hosts  int
		states map[string]int
		phases map[fleet.Phase]int
	}
	batches := make([]tally, n)
	for i := range batches {
		batches[i] = tally{states: map[string]int{}, phases: map[fleet.Phase]int{}}
	}
	var bad []string
	for _, h := range v.hosts {
		r := v.rows[h]
		b := max(v.batchOf[h], 1) - 1
		if b >= n {
			b = n - 1
		}
		t := &batches[b]
		t.hosts++
		t.states[r.state]++
		if r.state == "running" || r.state == "done" {
			t.phases[r.phase]++
		}
		if r.bad {
			bad = append(bad, v.styles.bad.Render(clip(fmt.Sprintf("%s  %s %s  %s", h, symbols[r.state], r.state, r.detail), width)))
		}
	}
	lines := []string{v.styles.bold.Render(clip(fmt.Sprintf("%d hosts in %d batches, %s", len(v.hosts), n, time.Since(v.start).Round(time.Second)), width))}
	for i, t := range batches {
		var parts []string
		for _, st := range summaryOrder {
			c := t.states[st]
			if c == 0 {
				continue
			}
			part := fmt.Sprintf("%d %s %s", c, symbols[st], st)
			if st == "running" || st == "done" {
				var ph []string
				for _, p := range []fleet.Phase{fleet.PhaseLock, fleet.PhaseBuild, fleet.PhaseVerify, fleet.PhaseCopy, fleet.PhaseActivate, fleet.PhaseConfirm, fleet.PhaseReboot, fleet.PhaseRollback} {
					if t.phases[p] > 0 {
						ph = append(ph, fmt.Sprintf("%s %d", p, t.phases[p]))
					}
				}
				if len(ph) > 0 && st == "running" {
					part += " (" + strings.Join(ph, ", ") + ")"
				}
			}
			parts = append(parts, part)
		}
		mark := " "
		if i+1 == v.batch {
			mark = "▶"
		}
		lines = append(lines, clip(fmt.Sprintf("%s batch %d/%d  %d hosts: %s", mark, i+1, n, t.hosts, strings.Join(parts, ", ")), width))
	}
	lines = append(lines, bad...)
	notes := v.notes
	if room := height - len(lines); room < len(notes) {
		notes = notes[len(notes)-max(room, 0):]
	}
	for _, note := range notes {
		lines = append(lines, clip(note, width))
	}
	if len(lines) > height {
		more := len(lines) - height + 1
		lines = append(lines[:height-1], fmt.Sprintf("... and %d more lines", more))
	}
	return lines
}

// clip cuts s to the terminal's width.
func clip(s string, width int) string {
	if len(s) > width-1 {
		return s[:width-1]
	}
	return s
}

// table is the full drawing: a row per host, then the notes.
func (v *liveView) table(width int) []string {
	hostW := 4
	for _, h := range v.hosts {
		hostW = max(hostW, len(h))
	}
	lines := []string{v.styles.bold.Render(fmt.Sprintf("%-*s  %-8s  %-13s  %s", hostW, "HOST", "PHASE", "STATUS", "DETAIL"))}
	hosts := slices.Clone(v.hosts)
	for _, h := range hosts {
		r := v.rows[h]
		status := symbols[r.state] + " " + r.state
		st := lipgloss.NewStyle()
		switch {
		case r.bad:
			st = v.styles.bad
		case r.good:
			st = v.styles.good
		case r.state == "waiting" || r.state == "skipped":
			st = v.styles.dim
		}
		detail := r.detail
		if r.phase == fleet.PhaseCopy && r.state == "running" && r.tot > 0 {
			detail = progressBar(r.sent, r.tot, 20) + " " + Bytes(r.sent) + " / " + Bytes(r.tot) + " " + rate(r.rateSample)
		}
		end := r.ended
		if end.IsZero() {
			end = time.Now()
		}
		elapsed := end.Sub(r.started).Round(100 * time.Millisecond).String()
		if r.state == "waiting" {
			elapsed = ""
		}
		line := fmt.Sprintf("%-*s  %-8s  %-13s  %s  %s", hostW, h, r.phase, status, detail, v.styles.dim.Render(elapsed))
		if len(line) > width-1 {
			line = line[:width-1]
		}
		lines = append(lines, st.Render(line))
	}
	for _, n := range v.notes {
		lines = append(lines, clip(n, width))
	}
	return lines
}

func progressBar(n, total int64, width int) string {
	filled := int(float64(width) * float64(n) / float64(total))
	filled = min(max(filled, 0), width)
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

func rate(s []sample) string {
	if len(s) < 2 {
		return ""
	}
	dt := s[len(s)-1].t.Sub(s[0].t).Seconds()
	if dt <= 0 {
		return ""
	}
	return Bytes(int64(float64(s[len(s)-1].n-s[0].n)/dt)) + "/s"
}

// Bytes renders a byte count for people: 512 B, 20.4 MiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// PlanMarkdown is a dry run's plan as GitHub-flavoured markdown: a table
// with a row per host, in the order of hosts, then per host the files that
// change and the drift the deploy repairs.
func PlanMarkdown(hosts []*builder.Host, rep *fleet.Report) string {
	var b strings.Builder
	b.WriteString("## deploy --dry-run\n\n")
	b.WriteString("| host | result | paths to copy | bytes | start | restart | reload | stop | files | drift repaired |\n")
	b.WriteString("|---|---|--:|--:|---|---|---|---|--:|--:|\n")
	type detail struct {
		host string
		plan *fleet.Plan
	}
	var details []detail
	for _, h := range hosts {
		var hr *fleet.HostReport
		if rep != nil {
			hr = rep.Hosts[h.Name]
		}
		if hr == nil {
			fmt.Fprintf(&b, "| %s | not reached | | | | | | | | |\n", mdCell(h.Name))
			continue
		}
		result := string(hr.Result)
		if hr.Err != nil {
			result += ": " + hr.Err.Error()
		}
		var missing, bytes, files string
		var plan *fleet.Plan
		if hr.Push != nil {
			missing, bytes = fmt.Sprint(hr.Push.Missing), Bytes(hr.Push.Bytes)
			plan = hr.Push.Plan
		}
		var start, restart, reload, stop, repair string
		if plan != nil {
			start, restart, reload, stop = units(plan.Start), units(plan.Restart), units(plan.Reload), units(plan.Stop)
			files, repair = fmt.Sprint(len(plan.Files)), fmt.Sprint(len(plan.Repair))
			if len(plan.Files)+len(plan.Repair) > 0 || len(plan.Start)+len(plan.Restart)+len(plan.Reload)+len(plan.Stop) > 0 {
				details = append(details, detail{h.Name, plan})
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", mdCell(h.Name), mdCell(result),
			missing, bytes, start, restart, reload, stop, files, repair)
	}
	for _, d := range details {
		summary := fmt.Sprintf("%d files change", len(d.plan.Files))
		if len(d.plan.Repair) > 0 {
			summary += fmt.Sprintf(", %d drifted things are repaired", len(d.plan.Repair))
		}
		fmt.Fprintf(&b, "\n<details><summary>%s: %s</summary>\n\n", mdCell(d.host), summary)
		for _, f := range d.plan.Files {
			fmt.Fprintf(&b, "- `%s`\n", strings.ReplaceAll(f, "`", "'"))
		}
		if len(d.plan.Repair) > 0 {
			b.WriteString("\nDrift the deploy repairs:\n\n")
			for _, r := range d.plan.Repair {
				fmt.Fprintf(&b, "- %s\n", mdCode(r))
			}
		}
		b.WriteString("\n</details>\n")
	}
	return b.String()
}

// DriftMarkdown is the drift a deploy found (and set out to repair) on
// its hosts, in the order of hosts, as GitHub-flavoured markdown; "" when
// no host drifted.
func DriftMarkdown(hosts []*builder.Host, rep *fleet.Report) string {
	if rep == nil {
		return ""
	}
	var b strings.Builder
	for _, h := range hosts {
		hr := rep.Hosts[h.Name]
		if hr == nil || hr.Drift == nil || len(hr.Drift.Items) == 0 {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("## deploy: drift\n\n")
		}
		fmt.Fprintf(&b, "%s drifted from generation %d (result: %s):\n\n", mdCode(h.Name), hr.Drift.Generation, hr.Result)
		for _, it := range hr.Drift.Items {
			fmt.Fprintf(&b, "- %s\n", mdCode(it.String()))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// mdCode is s as one line of markdown inline code.
func mdCode(s string) string {
	return "`" + strings.NewReplacer("`", "'", "\n", " ", "\r", " ").Replace(s) + "`"
}

func units(u []string) string {
	var out []string
	for _, x := range u {
		out = append(out, mdCode(x))
	}
	return mdCell(strings.Join(out, " "))
}

// mdCell makes s safe inside a markdown table cell.
func mdCell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ", "\r", " ").Replace(s)
}
