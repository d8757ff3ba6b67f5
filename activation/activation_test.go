package activation

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
)

func TestParseGenLink(t *testing.T) {
	tests := []struct {
		name string
		n    int
		ok   bool
	}{
		{"system-1-link", 1, true},
		{"system-42-link", 42, true},
		{"system-0-link", 0, false},
		{"system-01-link", 0, false},
		{"system-1.json", 0, false},
		{"system", 0, false},
		{"system--1-link", 0, false},
	}
	for _, tt := range tests {
		n, ok := parseGenLink(tt.name)
		if n != tt.n || ok != tt.ok {
			t.Errorf("parseGenLink(%q) = %d, %v, want %d, %v", tt.name, n, ok, tt.n, tt.ok)
		}
	}
}

func TestScriptOrder(t *testing.T) {
	s := func(name string, after ...string) manifest.ActivationScript {
		return manifest.ActivationScript{Name: name, After: after}
	}
	tests := []struct {
		name    string
		scripts []manifest.ActivationScript
		want    string
		err     bool
	}{
		{"by name", []manifest.ActivationScript{s("b"), s("a")}, "[a b]", false},
		{"after first", []manifest.ActivationScript{s("a", "c"), s("b"), s("c")}, "[c a b]", false},
		{"cycle", []manifest.ActivationScript{s("a", "b"), s("b", "a")}, "", true},
		{"unknown", []manifest.ActivationScript{s("a", "x")}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := scriptOrder(tt.scripts)
			if (err != nil) != tt.err {
				t.Fatalf("scriptOrder error = %v, want error %v", err, tt.err)
			}
			var names []string
			for _, x := range got {
				names = append(names, x.Name)
			}
			if !tt.err && fmt.Sprint(names) != tt.want {
				t.Errorf("scriptOrder = %v, want %s", names, tt.want)
			}
		})
	}
}

// A machine between two manifests manages the union; a unit defined
// differently by both restarts whatever comes next.
func TestMergeManifests(t *testing.T) {
	h := func(c string) string { return fmt.Sprintf("%064s", c) }
	a := &manifest.Manifest{Files: []manifest.File{{Path: "/a"}, {Path: "/both"}},
		Units: []manifest.Unit{{Name: "x.service", RestartHash: h("1")}, {Name: "same.service", RestartHash: h("s")}}}
	b := &manifest.Manifest{Files: []manifest.File{{Path: "/b"}, {Path: "/both"}},
		Units: []manifest.Unit{{Name: "x.service", RestartHash: h("2")}, {Name: "same.service", RestartHash: h("s")}}}
	m := mergeManifests(a, b)
	if len(m.Files) != 3 {
		t.Errorf("merged files = %v, want /a, /b, /both", m.Files)
	}
	d := manifest.Diff(m, a).Units
	if fmt.Sprint(d.Restart) != "[x.service]" {
		t.Errorf("Diff(merged, a).Restart = %v, want [x.service]", d.Restart)
	}

	// b's application (interrupted) may have stopped a unit only a has,
	// and deleted a's firewall table: going back to a restarts the unit
	// and reloads the firewall.
	a.Units = append(a.Units, manifest.Unit{Name: "only-a.service", RestartHash: h("o")})
	a.Firewall = &manifest.Firewall{Ruleset: "/store/a-rules", Table: "inet deploy"}
	m = mergeManifests(a, b)
	back := manifest.Diff(m, a)
	if fmt.Sprint(back.Units.Restart) != "[only-a.service x.service]" {
		t.Errorf("Diff(merged, a).Restart = %v, want [only-a.service x.service]", back.Units.Restart)
	}
	if m.Firewall == nil || *m.Firewall == *a.Firewall || m.Firewall.Table != "inet deploy" {
		t.Errorf("merged firewall = %+v, want one unlike a's, of its table", m.Firewall)
	}
}

