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

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/atomicfile"
)

// The agent keeps a Prometheus textfile (node_exporter's textfile
// collector format) at [Layout.MetricsFile], rewritten atomically after
// every activation, rollback and health-check run; point node_exporter's
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
	Activation *metricsEvent `json:"activation,omitempty"` // the last activation (a rollback is one too)
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

type metricsEvent struct {
	Time       time.Time `json:"time"`
	Outcome    string    `json:"outcome"`
	Generation int       `json:"generation,omitempty"`
}

type checkEvent struct {
	Time    time.Time `json:"time"`
	Checks  []string  `json:"checks"`            // the checks that ran
	Failing []string  `json:"failing,omitempty"` // those that failed
}

// outcomes are the values of the outcome label, each exported (0 or 1) so
// that a query need not know which one was last.
var metricOutcomes = []string{string(OutcomeDone), string(OutcomeRolledBack), string(OutcomeFailed),
	string(agentapi.OutcomeAwaiting), string(agentapi.OutcomeDry)}

// recordResult updates the textfile after an activation's result: a
// result of a request that re-activates an existing generation (the
// rollback command) or that rolled back counts as a rollback too. A
// lock-held result changed nothing and is not recorded.
func (l Layout) recordResult(r *Result) error {
	if r.Outcome == OutcomeLockHeld {
		return nil
	}
	now := time.Now().UTC()
	req, _ := l.ReadRequest(r.ID)
	return l.updateMetrics(func(m *metricsState) {
		ev := &metricsEvent{Time: now, Outcome: string(r.Outcome), Generation: r.Generation}
		m.Activation = ev
		if r.Outcome == OutcomeRolledBack || (req != nil && req.Generation != 0) {
			m.Rollback = ev
		}
	})
}

// recordChecks updates the textfile after a health-check run.
func (l Layout) recordChecks(checks []string, failing []string) error {
	now := time.Now().UTC()
	return l.updateMetrics(func(m *metricsState) {
		m.Check = &checkEvent{Time: now, Checks: checks, Failing: failing}
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
	event := func(prefix, what string, ev *metricsEvent) {
		if ev == nil {
			return
		}
		metric(prefix+"_timestamp_seconds", "gauge", "When the last "+what+" ended, in seconds since the epoch.")
		fmt.Fprintf(&b, "%s_timestamp_seconds %s\n", prefix, unixSeconds(ev.Time))
		metric(prefix+"_generation", "gauge", "The generation of the last "+what+".")
		fmt.Fprintf(&b, "%s_generation %d\n", prefix, ev.Generation)
		metric(prefix+"_success", "gauge", "Whether the last "+what+" succeeded (1) or not (0).")
		ok := 0
		if ev.Outcome == string(OutcomeDone) || ev.Outcome == string(agentapi.OutcomeAwaiting) || ev.Outcome == string(agentapi.OutcomeDry) {
			ok = 1
		}
		fmt.Fprintf(&b, "%s_success %d\n", prefix, ok)
		metric(prefix+"_outcome", "gauge", "The outcome of the last "+what+" (1 for the one it had).")
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
	event("deploy_last_activation", "activation", m.Activation)
	event("deploy_last_rollback", "rollback", m.Rollback)
	if c := m.Check; c != nil {
		metric("deploy_last_check_timestamp_seconds", "gauge", "When the health checks last ran, in seconds since the epoch.")
		fmt.Fprintf(&b, "deploy_last_check_timestamp_seconds %s\n", unixSeconds(c.Time))
		metric("deploy_checks_failing", "gauge", "How many health checks failed in their last run.")
		fmt.Fprintf(&b, "deploy_checks_failing %d\n", len(c.Failing))
		if len(c.Checks) > 0 {
			metric("deploy_check_failing", "gauge", "Whether a health check failed (1) or passed (0) in its last run.")
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
