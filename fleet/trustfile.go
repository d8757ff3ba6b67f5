package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/pull/channel"
)

// DefaultRootExpiry is how long a root is valid when deploy trust is not
// told (--expires): a year, after which hosts go stale.
const DefaultRootExpiry = 365 * 24 * time.Hour

// RootFile is a root version in the fleet's trust directory, with what
// its signatures amount to.
type RootFile struct {
	Root *agentapi.Root
	Path string
	// Signers are the keys that signed it; Self whether they meet its own
	// root threshold, Chain whether they meet the previous version's
	// (true for version 1).
	Signers     []string
	Self, Chain bool
}

// RootChange is a new root version: keys added to roles, keys removed
// (by name, from every role), new thresholds, a new expiry, a serial
// reset.
type RootChange struct {
	Add         map[string][]string
	Remove      []string
	Thresholds  map[string]int
	Expires     time.Duration
	ResetSerial bool
}

// InitRoot writes version 1 of channel name's root into the fleet's trust
// directory, signed with sign (the root key holders present; the others
// add theirs with [SignRoot]).
func InitRoot(fleetDir, name string, ch RootChange, sign []*cache.SecretKey) (*RootFile, error) {
	dir := TrustDir(fleetDir, name)
	if _, err := os.Stat(filepath.Join(dir, "root.json")); err == nil {
		return nil, fmt.Errorf("%s exists: a channel's root is made once (deploy trust rotate makes the next version)", filepath.Join(dir, "root.json"))
	}
	r := &agentapi.Root{V: agentapi.Version, Channel: name, Version: 1, Roles: map[string]agentapi.Role{}}
	return writeRoot(fleetDir, nil, r, ch, sign)
}

// RotateRoot writes the next version of channel name's root: the newest
// one changed by ch, signed with sign. It is valid once the root
// thresholds of both versions signed it.
func RotateRoot(fleetDir, name string, ch RootChange, sign []*cache.SecretKey) (*RootFile, error) {
	cur, err := ReadRoot(fleetDir, name)
	if err != nil {
		return nil, err
	}
	r := *cur.Root
	r.Version++
	r.ResetSerial = false
	r.Roles = map[string]agentapi.Role{}
	for k, v := range cur.Root.Roles {
		r.Roles[k] = agentapi.Role{Keys: slices.Clone(v.Keys), Threshold: v.Threshold}
	}
	return writeRoot(fleetDir, cur.Root, &r, ch, sign)
}

func writeRoot(fleetDir string, prev, r *agentapi.Root, ch RootChange, sign []*cache.SecretKey) (*RootFile, error) {
	if len(sign) == 0 {
		return nil, errors.New("no root key to sign with (--sign FILE)")
	}
	for _, name := range ch.Remove {
		found := false
		for role, rr := range r.Roles {
			n := len(rr.Keys)
			rr.Keys = slices.DeleteFunc(rr.Keys, func(k string) bool { pk, err := cache.ParsePublicKey(k); return err == nil && pk.Name == name })
			found = found || len(rr.Keys) < n
			r.Roles[role] = rr
		}
		if !found {
			return nil, fmt.Errorf("no key named %q in root version %d", name, r.Version-1)
		}
	}
	for role, keys := range ch.Add {
		rr := r.Roles[role]
		for _, k := range keys {
			pk, err := cache.ParsePublicKey(k)
			if err != nil {
				return nil, fmt.Errorf("%s key: %w", role, err)
			}
			rr.Keys = append(rr.Keys, pk.String())
		}
		r.Roles[role] = rr
	}
	for role, rr := range r.Roles {
		if k, ok := ch.Thresholds[role]; ok {
			rr.Threshold = k
		}
		if rr.Threshold == 0 {
			rr.Threshold = 1
		}
		if rr.Threshold > len(rr.Keys) {
			return nil, fmt.Errorf("the %s role would need %d signatures of its %d keys: lower it with --%s-threshold, or add a key (a threshold never drops by itself)", role, rr.Threshold, len(rr.Keys), role)
		}
		r.Roles[role] = rr
	}
	exp := ch.Expires
	if exp == 0 && prev == nil {
		exp = DefaultRootExpiry
	}
	if exp != 0 {
		r.Expires = time.Now().UTC().Add(exp).Truncate(time.Second)
	}
	r.ResetSerial = ch.ResetSerial
	if _, err := channel.NewTrust(r); err != nil {
		return nil, err
	}
	data, err := channel.Sign(agentapi.DocRoot, r, sign...)
	if err != nil {
		return nil, err
	}
	dir := TrustDir(fleetDir, r.Channel)
	path := filepath.Join(dir, fmt.Sprintf("root.%d.json", r.Version))
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("%s exists: a root version is never replaced", path)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, data, 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, "root.json"), data, 0o644); err != nil {
		return nil, err
	}
	return ReadRoot(fleetDir, r.Channel)
}

// SignRoot adds signatures to the newest version of channel name's root
// (in root.json and root.VERSION.json).
func SignRoot(fleetDir, name string, sign []*cache.SecretKey) (*RootFile, error) {
	cur, err := ReadRoot(fleetDir, name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(cur.Path)
	if err != nil {
		return nil, err
	}
	if data, err = channel.AddSignatures(data, agentapi.DocRoot, sign...); err != nil {
		return nil, err
	}
	dir := TrustDir(fleetDir, name)
	if err := atomicfile.Write(filepath.Join(dir, fmt.Sprintf("root.%d.json", cur.Root.Version)), data, 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, "root.json"), data, 0o644); err != nil {
		return nil, err
	}
	return ReadRoot(fleetDir, name)
}

// ReadRoot reads the newest version of channel name's root from the
// fleet's trust directory and says whether it is signed enough.
func ReadRoot(fleetDir, name string) (*RootFile, error) {
	dir := TrustDir(fleetDir, name)
	path := filepath.Join(dir, "root.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("channel %q's root: %w (deploy trust init makes it)", name, err)
	}
	rf := &RootFile{Path: path, Signers: channel.Signers(data)}
	var r agentapi.Root
	if rf.Root, err = channel.RootClaims(data); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	self, err := channel.NewTrust(rf.Root)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	keys, k := self.Keys(agentapi.RoleRoot)
	_, err = channel.OpenThreshold(data, agentapi.DocRoot, keys, k, &r)
	rf.Self = err == nil
	rf.Chain = rf.Root.Version == 1
	if rf.Root.Version > 1 {
		prev, perr := os.ReadFile(filepath.Join(dir, fmt.Sprintf("root.%d.json", rf.Root.Version-1)))
		if perr == nil {
			if pr, err := channel.RootClaims(prev); err == nil {
				if pt, err := channel.NewTrust(pr); err == nil {
					keys, k := pt.Keys(agentapi.RoleRoot)
					_, err = channel.OpenThreshold(data, agentapi.DocRoot, keys, k, &r)
					rf.Chain = err == nil
				}
			}
		}
	}
	return rf, nil
}
