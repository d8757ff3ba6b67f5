package activation

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/internal/atomicfile"
)

// The agent keeps a Prometheus textfile (node_exporter's textfile
// collector format) at [Layout.MetricsFile], rewritten atomically after
// every activation, rollback and health-check run, after the boot unit and
// after an `apply` of its own; point node_exporter's
// --collector.textfile.directory at its directory. What the file shows
// beyond the current generation (which is read afresh each time) is kept
// in metrics/state.json beside it.

// MetricsFile is the agent's Prometheus textfile: STATE_DIR/metrics/deploy.prom.
func (l Layout) MetricsFile() string {
	return filepath.Join(l.withDefaults().StateDir, "metrics", "deploy.prom")
}

func (l Layout) metricsStateFile() string {
	return filepath.Join(l.withDefaults().StateDir, "metrics", "state.json")
}

// metricsState is what the textfile shows of past events.
type metricsState struct {
	Activation *metricsEvent `json:"activation,omitempty"` // the last activation (a requested rollback is one too)
	Rollback   *metricsEvent `json:"rollback,omitempty"`   // the last rollback, requested or automatic
	Check      *checkEvent   `json:"check,omitempty"`      // the last health-check run
	// Pull is each pulled channel's freshness, by channel name.
	Pull map[string]*PullMetrics `json:"pull,omitempty"`
}

// PullMetrics is what the textfile shows of a channel the host pulls
// (docs/trust.md): whether it is stale and since when, the expiry of the
// host's timestamp, the root version and the serial the host is at.
type PullMetrics struct {
	Stale      bool      `json:"stale"`
	StaleSince time.Time `json:"stale_since,omitzero"`
	Expires    time.Time `json:"expires,omitzero"`
	Root       int64     `json:"root,omitempty"`
	Serial     int64     `json:"serial"`
}

// RecordPull updates the textfile with channel name's freshness (pull
// mode calls it when it changes, never on an idle poll).
func (l Layout) RecordPull(name string, p PullMetrics) error {
	return l.updateMetrics(func(m *metricsState) {
		if m.Pull == nil {
			m.Pull = map[string]*PullMetrics{}
		}
		m.Pull[name] = &p
	})
}

// metricsEvent is an activation or a rollback. Success is what the
// _success gauge shows (events recorded before it existed are read from
// Outcome).
type metricsEvent struct {
	Time       time.Time `json:"time"`
	Outcome    string    `json:"outcome"`
	Generation int       `json:"generation,omitempty"`
	Success    *bool     `json:"success,omitempty"`
}

func (ev *metricsEvent) succeeded() bool {
	if ev.Success != nil {
		return *ev.Success
	}
	return ev.Outcome == string(OutcomeDone)
}

type checkEvent struct {
	Time       time.Time `json:"time"`
	Generation int       `json:"generation,omitempty"` // whose checks ran
	Checks     []string  `json:"checks"`               // the checks that ran
	Failing    []string  `json:"failing,omitempty"`    // those that failed
}

// metricOutcomes are the values of the outcome label, each exported (0 or
// 1) so that a query need not know which one was last: the outcomes a
// recorded result can have (awaiting-confirmation is never a result, and
// dry-activated and lock-held results changed nothing and are not
// recorded).
var metricOutcomes = []string{string(OutcomeDone), string(OutcomeRolledBack), string(OutcomeFailed)}

// recordResult updates the textfile after an activation's result (see
// docs/activation.md, Metrics):
//
//   - every result that may have changed the host is the last activation,
//     successful when it ended done;
//   - an activation that began rolling back (its state says so: a failed
//     step or check, no confirmation, a worker that died or hung) is also
//     the last rollback, to the generation it returned to (the previous
//     one), successful when the host runs that generation again (outcome
//     rolled-back; failed means the rollback failed too);
//   - otherwise a request that re-activates an existing generation (the
//     rollback command) is the last rollback, to that generation,
//     successful when it ended done.
//
// Results that changed nothing (lock-held, dry-activated) are not
// recorded.
func (l Layout) recordResult(r *Result) error {
	if r.Outcome == OutcomeLockHeld || r.Outcome == OutcomeDry {
		return nil
	}
	now := time.Now().UTC()
	var act *ActivationState
	if st, err := l.ReadState(); err == nil && st.Activation != nil && st.Activation.ID == r.ID {
		act = st.Activation
	}
	req, _ := l.ReadRequest(r.ID)
	return l.updateMetrics(func(m *metricsState) {
		done := r.Outcome == OutcomeDone
		m.Activation = &metricsEvent{Time: now, Outcome: string(r.Outcome), Generation: r.Generation, Success: &done}
		switch {
		case act != nil && (act.RollbackBegun || r.Outcome == OutcomeRolledBack):
			ok := r.Outcome == OutcomeRolledBack
			m.Rollback = &metricsEvent{Time: now, Outcome: string(r.Outcome), Generation: act.Previous, Success: &ok}
		case req != nil && req.Generation != 0:
			m.Rollback = &metricsEvent{Time: now, Outcome: string(r.Outcome), Generation: r.Generation, Success: &done}
		}
	})
}

