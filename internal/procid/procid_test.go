package procid

import (
	"os/exec"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	for _, tt := range []struct {
		line  string
		pid   int
		start uint64
		state byte
	}{
		{"42 (deploy) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 9 0 123456 1 2 3\n", 42, 123456, 'S'},
		{"7 (a) b (c)) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0\n", 7, 99, 'Z'},
	} {
		pid, start, state, err := parseStat([]byte(tt.line))
		if err != nil || pid != tt.pid || start != tt.start || state != tt.state {
			t.Errorf("parseStat(%q) = %d, %d, %c, %v; want %d, %d, %c", tt.line, pid, start, state, err, tt.pid, tt.start, tt.state)
		}
	}
	for _, bad := range []string{"", "42 deploy S", "x (a) S 1", "42 (a) S 1 2 3"} {
		if _, _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded, want an error", bad)
		}
	}
}

// A process that runs is not gone, one that ended is, and a PID whose
// process started at another time (reused) is gone; so is nothing of
// another process table.
func TestGone(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if Gone(*self) || !Running(self.PID, self.Start) {
		t.Errorf("Gone(self %+v) = true or Running false", self)
	}
	cmd := exec.Command("sleep", "infinity")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_, start, _, err := stat(strconv.Itoa(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	child := ID{Space: self.Space, PID: cmd.Process.Pid, Start: start}
	if Gone(child) {
		t.Errorf("Gone(running child %+v) = true", child)
	}
	reused := child
	reused.Start++
	if !Gone(reused) || Running(reused.PID, reused.Start) {
		t.Errorf("Gone(%+v, a start time not the PID's process's) = false, or Running true", reused)
	}
	other := child
	other.Space = "00000000-0000-0000-0000-000000000000/pid:[1]"
	// Killed, and not yet reaped: a zombie is gone.
	cmd.Process.Kill()
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if !Gone(child) || Running(child.PID, child.Start) {
		t.Errorf("Gone(zombie child %+v) = false, or Running true", child)
	}
	cmd.Process.Wait()
	if !Gone(child) || Running(child.PID, child.Start) {
		t.Errorf("Gone(ended child %+v) = false, or Running true", child)
	}
	if Gone(other) {
		t.Errorf("Gone(%+v, of another process table) = true", other)
	}
}