// Reject binds a rejection as Confirm binds a confirmation, and the wait
// returns it at once with the check and the reason.
func TestRejectBinding(t *testing.T) {
	l := Layout{StateDir: t.TempDir(), RunDir: t.TempDir() + "/run"}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	tok := []byte("a-token-of-enough-length")
	st := &State{Activation: &ActivationState{Activation: agentapi.Activation{ID: "7", Generation: 3, Phase: PhaseAwaiting}, TokenHash: HashToken(tok)}}
	if err := l.writeState(st); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reject(3, []byte("another-token-entirely"), "errors", "bad"); !errors.Is(err, ErrBadToken) {
		t.Errorf("Reject(wrong token) = %v, want ErrBadToken", err)
	}
	if _, err := l.Reject(2, tok, "errors", "bad"); !errors.Is(err, ErrNotPending) {
		t.Errorf("Reject(other generation) = %v, want ErrNotPending", err)
	}
	reason := `metric gate "errors": query "q" returned 0.2, above max 0.05`
	if _, err := l.Reject(3, tok, "errors", reason+"\nsecond line"); err != nil {
		t.Fatalf("Reject = %v", err)
	}
	// A deadline far away: the rejection ends the wait, not the deadline.
	ok, rej := l.waitConfirmed(t.Context(), "7", 3, HashToken(tok), time.Now().Add(time.Hour))
	if ok || rej == nil || rej.Check != "errors" || rej.Reason != reason+" second line" {
		t.Fatalf("waitConfirmed after Reject = %v, %+v, want the rejection of check errors", ok, rej)
	}
	if l.rejected("7", 3, HashToken([]byte("another-token-entirely"))) != nil || l.rejected("8", 3, HashToken(tok)) != nil {
		t.Error("a rejection counted for another token or activation")
	}
	if l.confirmed("7", 3, HashToken(tok)) {
		t.Error("a rejection confirmed")
	}
}

// A worker (or the watchdog that took it over) awaiting a confirmation
// ends as soon as the operator rejects the activation, long before its
// deadline, with the check named: here in boot mode, where nothing was
// applied, the generation is marked failed and the boot default stays.
func TestConcludeRejected(t *testing.T) {
	l := Layout{StateDir: t.TempDir(), RunDir: t.TempDir() + "/run"}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	sys := "/var/lib/deploy/store/11111111111111111111111111111111-system-web1"
	if _, err := l.createGeneration(1, sys, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	tok := []byte("a-token-of-enough-length")
	req := &Request{ID: "7", Mode: ModeBoot, ConfirmTimeout: time.Hour, TokenHash: HashToken(tok)}
	st := &State{Activation: &ActivationState{Activation: agentapi.Activation{ID: "7", Generation: 1, Mode: ModeBoot,
		Phase: PhaseAwaiting, Deadline: time.Now().Add(time.Hour)}, TokenHash: req.TokenHash}}
	if err := l.writeState(st); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reject(1, tok, "error-ratio", `metric gate "error-ratio": query "q" returned 0.2, above max 0.05`); err != nil {
		t.Fatal(err)
	}
	res := &Result{ID: "7", Generation: 1}
	(&Worker{Layout: l, Logf: t.Logf}).conclude(t.Context(), req, res, st, "")
	if res.Outcome != OutcomeRolledBack || res.Check != "error-ratio" || !strings.Contains(res.Message, "the operator's health check failed: metric gate") {
		t.Fatalf("conclude after a rejection = %+v, want rolled back by the check error-ratio", res)
	}
	if g, err := l.Generation(1); err != nil || !g.Failed {
		t.Errorf("generation 1 = %+v, %v; want it failed", g, err)
	}
}

// Confirm binds a confirmation to the pending activation's generation and
// token; a stale confirmation file never counts.
func TestConfirmBinding(t *testing.T) {
	l := Layout{StateDir: t.TempDir(), RunDir: t.TempDir() + "/run"}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	tok := []byte("a-token-of-enough-length")
	st := &State{Activation: &ActivationState{Activation: agentapi.Activation{ID: "7", Generation: 3, Phase: PhaseApplying}, TokenHash: HashToken(tok)}}
	if err := l.writeState(st); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Confirm(2, tok); !errors.Is(err, ErrNotPending) {
		t.Errorf("Confirm(other generation) = %v, want ErrNotPending", err)
	}
	if _, err := l.Confirm(3, []byte("another-token-entirely")); !errors.Is(err, ErrBadToken) {
		t.Errorf("Confirm(wrong token) = %v, want ErrBadToken", err)
	}
	if l.confirmed("7", 3, HashToken(tok)) {
		t.Fatal("confirmed before any confirmation")
	}
	// Early: confirmed before the wait starts, seen by the wait.
	if _, err := l.Confirm(3, tok); err != nil {
		t.Fatalf("Confirm = %v", err)
	}
	if ok, rej := l.waitConfirmed(t.Context(), "7", 3, HashToken(tok), time.Now()); !ok || rej != nil {
		t.Errorf("waitConfirmed = %v, %v: an early confirmation was lost", ok, rej)
	}
	// The same file does not confirm another activation or token.
	if l.confirmed("7", 3, HashToken([]byte("another-token-entirely"))) || l.confirmed("8", 3, HashToken(tok)) {
		t.Error("a stale confirmation counted")
	}
	st.Activation.Phase = PhaseRolledBack
	l.writeState(st)
	if _, err := l.Confirm(3, tok); !errors.Is(err, ErrNotPending) {
		t.Errorf("Confirm after the rollback = %v, want ErrNotPending", err)
	}
}