// recordChecks updates the textfile after a health-check run of
// generation gen's checks (none: the generation has none).
func (l Layout) recordChecks(gen int, checks []string, failing []string) error {
	now := time.Now().UTC()
	return l.updateMetrics(func(m *metricsState) {
		m.Check = &checkEvent{Time: now, Generation: gen, Checks: checks, Failing: failing}
	})
}

// updateMetrics applies f to the kept state and rewrites state and
// textfile, each with temp file + fsync + rename.
func (l Layout) updateMetrics(f func(*metricsState)) error {
	var m metricsState
	data, err := os.ReadFile(l.metricsStateFile())
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &m); err != nil {
			// A damaged state file only loses history: start afresh.
			m = metricsState{}
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("metrics: %w", err)
	}
	f(&m)
	if err := os.MkdirAll(filepath.Dir(l.MetricsFile()), 0o755); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	data, err = json.Marshal(&m)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(l.metricsStateFile(), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if err := atomicfile.Write(l.MetricsFile(), l.renderMetrics(&m), 0o644); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// WriteMetrics rewrites the textfile from the kept state and the current
// generation (deploy-agent metrics, and at boot).
func (l Layout) WriteMetrics() error {
	return l.updateMetrics(func(*metricsState) {})
}

// renderMetrics writes the textfile in the Prometheus text exposition
// format (version 0.0.4), as node_exporter's textfile collector reads it.
func (l Layout) renderMetrics(m *metricsState) []byte {
	var b strings.Builder
	metric := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	cur, _ := l.CurrentGeneration()
	metric("deploy_current_generation", "gauge", "The generation the host runs (0: none).")
	fmt.Fprintf(&b, "deploy_current_generation %d\n", cur)
	if cur > 0 {
		if g, err := l.Generation(cur); err == nil {
			metric("deploy_generation_info", "gauge", "The current generation: its system, fleet commit and operator (value 1).")
			fmt.Fprintf(&b, "deploy_generation_info{generation=\"%d\",system=%s,git_rev=%s,operator=%s} 1\n",
				cur, labelValue(g.System), labelValue(g.GitRev), labelValue(g.Operator))
		}
	}
	type eventHelp struct{ what, generation, success, outcome string }
	event := func(prefix string, h eventHelp, ev *metricsEvent) {
		if ev == nil {
			return
		}
		metric(prefix+"_timestamp_seconds", "gauge", "When the last "+h.what+" ended, in seconds since the epoch.")
		fmt.Fprintf(&b, "%s_timestamp_seconds %s\n", prefix, unixSeconds(ev.Time))
		metric(prefix+"_generation", "gauge", h.generation)
		fmt.Fprintf(&b, "%s_generation %d\n", prefix, ev.Generation)
		metric(prefix+"_success", "gauge", h.success)
		ok := 0
		if ev.succeeded() {
			ok = 1
		}
		fmt.Fprintf(&b, "%s_success %d\n", prefix, ok)
		metric(prefix+"_outcome", "gauge", h.outcome)
		outcomes := metricOutcomes
		if !slices.Contains(outcomes, ev.Outcome) {
			outcomes = append(slices.Clone(outcomes), ev.Outcome)
		}
		for _, o := range outcomes {
			v := 0
			if o == ev.Outcome {
				v = 1
			}
			fmt.Fprintf(&b, "%s_outcome{outcome=%s} %d\n", prefix, labelValue(o), v)
		}
	}
	event("deploy_last_activation", eventHelp{
		what:       "activation (deploy, pull or deploy rollback; not dry-activate)",
		generation: "The generation the last activation activated.",
		success:    "Whether the last activation ended done: its generation runs, checked and confirmed (1), or not: rolled back or failed (0).",
		outcome:    "The outcome of the last activation: 1 for done, rolled-back or failed, 0 for the others.",
	}, m.Activation)
	event("deploy_last_rollback", eventHelp{
		what:       "rollback (automatic, or deploy rollback)",
		generation: "The generation the last rollback returned the host to, or tried to (0: none, everything removed).",
		success:    "Whether the last rollback left the host running the generation it returned to (1) or failed (0).",
		outcome:    "The outcome of the activation the last rollback ended: 1 for done, rolled-back or failed, 0 for the others.",
	}, m.Rollback)
	if c := m.Check; c != nil {
		metric("deploy_last_check_timestamp_seconds", "gauge", "When the health checks last ran, in seconds since the epoch.")
		fmt.Fprintf(&b, "deploy_last_check_timestamp_seconds %s\n", unixSeconds(c.Time))
		metric("deploy_last_check_generation", "gauge", "The generation whose health checks last ran (an activation's, or after a rollback the one returned to).")
		fmt.Fprintf(&b, "deploy_last_check_generation %d\n", c.Generation)
		metric("deploy_checks_failing", "gauge", "How many of deploy_last_check_generation's health checks failed in their last run (they stop at the first failure: 0 or 1).")
		fmt.Fprintf(&b, "deploy_checks_failing %d\n", len(c.Failing))
		if len(c.Checks) > 0 {
			metric("deploy_check_failing", "gauge", "Whether a health check of deploy_last_check_generation failed (1) or passed (0) in its last run; absent: it did not run.")
			for _, name := range c.Checks {
				v := 0
				if slices.Contains(c.Failing, name) {
					v = 1
				}
				fmt.Fprintf(&b, "deploy_check_failing{check=%s} %d\n", labelValue(name), v)
			}
		}
	}
	if len(m.Pull) > 0 {
		names := slices.Sorted(maps.Keys(m.Pull))
		metric("deploy_pull_stale", "gauge", "Whether the host acts on nothing from the channel because its timestamp or root expired (1) or not (0).")
		for _, n := range names {
			fmt.Fprintf(&b, "deploy_pull_stale{channel=%s} %d\n", labelValue(n), map[bool]int{true: 1}[m.Pull[n].Stale])
		}
		metric("deploy_pull_stale_since_timestamp_seconds", "gauge", "Since when the channel is stale, in seconds since the epoch (absent when fresh).")
		for _, n := range names {
			if p := m.Pull[n]; p.Stale && !p.StaleSince.IsZero() {
				fmt.Fprintf(&b, "deploy_pull_stale_since_timestamp_seconds{channel=%s} %s\n", labelValue(n), unixSeconds(p.StaleSince))
			}
		}
		metric("deploy_pull_timestamp_expiry_seconds", "gauge", "When the host's timestamp of the channel expires, in seconds since the epoch: alert well before it.")
		for _, n := range names {
			if p := m.Pull[n]; !p.Expires.IsZero() {
				fmt.Fprintf(&b, "deploy_pull_timestamp_expiry_seconds{channel=%s} %s\n", labelValue(n), unixSeconds(p.Expires))
			}
		}
		metric("deploy_pull_root_version", "gauge", "The version of the channel's root the host trusts.")
		for _, n := range names {
			fmt.Fprintf(&b, "deploy_pull_root_version{channel=%s} %d\n", labelValue(n), m.Pull[n].Root)
		}
		metric("deploy_pull_serial", "gauge", "The last serial of the channel the host accepted.")
		for _, n := range names {
			fmt.Fprintf(&b, "deploy_pull_serial{channel=%s} %d\n", labelValue(n), m.Pull[n].Serial)
		}
	}
	if t, _ := l.ReadBootTrial(); t != nil {
		metric("deploy_boot_trial_generation", "gauge", "The boot default while it is a boot trial that no boot has confirmed yet (absent otherwise).")
		fmt.Fprintf(&b, "deploy_boot_trial_generation %d\n", t.Generation)
		metric("deploy_boot_trial_attempts", "gauge", "The boots of the pending trial counted so far.")
		fmt.Fprintf(&b, "deploy_boot_trial_attempts %d\n", len(t.Attempts))
		metric("deploy_boot_trial_max_attempts", "gauge", "The boots the pending trial may fail to confirm before the host boots its previous generation again.")
		fmt.Fprintf(&b, "deploy_boot_trial_max_attempts %d\n", t.MaxAttempts)
	}
	if rb, _ := l.ReadBootRollback(); rb != nil {
		metric("deploy_last_boot_fallback_timestamp_seconds", "gauge", "When the last boot trial fell back to its previous generation, in seconds since the epoch.")
		fmt.Fprintf(&b, "deploy_last_boot_fallback_timestamp_seconds %s\n", unixSeconds(rb.Time))
		metric("deploy_last_boot_fallback_generation", "gauge", "The trial generation that the last fallback gave up.")
		fmt.Fprintf(&b, "deploy_last_boot_fallback_generation %d\n", rb.Generation)
		metric("deploy_last_boot_fallback_previous", "gauge", "The generation the last fallback made the boot default again.")
		fmt.Fprintf(&b, "deploy_last_boot_fallback_previous %d\n", rb.Previous)
		metric("deploy_last_boot_fallback_attempts", "gauge", "How many boots of the trial had failed.")
		fmt.Fprintf(&b, "deploy_last_boot_fallback_attempts %d\n", rb.Attempts)
	}
	return []byte(b.String())
}

func unixSeconds(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', -1, 64)
}

// labelValue quotes a label value as the text format wants: backslash,
// double quote and newline escaped.
func labelValue(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}
