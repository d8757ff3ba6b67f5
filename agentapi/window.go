package agentapi

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is a deployment's maintenance window: the days and the hours, in a
// time zone, when its hosts may change. "Mon-Fri 22:00-06:00 Europe/Berlin"
// opens at 22:00 on Monday to Friday and closes at 06:00 the next morning:
// a window that wraps midnight belongs to the day it opens on.
type Window struct {
	Spec       string
	Days       [7]bool // by time.Weekday
	Start, End int     // minutes after midnight; End <= Start wraps midnight
	Loc        *time.Location
}

var weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseWindow reads "[DAYS] HH:MM-HH:MM [ZONE]": DAYS a day ("Mon"), a
// range ("Mon-Fri", wrapping the week: "Fri-Mon") or a comma list of those
// ("Sat,Sun"), default every day; ZONE an IANA time zone, default UTC.
func ParseWindow(spec string) (*Window, error) {
	w := &Window{Spec: spec, Loc: time.UTC}
	fields := strings.Fields(spec)
	if len(fields) == 0 || len(fields) > 3 {
		return nil, fmt.Errorf("window %q: want \"[DAYS] HH:MM-HH:MM [TIME ZONE]\", like \"Mon-Fri 22:00-06:00 Europe/Berlin\"", spec)
	}
	i := 0
	if !strings.Contains(fields[0], ":") {
		if err := w.parseDays(fields[0]); err != nil {
			return nil, fmt.Errorf("window %q: %w", spec, err)
		}
		i = 1
	} else {
		for d := range w.Days {
			w.Days[d] = true
		}
	}
	if i >= len(fields) {
		return nil, fmt.Errorf("window %q: no hours (HH:MM-HH:MM)", spec)
	}
	from, to, ok := strings.Cut(fields[i], "-")
	start, err1 := clock(from)
	end, err2 := clock(to)
	if !ok || err1 != nil || err2 != nil {
		return nil, fmt.Errorf("window %q: hours %q: want HH:MM-HH:MM (24-hour clock)", spec, fields[i])
	}
	w.Start, w.End = start, end
	i++
	if i < len(fields) {
		loc, err := time.LoadLocation(fields[i])
		if err != nil || fields[i] == "Local" {
			return nil, fmt.Errorf("window %q: time zone %q: not an IANA time zone name like Europe/Berlin or UTC", spec, fields[i])
		}
		w.Loc = loc
		i++
	}
	if i != len(fields) {
		return nil, fmt.Errorf("window %q: %q after the time zone", spec, fields[i])
	}
	return w, nil
}

func clock(s string) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || hh > 24 || mm < 0 || mm > 59 || hh == 24 && mm != 0 {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return hh*60 + mm, nil
}

func (w *Window) parseDays(s string) error {
	day := func(d string) (int, error) {
		for i, n := range weekdays {
			if strings.EqualFold(d, n) {
				return i, nil
			}
		}
		return 0, fmt.Errorf("%q is not a day (Mon, Tue, ... Sun)", d)
	}
	for _, part := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(part, "-")
		from, err := day(a)
		if err != nil {
			return err
		}
		to := from
		if isRange {
			if to, err = day(b); err != nil {
				return err
			}
		}
		for d := from; ; d = (d + 1) % 7 {
			w.Days[d] = true
			if d == to {
				break
			}
		}
	}
	return nil
}

// Contains reports whether the window is open at t.
func (w *Window) Contains(t time.Time) bool {
	l := t.In(w.Loc)
	m := l.Hour()*60 + l.Minute()
	today, yesterday := int(l.Weekday()), (int(l.Weekday())+6)%7
	if w.Start < w.End {
		return w.Days[today] && m >= w.Start && m < w.End
	}
	// Wraps midnight (or is a whole day, Start == End).
	return w.Days[today] && m >= w.Start || w.Days[yesterday] && m < w.End
}

// NextOpen returns when the window next opens after t (t itself when it is
// open at t).
func (w *Window) NextOpen(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	l := t.In(w.Loc)
	for d := 0; d <= 7; d++ {
		open := time.Date(l.Year(), l.Month(), l.Day()+d, w.Start/60, w.Start%60, 0, 0, w.Loc)
		if w.Days[int(open.Weekday())] && open.After(t) {
			return open
		}
	}
	return t // no day: never reached, ParseWindow allows none
}
