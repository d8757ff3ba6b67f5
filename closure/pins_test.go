package closure

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A pushed closure (pinned by the transfer) survives a GC until it expires
// (by age, by count) or is dropped; a dry run pins nothing; a second push
// renews the pin.
func TestPushedClosurePinned(t *testing.T) {
	ctx := context.Background()
	local, paths := fixture(t, 3)
	root := paths[len(paths)-1]
	remote := newTestStore(t, DefaultStoreDir)
	remote.PinsDir = filepath.Join(t.TempDir(), "pushed")

	if s, _, serr, rerr := transfer(t, local, remote, paths, SendOptions{DryRun: true, Pin: []string{root}}, nil); serr != nil || rerr != nil || s.Pinned != 0 {
		t.Fatalf("dry run: %+v, %v, %v; want nothing pinned", s, serr, rerr)
	}
	s, _, serr, rerr := transfer(t, local, remote, paths, SendOptions{Pin: []string{root}}, nil)
	if serr != nil || rerr != nil || s.Pinned != 1 {
		t.Fatalf("push: %+v, %v, %v; want 1 pinned", s, serr, rerr)
	}
	pins, err := remote.Pins()
	if err != nil || len(pins) != 1 || pins[0].Path != root {
		t.Fatalf("Pins = %v, %v; want %s", pins, err, root)
	}
	res, err := remote.GC(ctx, nil)
	if err != nil || len(res.Deleted) != 0 {
		t.Fatalf("GC of a pushed closure = %+v, %v; want nothing deleted", res, err)
	}
	for _, p := range paths {
		if ok, _ := remote.Valid(p); !ok {
			t.Fatalf("%s not valid after GC", p)
		}
	}
	// Kept while young and among the newest; expired by age, by count.
	later := pins[0].Time.Add(time.Hour)
	for _, pol := range []PinPolicy{{MaxAge: 2 * time.Hour}, {Keep: 1}, {}} {
		if res, err := remote.GCWith(ctx, GCOptions{Pins: pol, Now: later}); err != nil || len(res.Deleted) != 0 || len(res.Unpinned) != 0 {
			t.Fatalf("GCWith(%+v) = %+v, %v; want nothing removed", pol, res, err)
		}
	}
	if res, err := remote.GCWith(ctx, GCOptions{Pins: PinPolicy{MaxAge: 30 * time.Minute}, Now: later}); err != nil || len(res.Unpinned) != 1 || len(res.Deleted) != len(paths) {
		t.Fatalf("GCWith(older than the age limit) = %+v, %v; want the pin and %d paths removed", res, err, len(paths))
	}
	// Push again: pinned anew; a second, newer pin pushes it out by count.
	if s, _, serr, rerr := transfer(t, local, remote, paths, SendOptions{Pin: []string{root}}, nil); serr != nil || rerr != nil || s.Pinned != 1 {
		t.Fatalf("push again: %+v, %v, %v", s, serr, rerr)
	}
	if err := remote.Pin(paths[0]); err != nil {
		t.Fatal(err)
	}
	// The root's pin is the older one (set its link's time back).
	hour := unix.NsecToTimespec(time.Now().Add(-time.Hour).UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(remote.PinsDir, filepath.Base(root)), []unix.Timespec{hour, hour}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	res, err = remote.GCWith(ctx, GCOptions{Pins: PinPolicy{Keep: 1}})
	if err != nil || len(res.Unpinned) != 1 || res.Unpinned[0].Path != root {
		t.Fatalf("GCWith(Keep 1) = %+v, %v; want the older pin (%s) removed", res, err, root)
	}
	if res, err := remote.GCWith(ctx, GCOptions{Pins: PinPolicy{DropAll: true}}); err != nil || len(res.Unpinned) != 1 {
		t.Fatalf("GCWith(DropAll) = %+v, %v", res, err)
	}
	if pins, _ := remote.Pins(); len(pins) != 0 {
		t.Fatalf("pins left: %v", pins)
	}
}
