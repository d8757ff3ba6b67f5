package closure

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/declarative/deploy/internal/atomicfile"
)

// Pins are the GC roots of pushed closures: a closure copied to a host
// (deploy --mode push, deploy copy, or the copy before an activation) is
// kept until it is activated (a generation then holds it) or the pin
// expires, so that a gc between the copy and the activation cannot delete
// it. A pin is a symlink PinsDir/<base name of the store path> → the
// store path; its time is the link's own modification time, renewed by
// every push of the same path.

// Pin is one pushed closure's root.
type Pin struct {
	Path string    `json:"system"`
	Time time.Time `json:"time"`
}

// PinPolicy says which pins a garbage collection keeps: at most Keep (the
// newest), none older than MaxAge; DropAll removes every pin. The zero
// value keeps every pin.
type PinPolicy struct {
	MaxAge  time.Duration // 0: no age limit
	Keep    int           // 0: no count limit
	DropAll bool
}

// Pin makes each of paths (store paths of this store) a pushed root, or
// renews its time.
func (s *Store) Pin(paths ...string) error {
	if s.PinsDir == "" {
		return errors.New("store: no pins directory")
	}
	if err := os.MkdirAll(s.PinsDir, 0o755); err != nil {
		return fmt.Errorf("store: pin: %w", err)
	}
	for _, p := range paths {
		if _, _, err := SplitPath(s.StoreDir, p); err != nil {
			return fmt.Errorf("store: pin: %w", err)
		}
		var rnd [8]byte
		rand.Read(rnd[:])
		tmp := filepath.Join(s.PinsDir, ".tmp-"+hex.EncodeToString(rnd[:]))
		if err := os.Symlink(p, tmp); err != nil {
			return fmt.Errorf("store: pin %q: %w", p, err)
		}
		if err := os.Rename(tmp, filepath.Join(s.PinsDir, path.Base(p))); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("store: pin %q: %w", p, err)
		}
	}
	return atomicfile.SyncDir(s.PinsDir)
}

// Unpin removes the pins of paths (a path without a pin is no error).
func (s *Store) Unpin(paths ...string) error {
	if s.PinsDir == "" {
		return nil
	}
	removed := false
	for _, p := range paths {
		err := os.Remove(filepath.Join(s.PinsDir, path.Base(p)))
		if err == nil {
			removed = true
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: unpin %q: %w", p, err)
		}
	}
	if removed {
		return atomicfile.SyncDir(s.PinsDir)
	}
	return nil
}

// Pins lists the pushed roots, newest first.
func (s *Store) Pins() ([]Pin, error) {
	if s.PinsDir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(s.PinsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: pins: %w", err)
	}
	var pins []Pin
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		link := filepath.Join(s.PinsDir, e.Name())
		fi, err := os.Lstat(link)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		target, err := os.Readlink(link)
		if err != nil {
			continue
		}
		if _, _, err := SplitPath(s.StoreDir, target); err != nil || path.Base(target) != e.Name() {
			continue
		}
		pins = append(pins, Pin{Path: target, Time: fi.ModTime().UTC()})
	}
	slices.SortFunc(pins, func(a, b Pin) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Path, b.Path)
	})
	return pins, nil
}

// expirePins removes the pins policy does not keep and returns them.
func (s *Store) expirePins(now time.Time, policy PinPolicy) ([]Pin, error) {
	pins, err := s.Pins()
	if err != nil {
		return nil, err
	}
	var drop []Pin
	for i, p := range pins {
		if policy.DropAll || (policy.Keep > 0 && i >= policy.Keep) || (policy.MaxAge > 0 && now.Sub(p.Time) > policy.MaxAge) {
			drop = append(drop, p)
		}
	}
	for _, p := range drop {
		if err := s.Unpin(p.Path); err != nil {
			return nil, err
		}
	}
	return drop, nil
}

// GCOptions tunes [Store.GCWith].
type GCOptions struct {
	// ExtraRoots are kept with everything they reference, besides the
	// roots in RootsDir and the pins.
	ExtraRoots []string
	// Pins says which pushed roots are kept (zero value: all).
	Pins PinPolicy
	// Now is the time pins are aged against (zero: the current time).
	Now time.Time
}

// GCWith is [Store.GC] with the pushed roots' expiry: under the store lock,
// it first removes the pins opts.Pins does not keep (reported in
// GCResult.Unpinned), then collects.
func (s *Store) GCWith(ctx context.Context, opts GCOptions) (*GCResult, error) {
	return s.gc(ctx, opts)
}
