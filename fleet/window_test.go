package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/builder"
)

// --wait-window: a closed window is waited for until it opens (the clock is
// the test's), and the run goes on then; an interrupt ends the wait; without
// the flag the run is refused with when it opens.
func TestAwaitWindow(t *testing.T) {
	w, err := builder.ParseWindow("Mon-Fri 22:00-06:00 Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	berlin := w.Loc
	// Saturday noon in Berlin: closed until Monday 22:00.
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, berlin)
	wantWait := time.Date(2026, 12, 7, 22, 0, 0, 0, berlin).Sub(now)
	newSession := func(wait bool, fires bool) (*Session, *[]string, *[]time.Duration) {
		var logs []string
		var waits []time.Duration
		s := &Session{Deployment: &builder.Deployment{Name: "prod", Window: w}, WaitWindow: wait,
			Emit: func(e Event) { logs = append(logs, e.Message) },
			now:  func() time.Time { return now },
			after: func(d time.Duration) <-chan time.Time {
				waits = append(waits, d)
				c := make(chan time.Time, 1)
				if fires {
					c <- now.Add(d)
				}
				return c
			}}
		return s, &logs, &waits
	}

	s, logs, waits := newSession(true, true)
	if err := s.awaitWindow(context.Background()); err != nil {
		t.Fatalf("wait for the window: %v", err)
	}
	if len(*waits) != 1 || (*waits)[0] != wantWait {
		t.Errorf("waited %v, want once for %v (until Monday 22:00 in Berlin)", *waits, wantWait)
	}
	got := strings.Join(*logs, "\n")
	for _, want := range []string{`waiting for deployment "prod"'s window (Mon-Fri 22:00-06:00 Europe/Berlin): it opens Mon 2026-12-07 22:00 CET`, `window (Mon-Fri 22:00-06:00 Europe/Berlin) is open: going on`} {
		if !strings.Contains(got, want) {
			t.Errorf("events %q lack %q", got, want)
		}
	}

	s, _, _ = newSession(true, false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.awaitWindow(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted wait: %v, want context.Canceled", err)
	}

	s, _, waits = newSession(false, true)
	var we *WindowError
	if err := s.awaitWindow(context.Background()); !errors.As(err, &we) || !we.Next.Equal(now.Add(wantWait)) {
		t.Errorf("without --wait-window: %v, want a *WindowError naming Monday 22:00", err)
	}
	if len(*waits) != 0 {
		t.Errorf("without --wait-window it waited %v", *waits)
	}

	// Inside the window (Monday 23:30) nothing waits.
	now = time.Date(2026, 12, 7, 23, 30, 0, 0, berlin)
	s, _, waits = newSession(true, true)
	if err := s.awaitWindow(context.Background()); err != nil || len(*waits) != 0 {
		t.Errorf("inside the window: %v, waited %v", err, *waits)
	}
}
