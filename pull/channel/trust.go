package channel

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
)

// RootKey is version's root document, relative to the channel's root.
func RootKey(version int64) string { return "root/" + strconv.FormatInt(version, 10) + ".json" }

// TimestampKey is host's timestamp document.
func TimestampKey(host string) string { return "timestamps/" + host + ".json" }

// Trust is a channel's verified root: who may sign what.
type Trust struct {
	Root *agentapi.Root
	// Doc is the signed root document, as verified.
	Doc   []byte
	roles map[string]role
}

type role struct {
	keys      []*cache.PublicKey
	threshold int
}

// ParseRoot verifies a root document that signs itself: signed by its
// own root role's threshold, every role well formed. It is how a root
// version 1 (or one a host got in its generation) is read; a later version
// must also pass [Trust.Next] from the one before.
func ParseRoot(data []byte) (*Trust, error) {
	t, err := decodeRoot(data)
	if err != nil {
		return nil, err
	}
	if err := t.signedBy(data, t, agentapi.RoleRoot); err != nil {
		return nil, err
	}
	return t, nil
}

// decodeRoot reads a root document's claims, unverified.
func decodeRoot(data []byte) (*Trust, error) {
	_, payload, err := decodeSigned(data, agentapi.DocRoot)
	if err != nil {
		return nil, err
	}
	r := &agentapi.Root{}
	if err := agentapi.Decode("root", payload, r); err != nil {
		return nil, &RefusedError{Doc: agentapi.DocRoot, Err: ErrMalformed, Detail: err.Error()}
	}
	t, err := NewTrust(r)
	if err != nil {
		return nil, &RefusedError{Doc: agentapi.DocRoot, Serial: r.Version, Err: ErrMalformed, Detail: err.Error()}
	}
	t.Doc = data
	return t, nil
}

// NewTrust checks a root's content (not its signatures): the channel's
// name, a version, an expiry, and each role with keys and a threshold
// that they can meet.
func NewTrust(r *agentapi.Root) (*Trust, error) {
	if err := CheckName("channel", r.Channel); err != nil {
		return nil, err
	}
	if r.Version < 1 {
		return nil, fmt.Errorf("root version %d: want 1 or more", r.Version)
	}
	if r.Expires.IsZero() {
		return nil, errors.New("root has no expiry")
	}
	t := &Trust{Root: r, roles: map[string]role{}}
	for _, name := range []string{agentapi.RoleRoot, agentapi.RolePublisher, agentapi.RoleTimestamp} {
		rr, ok := r.Roles[name]
		if !ok || len(rr.Keys) == 0 {
			return nil, fmt.Errorf("root version %d has no %s keys", r.Version, name)
		}
		var keys []*cache.PublicKey
		for _, k := range rr.Keys {
			pk, err := cache.ParsePublicKey(k)
			if err != nil {
				return nil, fmt.Errorf("root version %d, %s keys: %w", r.Version, name, err)
			}
			if slices.ContainsFunc(keys, func(o *cache.PublicKey) bool { return o.Name == pk.Name }) {
				return nil, fmt.Errorf("root version %d, %s keys: two keys named %q", r.Version, name, pk.Name)
			}
			keys = append(keys, pk)
		}
		if rr.Threshold < 1 || rr.Threshold > len(keys) {
			return nil, fmt.Errorf("root version %d, %s threshold %d: want 1 to %d (its keys)", r.Version, name, rr.Threshold, len(keys))
		}
		t.roles[name] = role{keys: keys, threshold: rr.Threshold}
	}
	return t, nil
}

// Keys returns role's keys and threshold.
func (t *Trust) Keys(name string) ([]*cache.PublicKey, int) {
	r := t.roles[name]
	return r.keys, r.threshold
}

// signedBy checks that data carries the threshold of by's role name.
func (t *Trust) signedBy(data []byte, by *Trust, name string) error {
	keys, k := by.Keys(name)
	var r agentapi.Root
	if _, err := OpenThreshold(data, agentapi.DocRoot, keys, k, &r); err != nil {
		var re *RefusedError
		if errors.As(err, &re) {
			re.Serial = t.Root.Version
			re.Detail = fmt.Sprintf("root version %d, by the %s keys of root version %d: %s", t.Root.Version, name, by.Root.Version, re.Detail)
		}
		return err
	}
	return nil
}

