package fleet

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
)

// Notifications: a fleet's notify blocks are told of the runs that change
// hosts (deploy, rollback, reboot, publish; not dry runs, not --mode build
// or dry-activate) when one starts ("start"), halts before changing any
// host ("halt"), rolls a host back ("rollback") and ends ("done"). Each is
// a POST, in the order of the run, from a queue of its own: a webhook that
// is slow or down delays nothing but the end of the run, by at most
// agentapi.NotifyTimeout per post, and a failed post is a host.warning (host "")
// before run.done, never a failed run.

// notifyCommands are the commands whose runs are notified.
var notifyCommands = []string{"deploy", "rollback", "reboot", "publish"}

// NotifyBody is the JSON a notify block with format "json" receives.
type NotifyBody struct {
	V int `json:"v"`
	// Notify is the block's name; Event one of start, halt, rollback,
	// done.
	Notify  string   `json:"notify"`
	Event   string   `json:"event"`
	Command string   `json:"command"`
	Targets []string `json:"targets"`
	// Text is the one-line form (what format "text" sends alone).
	Text string `json:"text"`
	// Events are the run's lifecycle events so far (run.start,
	// batch.start, host.result, run.halt, run.rollback, run.done), as
	// --json prints them (docs/events.md).
	Events []Event `json:"events"`
}

// notifier posts a run's notifications.
type notifier struct {
	blocks  []*builder.Notify
	command string
	targets []string
	client  *http.Client

	mu     sync.Mutex
	active bool
	events []Event
	queue  chan notifyPost
	done   chan struct{}
	errs   []string
}

type notifyPost struct {
	block *builder.Notify
	body  []byte
	event string
}

func newNotifier(blocks []*builder.Notify, command string, targets []string) *notifier {
	if len(blocks) == 0 || !slices.Contains(notifyCommands, command) {
		return nil
	}
	return &notifier{blocks: blocks, command: command, targets: targets, client: &http.Client{Timeout: agentapi.NotifyTimeout}}
}

// observe looks at each event of the run before it is emitted and queues
// the notifications it calls for.
func (n *notifier) observe(ev Event) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch ev.Type {
	case EventRunStart:
		n.active = !ev.DryRun && ev.Mode != ModeBuild && ev.Mode != ModeDryActivate
		if !n.active {
			return
		}
		n.events = nil
		n.queue = make(chan notifyPost, 256)
		n.done = make(chan struct{})
		go n.send()
	case EventBatchStart, EventResult, EventHalt, EventRollback, EventRunDone:
	default:
		return
	}
	if !n.active {
		return
	}
	n.events = append(n.events, ev)
	var what string
	switch {
	case ev.Type == EventRunStart:
		what = "start"
	case ev.Type == EventHalt:
		what = "halt"
	case ev.Type == EventRollback, ev.Type == EventResult && ev.Result == ResultRolledBack:
		what = "rollback"
	case ev.Type == EventRunDone:
		what = "done"
	default:
		return
	}
	text := n.text(what, ev)
	for _, b := range n.blocks {
		if !slices.Contains(b.On, what) {
			continue
		}
		body := agentapi.NotifyPayload(b.Format, text, NotifyBody{V: 1, Notify: b.Name, Event: what, Command: n.command, Targets: n.targets,
			Text: text, Events: n.events}) // encoded now, under n.mu
		select {
		case n.queue <- notifyPost{block: b, body: body, event: what}:
		default:
			n.errs = append(n.errs, fmt.Sprintf("notify %q: %s: dropped, %d notifications already waiting", b.Name, what, cap(n.queue)))
		}
	}
}

// text is the one-line form of a notification.
func (n *notifier) text(what string, ev Event) string {
	head := "deploy " + strings.Join(n.targets, " ")
	if n.command != "deploy" {
		head = "deploy " + n.command + " " + strings.Join(n.targets, " ")
	}
	switch what {
	case "start":
		return fmt.Sprintf("%s: started on %d hosts", head, len(ev.Hosts))
	case "halt":
		return fmt.Sprintf("%s: halted: %s", head, ev.Message)
	case "rollback":
		if ev.Host != "" {
			msg := ev.Error
			if msg == "" {
				msg = ev.Message
			}
			msg = strings.TrimPrefix(msg, ev.Host+": ")
			msg = strings.TrimPrefix(msg, "rolled back: ")
			return fmt.Sprintf("%s: %s rolled back: %s", head, ev.Host, msg)
		}
		return fmt.Sprintf("%s: rolling back: %s", head, ev.Message)
	}
	results := make([]string, 0, len(ev.Summary))
	for r := range ev.Summary {
		results = append(results, string(r))
	}
	sort.Strings(results)
	var parts []string
	for _, r := range results {
		parts = append(parts, fmt.Sprintf("%d %s (%s)", len(ev.Summary[Result(r)]), r, strings.Join(ev.Summary[Result(r)], ", ")))
	}
	return fmt.Sprintf("%s: done: %s", head, strings.Join(parts, "; "))
}

// send posts the queued notifications in order until the queue closes.
func (n *notifier) send() {
	defer close(n.done)
	for p := range n.queue {
		if err := n.post(p); err != nil {
			n.mu.Lock()
			n.errs = append(n.errs, fmt.Sprintf("notify %q: %s: %v", p.block.Name, p.event, err))
			n.mu.Unlock()
		}
	}
}

func (n *notifier) post(p notifyPost) error {
	return agentapi.PostNotify(context.Background(), n.client, p.block.URL, "deploy", p.body)
}

// finish waits until every queued notification is posted (or failed) and
// returns what failed. The run's done event must have been observed.
func (n *notifier) finish() []string {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	if !n.active {
		n.mu.Unlock()
		return nil
	}
	n.active = false
	close(n.queue)
	done := n.done
	n.mu.Unlock()
	<-done
	n.mu.Lock()
	defer n.mu.Unlock()
	errs := n.errs
	n.errs = nil
	return errs
}
