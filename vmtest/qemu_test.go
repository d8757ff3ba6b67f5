package vmtest

import (
	"strings"
	"testing"
)

// The qemu host boots, answers over SSH, and a reset boots it again.
func TestQEMUHost(t *testing.T) {
	q := StartQEMU(t)
	if got := strings.TrimSpace(q.Succeed("findmnt -no FSTYPE /")); got != "ext4" {
		t.Fatalf("root file system %q, want ext4", got)
	}
	id := q.BootID()
	q.Succeed("echo kept > /root/synced && sync")
	q.Succeed("echo lost > /root/unsynced")
	q.Reset()
	q.WaitBoot(id)
	if got := q.Succeed("cat /root/synced"); got != "kept\n" {
		t.Fatalf("a synced file after the reset: %q", got)
	}
	// What was not synced is lost (the page cache of the guest): that is
	// what makes this a power-loss test. (ext4 commits every 5 s, so the
	// reset comes right after the write.)
	out := q.Succeed("cat /root/unsynced 2>&1 || true")
	t.Logf("an unsynced file written just before the reset: %q", out)
}