// Next verifies the root that follows t: for the same channel, version
// t's plus one, signed by t's root threshold and by its own.
func (t *Trust) Next(data []byte) (*Trust, error) {
	n, err := decodeRoot(data)
	if err != nil {
		return nil, err
	}
	switch {
	case n.Root.Channel != t.Root.Channel:
		return nil, &RefusedError{Doc: agentapi.DocRoot, Serial: n.Root.Version, Err: ErrOtherChannel, Detail: fmt.Sprintf("root of channel %q, this is %q", n.Root.Channel, t.Root.Channel)}
	case n.Root.Version != t.Root.Version+1:
		return nil, &RefusedError{Doc: agentapi.DocRoot, Serial: n.Root.Version, Err: ErrNotNewer, Detail: fmt.Sprintf("root version %d where %d was expected", n.Root.Version, t.Root.Version+1)}
	}
	if err := n.signedBy(data, t, agentapi.RoleRoot); err != nil {
		return nil, err
	}
	if err := n.signedBy(data, n, agentapi.RoleRoot); err != nil {
		return nil, err
	}
	return n, nil
}

// Expired says why t cannot be acted on at now ("" when it can).
func (t *Trust) Expired(now time.Time) string {
	if now.After(t.Root.Expires) {
		return fmt.Sprintf("root version %d expired at %s", t.Root.Version, t.Root.Expires.UTC().Format(time.RFC3339))
	}
	return ""
}

// TimestampCheck is what a host requires of its timestamp.
type TimestampCheck struct {
	Host string
	// Version is the host's last accepted timestamp version: a timestamp
	// must not be below it (a replay of an older one).
	Version int64
}

// VerifyTimestamp checks a host's timestamp: signed by t's timestamp
// threshold, for t's channel and c.Host, not older than c.Version. Expiry
// is not checked here ([TimestampExpired]): a host keeps an expired
// timestamp, and says it is stale.
func (t *Trust) VerifyTimestamp(data []byte, c TimestampCheck) (*agentapi.Timestamp, error) {
	ts := &agentapi.Timestamp{}
	keys, k := t.Keys(agentapi.RoleTimestamp)
	if _, err := OpenThreshold(data, agentapi.DocTimestamp, keys, k, ts); err != nil {
		var re *RefusedError
		if errors.As(err, &re) {
			re.Doc = agentapi.DocTimestamp
		}
		return nil, err
	}
	refuse := func(e error, detail string, args ...any) (*agentapi.Timestamp, error) {
		return nil, &RefusedError{Doc: agentapi.DocTimestamp, Serial: ts.Serial, Err: e, Detail: fmt.Sprintf(detail, args...)}
	}
	switch {
	case ts.Channel != t.Root.Channel:
		return refuse(ErrOtherChannel, "channel %q, this host follows %q", ts.Channel, t.Root.Channel)
	case ts.Host != c.Host:
		return refuse(ErrOtherHost, "host %q, this is %q", ts.Host, c.Host)
	case ts.Version < c.Version:
		return refuse(ErrNotNewer, "version %d, this host has %d (a replay of an older timestamp)", ts.Version, c.Version)
	case ts.Expires.IsZero():
		return refuse(ErrMalformed, "no expiry")
	}
	return ts, nil
}

// TimestampExpired says why ts cannot be acted on at now ("" when it can).
func TimestampExpired(ts *agentapi.Timestamp, now time.Time) string {
	if now.After(ts.Expires) {
		return fmt.Sprintf("the channel's timestamp expired at %s (a frozen channel, or deploy publish --refresh did not run)", ts.Expires.UTC().Format(time.RFC3339))
	}
	return ""
}

// RootClaims reads what a root document says, without checking its
// signatures (deploy trust show, and signing ceremonies).
func RootClaims(data []byte) (*agentapi.Root, error) {
	t, err := decodeRoot(data)
	if err != nil {
		return nil, err
	}
	return t.Root, nil
}

// TimestampClaims reads what a timestamp says, without checking its
// signatures: the root version it names is a hint of where to climb (the
// chain is verified on its own), never something to act on.
func TimestampClaims(data []byte) (*agentapi.Timestamp, error) {
	_, payload, err := decodeSigned(data, agentapi.DocTimestamp)
	if err != nil {
		return nil, err
	}
	ts := &agentapi.Timestamp{}
	if err := json.Unmarshal(payload, ts); err != nil {
		return nil, &RefusedError{Doc: agentapi.DocTimestamp, Err: ErrMalformed, Detail: err.Error()}
	}
	return ts, nil
}
