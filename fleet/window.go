package fleet

import (
	"context"
	"fmt"
	"time"
)

// WindowError is a run refused because its deployment's maintenance window
// is closed: nothing was touched.
type WindowError struct {
	Deployment string
	Window     string
	Next       time.Time
}

func (e *WindowError) Error() string {
	return fmt.Sprintf("deployment %q may change hosts only in its window (%s): it is closed now; it next opens %s (in %s)",
		e.Deployment, e.Window, e.Next.Format("Mon 2006-01-02 15:04 MST"), time.Until(e.Next).Round(time.Minute))
}

// awaitWindow returns nil when the selected deployment has no window, the
// window is open, or the session ignores windows; else it waits for the
// window to open (WaitWindow) or returns a *WindowError.
func (s *Session) awaitWindow(ctx context.Context) error {
	d := s.Deployment
	if d == nil || d.Window == nil {
		return nil
	}
	clock, after := time.Now, time.After
	if s.now != nil {
		clock, after = s.now, s.after
	}
	now := clock()
	if d.Window.Contains(now) {
		return nil
	}
	next := d.Window.NextOpen(now)
	if s.IgnoreWindow {
		s.emit(Event{Type: EventLog, Message: fmt.Sprintf("deployment %q's window (%s) is closed; going on (--ignore-window)", d.Name, d.Window.Spec)})
		return nil
	}
	werr := &WindowError{Deployment: d.Name, Window: d.Window.Spec, Next: next.In(d.Window.Loc)}
	if !s.WaitWindow {
		return werr
	}
	s.emit(Event{Type: EventLog, Message: fmt.Sprintf("waiting for deployment %q's window (%s): it opens %s", d.Name, d.Window.Spec, werr.Next.Format("Mon 2006-01-02 15:04 MST"))})
	select {
	case <-ctx.Done():
		return fmt.Errorf("interrupted while waiting for deployment %q's window: no host was contacted: %w", d.Name, ctx.Err())
	case <-after(next.Sub(now)):
		s.emit(Event{Type: EventLog, Message: fmt.Sprintf("deployment %q's window (%s) is open: going on", d.Name, d.Window.Spec)})
		return nil
	}
}
