package agentapi

import (
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no time zone data:", err)
	}
	w, err := ParseWindow("Mon-Fri 22:00-06:00 Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	at := func(day, hh, mm int) time.Time { return time.Date(2026, 12, day, hh, mm, 0, 0, berlin) } // 7 Dec 2026 is a Monday
	for _, tc := range []struct {
		t    time.Time
		open bool
	}{
		{at(7, 21, 59), false}, {at(7, 22, 0), true}, {at(8, 5, 59), true}, {at(8, 6, 0), false},
		{at(11, 23, 0), true},  // Friday night
		{at(12, 3, 0), true},   // Saturday morning: Friday's window
		{at(12, 23, 0), false}, // Saturday night
		{at(14, 3, 0), false},  // Monday morning: Sunday had none
		{at(7, 22, 30).UTC(), true},
	} {
		if got := w.Contains(tc.t); got != tc.open {
			t.Errorf("Contains(%v) = %v, want %v", tc.t, got, tc.open)
		}
	}
	if got, want := w.NextOpen(at(12, 10, 0)), at(14, 22, 0); !got.Equal(want) {
		t.Errorf("NextOpen(Saturday) = %v, want Monday 22:00 %v", got, want)
	}
	if got := w.NextOpen(at(8, 1, 0)); !got.Equal(at(8, 1, 0)) {
		t.Errorf("NextOpen while open = %v", got)
	}
	w2, err := ParseWindow("Sat,Sun 09:00-17:00")
	if err != nil || w2.Loc != time.UTC || !w2.Contains(time.Date(2026, 12, 13, 9, 0, 0, 0, time.UTC)) || w2.Contains(time.Date(2026, 12, 14, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("Sat,Sun 09:00-17:00: %+v, %v", w2, err)
	}
	for _, bad := range []string{"", "Mon-Fri", "22:00", "Mon-Fri 22-06", "Mo 22:00-06:00", "22:00-06:00 Mars/Base", "22:00-25:00", "Mon 22:00-06:00 UTC extra"} {
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("ParseWindow(%q) accepted", bad)
		}
	}
}
