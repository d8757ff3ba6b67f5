package pull

import (
	"context"
	"fmt"
	"slices"

	"github.com/declarative/deploy/agentapi"
)

// A pull host tells the fleet's notify blocks of its own outcome of each
// release: "start" when it begins activating, then "done", "rollback" or
// "halt". Posts are made in the poll that reaches the outcome, each bounded
// by agentapi.NotifyTimeout; one that fails is logged and never fails the poll (the
// status document is the record).

// HostNotifyBody is the JSON a notify block with format "json" receives
// from a pull host.
type HostNotifyBody struct {
	V       int                  `json:"v"`
	Notify  string               `json:"notify"`
	Event   string               `json:"event"`
	Host    string               `json:"host"`
	Channel string               `json:"channel"`
	Serial  int64                `json:"serial"`
	Text    string               `json:"text"`
	Status  *agentapi.PullStatus `json:"status"`
}

// notifyEvent is the notify event an outcome is, or "".
func notifyEvent(o agentapi.PullOutcome) string {
	switch o {
	case agentapi.PullActivating:
		return "start"
	case agentapi.PullDone:
		return "done"
	case agentapi.PullRolledBack:
		return "rollback"
	case agentapi.PullHalted:
		return "halt"
	}
	return ""
}

// notify posts st's outcome to every notify block that wants it.
func (a *Agent) notify(ctx context.Context, st *agentapi.PullStatus) {
	event := notifyEvent(st.Outcome)
	if event == "" {
		return
	}
	text := fmt.Sprintf("%s (channel %s, serial %d): %s", st.Host, st.Channel, st.Serial, event)
	if st.Message != "" {
		text += ": " + st.Message
	}
	if st.Check != "" {
		text += fmt.Sprintf(" (health check %q)", st.Check)
	}
	for _, n := range a.Config.Notify {
		if !slices.Contains(n.On, event) {
			continue
		}
		body := agentapi.NotifyPayload(n.Format, text, HostNotifyBody{V: 1, Notify: n.Name, Event: event, Host: st.Host, Channel: st.Channel, Serial: st.Serial, Text: text, Status: st})
		if err := agentapi.PostNotify(ctx, nil, n.URL, "deploy-agent", body); err != nil {
			a.logf("notify %q: %s: %v (the status document records it)", n.Name, event, err)
		}
	}
}
