package cli

import (
	"strings"
	"testing"

	"github.com/declarative/deploy/fleet"
)

func TestParseEvents(t *testing.T) {
	out := `{"v":1,"event":"run.start","command":"deploy"}
{"v":1,"event":"host.result","host":"h1","result":"failed","error":"boom"}
{"v":1,"event":"host.result","host":"h1","result":"ok"}
{"v":1,"event":"host.result","host":"h2","result":"unchanged"}
`
	events, err := ParseEvents([]byte(out))
	if err != nil || len(events) != 4 {
		t.Fatalf("ParseEvents = %d events, %v; want 4", len(events), err)
	}
	res := Results(events)
	if res["h1"].Result != fleet.ResultOK || res["h2"].Result != fleet.ResultUnchanged || len(res) != 2 {
		t.Errorf("Results = %+v, want h1 ok (its last result) and h2 unchanged", res)
	}
	if f := (&Result{Events: events}).Failures(); f != "h1: failed in : boom\n" {
		t.Errorf("Failures = %q", f)
	}
	for _, bad := range []struct{ line, quoted string }{
		{"deploy: not json\n", "deploy: not json"},
		{`{"v":2,"event":"run.start"}` + "\n", "schema version 2"},
	} {
		if _, err := ParseEvents([]byte(bad.line)); err == nil || !strings.Contains(err.Error(), bad.quoted) {
			t.Errorf("ParseEvents(%q) = %v, want an error with %q", bad.line, err, bad.quoted)
		}
	}
}
