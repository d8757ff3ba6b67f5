package pull

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/pull/channel"
)

// A release above max_document_size is refused unread and reported once
// (a second poll does not write the status again); after a release that
// fits, the host goes on as usual.
func TestPollRefusesOversizedRelease(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web1")
	a.Config.MaxDocumentSize = 4 << 10
	sys := f.system("web1", "v1")
	f.publish(&agentapi.Release{Host: "web1", Serial: 1, System: sys, Message: strings.Repeat("long ", 2000)})
	f.poll(a, "refused")
	st := f.status("web1")
	if st.Refused == nil || !strings.Contains(st.Refused.Reason, "max_document_size") || st.Serial != 0 {
		t.Fatalf("status %+v, want a refusal naming max_document_size and no serial", st)
	}
	before, _ := os.ReadFile(filepath.Join(f.chanDir, channel.StatusKey("web1")))
	f.poll(a, "refused")
	if after, _ := os.ReadFile(filepath.Join(f.chanDir, channel.StatusKey("web1"))); string(after) != string(before) {
		t.Errorf("the same refusal was written again:\n%s\nwas\n%s", after, before)
	}
	if len(f.activated) != 0 {
		t.Fatalf("activated %v", f.activated)
	}
	f.publish(&agentapi.Release{Host: "web1", Serial: 2, System: sys})
	f.poll(a, "done")
}

// An earlier wave's status above max_document_size counts as no report:
// the later wave waits.
func TestPollOversizedStatusIsNoReport(t *testing.T) {
	f := newFixture(t)
	a := f.agent("web2")
	a.Config.MaxDocumentSize = 4 << 10
	f.publish(&agentapi.Release{Host: "web2", Serial: 1, System: f.system("web2", "v1"), Wave: 2, Waves: 2, After: []string{"web1"},
		Deadline: time.Now().Add(time.Hour)})
	big := `{"v":1,"host":"web1","channel":"prod","serial":1,"outcome":"done","message":"` + strings.Repeat("x", 8<<10) + `"}`
	f.write(channel.StatusKey("web1"), []byte(big))
	f.poll(a, "waiting")
	if st := f.status("web2"); !strings.Contains(st.Message, "waiting for web1") {
		t.Fatalf("status %+v", st)
	}
}
