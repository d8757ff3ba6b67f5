package console

import (
	"encoding/json"
	"html"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/chromiumtest"
	"github.com/declarative/deploy/pull/channel"
)

// TestGateJS holds the page's reading of the waves (assets/gate.js,
// judgeWaves) to pull/channel's wave gate: in each rollout below (waves
// [a] [b c] [d], wave_timeout 1h), a wave after the first is shown halted
// exactly when channel.GateReports halts its hosts' releases, and says
// why in the gate's words.
func TestGateJS(t *testing.T) {
	chromiumtest.Binary(t)
	pub := time.Date(2026, 12, 8, 1, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return pub.Add(d) }
	st := func(serial int64, o agentapi.PullOutcome, when time.Duration) *agentapi.PullStatus {
		return &agentapi.PullStatus{V: 1, Channel: "prod", Serial: serial, Outcome: o, Time: at(when), OutcomeTime: at(when)}
	}
	type scenario struct {
		Name     string                          `json:"name"`
		Max      int                             `json:"-"`
		Head     *agentapi.ChannelRelease        `json:"head"`
		Statuses map[string]*agentapi.PullStatus `json:"statuses"`
		Now      time.Time                       `json:"now"`
	}
	done, rb, halted, waiting := agentapi.PullDone, agentapi.PullRolledBack, agentapi.PullHalted, agentapi.PullWaiting
	scenarios := []scenario{
		{Name: "all done", Statuses: map[string]*agentapi.PullStatus{"a": st(2, done, time.Minute), "b": st(2, done, 2*time.Minute), "c": st(2, done, 2*time.Minute), "d": st(2, done, 3*time.Minute)}, Now: at(2 * time.Hour)},
		{Name: "canary rolled back, max_failures 0", Statuses: map[string]*agentapi.PullStatus{"a": st(2, rb, time.Minute)}, Now: at(10 * time.Minute)},
		{Name: "canary rolled back, the next wave halted", Statuses: map[string]*agentapi.PullStatus{"a": st(2, rb, time.Minute), "b": st(2, halted, 2*time.Minute), "c": st(2, halted, 2*time.Minute)}, Now: at(10 * time.Minute)},
		{Name: "canary rolled back, max_failures 1", Max: 1, Statuses: map[string]*agentapi.PullStatus{"a": st(2, rb, time.Minute), "b": st(2, done, 2*time.Minute), "c": st(2, rb, 2*time.Minute)}, Now: at(70 * time.Minute)},
		{Name: "canary still waiting", Statuses: map[string]*agentapi.PullStatus{"a": st(2, waiting, time.Minute)}, Now: at(10 * time.Minute)},
		{Name: "canary silent before the deadline", Statuses: map[string]*agentapi.PullStatus{}, Now: at(59 * time.Minute)},
		{Name: "canary silent past the deadline", Statuses: map[string]*agentapi.PullStatus{}, Now: at(61 * time.Minute)},
		{Name: "canary done after the deadline", Statuses: map[string]*agentapi.PullStatus{"a": st(2, done, 61*time.Minute)}, Now: at(62 * time.Minute)},
		{Name: "canary done for an older serial, before the deadline", Statuses: map[string]*agentapi.PullStatus{"a": st(1, done, -time.Hour)}, Now: at(10 * time.Minute)},
		{Name: "canary done for an older serial, past the deadline", Statuses: map[string]*agentapi.PullStatus{"a": st(1, done, -time.Hour)}, Now: at(61 * time.Minute)},
		{Name: "wave 2 short of a host past its deadline", Statuses: map[string]*agentapi.PullStatus{"a": st(2, done, time.Minute), "b": st(2, done, 70*time.Minute)}, Now: at(121 * time.Minute)},
		{Name: "wave 2 short of a host before its deadline", Statuses: map[string]*agentapi.PullStatus{"a": st(2, done, time.Minute), "b": st(2, done, 70*time.Minute)}, Now: at(100 * time.Minute)},
	}
	waves := [][]string{{"a"}, {"b", "c"}, {"d"}}
	want := map[string][]bool{}     // by scenario: is wave k (2, 3) halted
	reason := map[string][]string{} // and why
	for i := range scenarios {
		sc := &scenarios[i]
		sc.Head = &agentapi.ChannelRelease{V: 1, Channel: "prod", Serial: 2, Published: pub, Waves: waves, WaveTimeoutMS: time.Hour.Milliseconds(), MaxFailures: sc.Max}
		for h, s := range sc.Statuses {
			s.Host = h
		}
		var after []string
		for k, hosts := range waves {
			if k > 0 {
				rel := &agentapi.Release{Channel: "prod", Serial: 2, Wave: k + 1, After: after, MaxFailures: sc.Max, Deadline: pub.Add(time.Duration(k) * time.Hour)}
				d, why := channel.GateReports(rel, sc.Now, sc.Statuses)
				want[sc.Name] = append(want[sc.Name], d == channel.Halt)
				reason[sc.Name] = append(reason[sc.Name], why)
			}
			after = append(after, hosts...)
		}
	}
	data, _ := json.Marshal(scenarios)
	harness := `<!DOCTYPE html><html><body><pre id="out">running</pre><script>` + GateJS() + `
const S = ` + string(data) + `;
const out = {};
for (const sc of S) {
  const hosts = new Map();
  for (const w of sc.head.waves) for (const n of w) hosts.set(n, { name: n, status: sc.statuses[n] || null });
  out[sc.name] = judgeWaves(sc.head, hosts, Date.parse(sc.now)).map((w) => ({ state: w.state, why: w.why }));
}
document.getElementById("out").textContent = "RESULT" + JSON.stringify(out) + "END";
</script></body></html>`
	file := filepath.Join(t.TempDir(), "gate.html")
	os.WriteFile(file, []byte(harness), 0o644)
	dom := chromiumtest.DumpDOM(t, "file://"+file, chromiumtest.Options{})
	m := regexp.MustCompile(`(?s)<pre id="out">RESULT(.*?)END</pre>`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("gate.js did not finish; the DOM:\n%s", dom)
	}
	var got map[string][]struct{ State, Why string }
	if err := json.Unmarshal([]byte(html.UnescapeString(m[1])), &got); err != nil {
		t.Fatal(err)
	}
	for _, sc := range scenarios {
		states := got[sc.Name]
		if len(states) != 3 {
			t.Errorf("%s: gate.js gave %v, want 3 waves", sc.Name, states)
			continue
		}
		for k, halt := range want[sc.Name] {
			w := states[k+1]
			if (w.State == "halted") != halt {
				t.Errorf("%s: wave %d is %q in the console; pull/channel's gate halts it: %v", sc.Name, k+2, w.State, halt)
			}
			if halt && w.Why != reason[sc.Name][k] {
				t.Errorf("%s: wave %d halted in the console because %q; pull/channel's gate says %q", sc.Name, k+2, w.Why, reason[sc.Name][k])
			}
		}
		t.Logf("%s: %v (gate halts waves 2, 3: %v)", sc.Name, states, want[sc.Name])
	}
}
