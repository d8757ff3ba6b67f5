package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// A run that changes hosts posts to each notify block, in order: start,
// a host's rollback, done (json: the lifecycle events so far; text: one
// line); a webhook that fails is a warning before run.done, and the run's
// result is its own; a dry run posts nothing.
func TestSessionNotify(t *testing.T) {
	var mu sync.Mutex
	var bodies []NotifyBody
	var texts []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case "/json":
			var b NotifyBody
			if err := json.Unmarshal(data, &b); err != nil {
				t.Errorf("json body %q: %v", data, err)
			}
			bodies = append(bodies, b)
		case "/text":
			var b map[string]string
			json.Unmarshal(data, &b)
			texts = append(texts, b["text"])
		default:
			http.Error(w, "down", http.StatusBadGateway)
		}
	}))
	defer srv.Close()
	dir := testFleet(t, []string{"a", "b"}, "  batch_size = 1")
	notify := `
notify "ops" {
  url = "` + srv.URL + `/json"
}
notify "chat" {
  url    = "` + srv.URL + `/text"
  format = "text"
  on     = ["rollback", "done"]
}
notify "down" {
  url = "` + srv.URL + `/down"
  on  = ["done"]
}
`
	f, err := os.OpenFile(filepath.Join(dir, "fleet.hcl"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(notify)
	f.Close()

	ops := &scriptedOps{actFail: map[string]error{"a": &HostFailure{Result: ResultRolledBack, Err: errors.New("health check \"http\" failed")}}}
	log := &eventLog{}
	s := openSession(t, dir, "all", ops, log)
	rep, _ := s.Deploy(context.Background(), DeployOptions{})
	if rep.Hosts["a"].Result != ResultRolledBack {
		t.Fatalf("a: %+v", rep.Hosts["a"])
	}
	mu.Lock()
	var got []string
	for _, b := range bodies {
		got = append(got, b.Event)
		if b.Notify != "ops" || b.Command != "deploy" || b.V != 1 || len(b.Events) == 0 {
			t.Errorf("body %+v", b)
		}
	}
	if want := []string{"start", "rollback", "done"}; !slices.Equal(got, want) {
		t.Errorf("json notifications %v, want %v", got, want)
	}
	if n := len(bodies); n > 0 {
		last := bodies[n-1].Events[len(bodies[n-1].Events)-1]
		if last.Type != EventRunDone || len(last.Summary[ResultRolledBack]) != 1 {
			t.Errorf("the done notification's last event %+v, want run.done with a rolled back", last)
		}
	}
	if len(texts) != 2 || !strings.Contains(texts[0], "a rolled back: ") || !strings.Contains(texts[0], `health check "http" failed`) ||
		!strings.Contains(texts[1], "done: ") || !strings.Contains(texts[1], "1 rolled-back (a)") {
		t.Errorf("text notifications %q", texts)
	}
	mu.Unlock()
	var warned, doneAfter bool
	log.mu.Lock()
	events := slices.Clone(log.events)
	log.mu.Unlock()
	for _, e := range events {
		if e.Type == EventWarning && strings.Contains(e.Message, `notify "down": done: POST `) && strings.Contains(e.Message, "502") {
			warned = true
		}
		if e.Type == EventRunDone && warned {
			doneAfter = true
		}
	}
	if !warned || !doneAfter {
		t.Errorf("no warning for the webhook that failed before run.done (warned %v)", warned)
	}

	// A dry run changes nothing: nobody is told.
	mu.Lock()
	bodies, texts = nil, nil
	mu.Unlock()
	s2 := openSession(t, dir, "all", &scriptedOps{}, &eventLog{})
	s2.Deploy(context.Background(), DeployOptions{DryRun: true})
	mu.Lock()
	defer mu.Unlock()
	if len(bodies)+len(texts) != 0 {
		t.Errorf("a dry run posted %d notifications", len(bodies)+len(texts))
	}
}
