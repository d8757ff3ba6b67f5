package activation

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The front follows an activation whose worker ended without a result and
// without a watchdog: when the worker had not recorded the activation (it
// died before it began, so it changed nothing), the front writes the
// result it reports; when it had, it leaves the result to whoever
// finishes the activation (the next activation looks for one without).
func TestFollowWorkerEndedWithoutResult(t *testing.T) {
	for _, recorded := range []bool{false, true} {
		t.Run(map[bool]string{false: "not begun", true: "recorded"}[recorded], func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			l := Layout{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), UnitDir: filepath.Join(dir, "units")}
			if err := l.Init(); err != nil {
				t.Fatal(err)
			}
			const id = "9"
			if err := os.WriteFile(l.LogFile(id), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			st := &State{Activation: &ActivationState{}}
			st.Activation.ID, st.Activation.Phase = "8", PhaseDone
			if recorded {
				st.Activation.ID, st.Activation.Phase = id, PhaseApplying
			}
			if err := l.writeState(st); err != nil {
				t.Fatal(err)
			}
			worker := exec.Command("true")
			if err := worker.Start(); err != nil {
				t.Fatal(err)
			}
			res, err := follow(context.Background(), l, id, "", worker, io.Discard)
			if err != nil || res.Outcome != OutcomeFailed || !strings.Contains(res.Message, "ended without a result") {
				t.Fatalf("follow() = %+v, %v; want failed, ended without a result", res, err)
			}
			written, err := l.ReadResult(id)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !recorded && (written == nil || written.Outcome != OutcomeFailed || !strings.Contains(written.Message, "nothing was changed")):
				t.Errorf("not begun: result file %+v, want failed, nothing changed", written)
			case recorded && written != nil:
				t.Errorf("recorded: result file %+v written by the front, want none (the next activation finishes it)", written)
			}
		})
	}
}
