package vmtest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Cut drops all traffic to and from the host: its port on the switch goes
// down, so its eth0 loses carrier. Connections are not reset; they stall
// until [Host.Restore] or until their peers give up. The cut lasts across
// boots until Restore.
func (h *Host) Cut() {
	h.tb.Helper()
	if err := h.setCut(true); err != nil {
		h.tb.Fatalf("vmtest: cut %s: %v", h.m.name, err)
	}
}

// Restore undoes [Host.Cut].
func (h *Host) Restore() {
	h.tb.Helper()
	if err := h.setCut(false); err != nil {
		h.tb.Fatalf("vmtest: restore %s: %v", h.m.name, err)
	}
}

func (h *Host) setCut(cut bool) error {
	ctx, cancel := context.WithTimeout(h.tb.Context(), 30*time.Second)
	defer cancel()
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cut = cut
	if m.inst == nil || m.inst.exited() {
		return nil // the next boot's link starts in this state
	}
	state := "up"
	if cut {
		state = "down"
	}
	return m.net.sw.ip(ctx, fmt.Sprintf("link set %s %s\n", m.port, state))
}

// Throttle limits the host's bandwidth to bytesPerSecond in each direction
// with a token bucket filter (tbf) on both ends of its link; 0 removes the
// limit. The limit lasts across boots.
func (h *Host) Throttle(bytesPerSecond int64) {
	h.tb.Helper()
	ctx, cancel := context.WithTimeout(h.tb.Context(), 30*time.Second)
	defer cancel()
	if err := h.throttle(ctx, bytesPerSecond); err != nil {
		h.tb.Fatalf("vmtest: throttle %s: %v", h.m.name, err)
	}
}

func (h *Host) throttle(ctx context.Context, rate int64) error {
	if rate < 0 {
		return fmt.Errorf("rate %d bytes/s: must not be negative", rate)
	}
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rate = rate
	inst := m.inst
	if inst == nil || inst.exited() || inst.leader == 0 {
		return nil // applied when the host boots
	}
	// Downlink on the switch port, uplink on the host's own eth0.
	if err := setRate(ctx, m.net.sw, m.port, rate); err != nil {
		return err
	}
	return setRate(ctx, leaderNetns(inst.leader), "eth0", rate)
}

// nsRunner runs a program in some network namespace.
type nsRunner interface {
	run(ctx context.Context, name string, args ...string) (string, error)
}

// leaderNetns is the network namespace of a host's PID 1.
type leaderNetns int

func (pid leaderNetns) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target=" + strconv.Itoa(int(pid)), "--net", name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %q: %w: %s", name, args, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// setRate puts a token bucket filter of rate bytes per second on dev's
// egress, or removes it for rate 0.
func setRate(ctx context.Context, ns nsRunner, dev string, rate int64) error {
	if rate == 0 {
		out, err := ns.run(ctx, "tc", "qdisc", "del", "dev", dev, "root")
		// Deleting the default qdisc is the only failure when there is no
		// limit to remove.
		if err != nil && !strings.Contains(out, "handle of zero") && !strings.Contains(out, "No such file or directory") {
			return err
		}
		return nil
	}
	// The bucket holds a few full-size packets, or 20 ms at the rate:
	// small enough that bursts do not distort the rate.
	burst := max(rate/50, 16*1024)
	_, err := ns.run(ctx, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.FormatInt(rate*8, 10)+"bit",
		"burst", strconv.FormatInt(burst, 10),
		"latency", "100ms")
	return err
}
