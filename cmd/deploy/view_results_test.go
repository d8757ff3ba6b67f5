package main

import (
	"slices"
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
