package promtest

import "testing"

// TestStart starts the real server scraping itself: the set-up works on
// this machine, and a query of its own metric answers.
func TestStart(t *testing.T) {
	s := Start(t, Options{})
	if got := s.Query(t, "1 + 1"); got[""] != "2" {
		t.Fatalf("Query(1 + 1) = %v, want 2", got)
	}
}
