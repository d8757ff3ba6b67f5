package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/pull/channel"
)

// DefaultTimestampExpiry is how long a host's timestamp is valid when
// publish or refresh is not told (--timestamp-expiry).
const DefaultTimestampExpiry = 24 * time.Hour

// TrustDir is where the deploy trust commands keep channel name's roots in
// the fleet: root.json (the newest) and root.VERSION.json (each version,
// so that publish can put the whole chain into the channel).
func TrustDir(fleetDir, name string) string { return filepath.Join(fleetDir, "trust", name) }

// channelTrust is the channel's root of trust that the selected hosts'
// pull blocks name (nil when they name none: a channel without a root).
// Hosts of one channel must agree; the newest version wins.
func (s *Session) channelTrust(cfgs map[string]*agentapi.PullConfig) (*channel.Trust, error) {
	var t *channel.Trust
	var with, without []string
	for _, name := range s.names() {
		cfg := cfgs[name]
		if cfg == nil {
			continue
		}
		if cfg.Root == nil {
			without = append(without, name)
			continue
		}
		with = append(with, name)
		ht, err := channel.ParseRoot(cfg.Root)
		if err != nil {
			return nil, fmt.Errorf("host %s: its pull block's root: %w", name, err)
		}
		if ht.Root.Channel != cfg.Channel {
			return nil, fmt.Errorf("host %s: its pull block's root is channel %q's, the host pulls %q", name, ht.Root.Channel, cfg.Channel)
		}
		switch {
		case t == nil || ht.Root.Version > t.Root.Version:
			t = ht
		case ht.Root.Version == t.Root.Version && !sameJSON(ht.Doc, t.Doc):
			return nil, fmt.Errorf("hosts name two different roots of version %d for channel %q: give them the same root file", t.Root.Version, cfg.Channel)
		}
	}
	if len(with) > 0 && len(without) > 0 {
		return nil, fmt.Errorf("hosts %v name the channel's root and hosts %v do not (publisher_keys only): give every host of the channel the root", with, without)
	}
	return t, nil
}

// pullConfigs evaluates the selected hosts (nothing is built) for their
// pull configurations of channel name.
func (s *Session) pullConfigs(ctx context.Context, name string) (map[string]*agentapi.PullConfig, error) {
	out := map[string]*agentapi.PullConfig{}
	if s.Builder == nil {
		return out, nil
	}
	for _, h := range s.Selected {
		cfg, diags := s.Builder.EvaluateDry(ctx, s.Fleet, h.Name)
		if diags.HasErrors() {
			s.diag(s.Fleet, diags)
			return nil, &ConfigError{Diags: diags}
		}
		if pc, _ := modules.PullConfig(cfg, s.Builder.Store.StoreDir); pc != nil && pc.Channel == name {
			out[h.Name] = pc
		}
	}
	return out, nil
}

// checkSigners checks that the session's keys can sign for t: the
// publisher key is in the publisher role, and timestamp keys are given
// and in the timestamp role.
func (s *Session) checkSigners(t *channel.Trust) error {
	keys, _ := t.Keys(agentapi.RolePublisher)
	if !hasKey(keys, s.PublisherKey) {
		return &UsageError{Err: fmt.Errorf("publisher key %q is not one of root version %d's publisher keys (%s): hosts would not count its signature",
			s.PublisherKey.Name, t.Root.Version, keyNames(keys))}
	}
	tkeys, tk := t.Keys(agentapi.RoleTimestamp)
	var good int
	for _, sk := range s.TimestampKeys {
		if !hasKey(tkeys, sk) {
			return &UsageError{Err: fmt.Errorf("timestamp key %q is not one of root version %d's timestamp keys (%s)", sk.Name, t.Root.Version, keyNames(tkeys))}
		}
		good++
	}
	if good < tk {
		return &UsageError{Err: fmt.Errorf("channel %q has a root: its hosts act only on a timestamp signed by %d of the timestamp keys (%s); pass --timestamp-key FILE or set DEPLOY_TIMESTAMP_KEY",
			t.Root.Channel, tk, keyNames(tkeys))}
	}
	return nil
}

func hasKey(keys []*cache.PublicKey, sk *cache.SecretKey) bool {
	return sk != nil && slices.ContainsFunc(keys, func(k *cache.PublicKey) bool { return k.String() == sk.Public().String() })
}

func keyNames(keys []*cache.PublicKey) string {
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	return fmt.Sprint(names)
}

// putRoots writes t and the fleet's earlier root versions of its channel
// (TrustDir) into the channel, each once, so that a host holding any
// earlier version can climb the chain to t. The chain is verified first.
func (s *Session) putRoots(ctx context.Context, store channel.Store, t *channel.Trust) error {
	dir := TrustDir(s.Fleet.Dir, t.Root.Channel)
	var prev *channel.Trust
	for v := int64(1); v <= t.Root.Version; v++ {
		data := t.Doc
		if v < t.Root.Version {
			var err error
			data, err = os.ReadFile(filepath.Join(dir, fmt.Sprintf("root.%d.json", v)))
			if errors.Is(err, fs.ErrNotExist) {
				prev = nil
				continue
			}
			if err != nil {
				return err
			}
		}
		var cur *channel.Trust
		var err error
		if prev != nil {
			cur, err = prev.Next(data)
		} else {
			cur, err = channel.ParseRoot(data)
		}
		if err != nil {
			return fmt.Errorf("the channel's root version %d: %w", v, err)
		}
		if v == t.Root.Version && !sameJSON(cur.Doc, t.Doc) {
			return fmt.Errorf("the channel's root version %d differs from %s", v, filepath.Join(dir, fmt.Sprintf("root.%d.json", v)))
		}
		prev = cur
		err = store.Write(ctx, channel.RootKey(v), data, channel.Cond{IfAbsent: true})
		switch {
		case errors.Is(err, channel.ErrConflict):
			have, _, rerr := store.Read(ctx, channel.RootKey(v))
			if rerr == nil && !sameJSON(have, data) {
				return fmt.Errorf("channel %q already holds another root version %d: a root version is never replaced (rotate to version %d instead)", t.Root.Channel, v, t.Root.Version+1)
			}
		case err != nil:
			return fmt.Errorf("writing the channel's root version %d: %w", v, err)
		}
	}
	return nil
}

// putTimestamp signs and writes host's timestamp, naming its release
// (doc, nil for none) under t.
func (s *Session) putTimestamp(ctx context.Context, store channel.Store, t *channel.Trust, host string, doc []byte, expiry time.Duration) (*agentapi.Timestamp, error) {
	if expiry <= 0 {
		expiry = DefaultTimestampExpiry
	}
	now := time.Now().UTC()
	ts := &agentapi.Timestamp{V: agentapi.Version, Channel: t.Root.Channel, Host: host, Version: now.UnixMilli(),
		Expires: now.Add(expiry).Truncate(time.Second), Root: t.Root.Version}
	if doc != nil {
		rel := &agentapi.Release{}
		keys, _ := t.Keys(agentapi.RolePublisher)
		if _, err := channel.OpenThreshold(doc, agentapi.DocRelease, keys, 1, rel); err != nil {
			return nil, fmt.Errorf("host %s: its release in the channel: %w", host, err)
		}
		h, err := channel.PayloadHash(doc, agentapi.DocRelease)
		if err != nil {
			return nil, err
		}
		ts.Serial, ts.Release = rel.Serial, h
	}
	data, err := channel.Sign(agentapi.DocTimestamp, ts, s.TimestampKeys...)
	if err != nil {
		return nil, err
	}
	if err := store.Put(ctx, channel.TimestampKey(host), data); err != nil {
		return nil, fmt.Errorf("host %s: writing its timestamp: %w", host, err)
	}
	return ts, nil
}

// Refresh signs every selected host's timestamp again, naming the release
// the channel holds for it, so that hosts do not go stale (deploy publish
// --refresh, from cron or CI more often than --timestamp-expiry). Nothing
// is built; the releases are not changed. It also puts the fleet's root
// chain into the channel (after deploy trust rotate).
func (s *Session) Refresh(ctx context.Context, opts PublishOptions) (*Report, error) {
	if s.Fleet == nil || s.Fleet.Cache == nil {
		return nil, s.configError(nil, "No cache block", errNoCache)
	}
	if err := channel.CheckName("channel", opts.Channel); err != nil {
		return nil, &UsageError{Err: err}
	}
	cfgs, err := s.pullConfigs(ctx, opts.Channel)
	if err != nil {
		return nil, err
	}
	t, err := s.channelTrust(cfgs)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	if t == nil {
		return nil, &UsageError{Err: fmt.Errorf("refresh: the selected hosts' pull blocks name no root for channel %q, so their releases carry no timestamp (docs/trust.md)", opts.Channel)}
	}
	tkeys, tk := t.Keys(agentapi.RoleTimestamp)
	if n := len(s.TimestampKeys); n < tk {
		return nil, &UsageError{Err: fmt.Errorf("refresh: channel %q's timestamps need %d of the timestamp keys %s; %d given (--timestamp-key FILE or DEPLOY_TIMESTAMP_KEY)", opts.Channel, tk, keyNames(tkeys), n)}
	}
	for _, sk := range s.TimestampKeys {
		if !hasKey(tkeys, sk) {
			return nil, &UsageError{Err: fmt.Errorf("refresh: timestamp key %q is not one of root version %d's timestamp keys %s", sk.Name, t.Root.Version, keyNames(tkeys))}
		}
	}
	store, err := s.channelStore(opts.Channel)
	if err != nil {
		return nil, err
	}
	if err := s.putRoots(ctx, store, t); err != nil {
		return nil, err
	}
	rep := s.begin("", nil)
	defer s.end(rep)
	expiry := opts.TimestampExpiry
	if expiry <= 0 {
		expiry = DefaultTimestampExpiry
	}
	s.emit(Event{Type: EventPublish, State: "started", Channel: opts.Channel,
		Message: fmt.Sprintf("channel %s: signing %d hosts' timestamps again, valid for %v (root version %d)", opts.Channel, len(s.Selected), expiry, t.Root.Version)})
	for _, name := range s.names() {
		hr := rep.Hosts[name]
		if cfgs[name] == nil {
			s.fail(hr, PhasePublish, ResultFailed, fmt.Errorf("host does not pull channel %q", opts.Channel))
			continue
		}
		doc, _, err := store.Read(ctx, channel.ReleaseKey(name))
		if errors.Is(err, fs.ErrNotExist) {
			doc, err = nil, nil
		}
		var ts *agentapi.Timestamp
		if err == nil {
			ts, err = s.putTimestamp(ctx, store, t, name, doc, opts.TimestampExpiry)
		}
		if err != nil {
			s.fail(hr, PhasePublish, ResultFailed, err)
			continue
		}
		hr.Result, hr.Phase, hr.Serial = ResultOK, PhasePublish, ts.Serial
		s.finish(hr, Event{Channel: opts.Channel, Serial: ts.Serial, Message: "timestamp valid until " + ts.Expires.Format(time.RFC3339)})
	}
	return rep, rep.Err()
}

// Approve adds the session's publisher key's signature to every selected
// host's release of serial opts.Serial (0: the channel's last) of the
// channel: a k-of-n channel's hosts act on a release only once the
// threshold of publisher keys signed it (docs/trust.md). The releases'
// content is not changed; what is signed is shown first.
func (s *Session) Approve(ctx context.Context, opts PublishOptions) (*Report, error) {
	if err := s.checkPublish(opts); err != nil {
		return nil, err
	}
	cfgs, err := s.pullConfigs(ctx, opts.Channel)
	if err != nil {
		return nil, err
	}
	t, err := s.channelTrust(cfgs)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	if t == nil {
		return nil, &UsageError{Err: fmt.Errorf("approve: channel %q has no root, so its releases need one signature and there is nothing to approve (docs/trust.md)", opts.Channel)}
	}
	keys, k := t.Keys(agentapi.RolePublisher)
	if !hasKey(keys, s.PublisherKey) {
		return nil, &UsageError{Err: fmt.Errorf("approve: key %q is not one of root version %d's publisher keys %s", s.PublisherKey.Name, t.Root.Version, keyNames(keys))}
	}
	store, err := s.channelStore(opts.Channel)
	if err != nil {
		return nil, err
	}
	head, _, err := readChannelDoc(ctx, store, channel.HeadKey, keys)
	if err != nil {
		return nil, err
	}
	if head == nil {
		return nil, &UsageError{Err: fmt.Errorf("approve: channel %q has no release yet", opts.Channel)}
	}
	serial := opts.Serial
	if serial == 0 {
		serial = head.Serial
	}
	if serial != head.Serial {
		if head, _, err = readChannelDoc(ctx, store, channel.HistoryKey(head.Epoch, serial), keys); err != nil {
			return nil, err
		}
		if head == nil {
			return nil, &UsageError{Err: fmt.Errorf("approve: channel %q has no record of serial %d", opts.Channel, serial)}
		}
	}
	rep := s.begin("", nil)
	defer s.end(rep)
	s.emit(Event{Type: EventPublish, State: "started", Channel: opts.Channel, Serial: serial,
		Message: fmt.Sprintf("channel %s serial %d, published %s by %s from commit %s (%q): adding %s's signature (the hosts need %d)",
			opts.Channel, serial, head.Published.Format(time.RFC3339), head.Publisher, head.GitRev, head.Message, s.PublisherKey.Name, k)})
	for _, name := range s.names() {
		hr := rep.Hosts[name]
		doc, _, err := store.Read(ctx, channel.ReleaseKey(name))
		if err != nil {
			s.fail(hr, PhasePublish, ResultFailed, fmt.Errorf("reading its release: %w", err))
			continue
		}
		rel := &agentapi.Release{}
		signers, err := channel.OpenThreshold(doc, agentapi.DocRelease, keys, 1, rel)
		switch {
		case err != nil:
			err = fmt.Errorf("its release is not signed by a publisher key of root version %d: %w (not approved)", t.Root.Version, err)
		case rel.Serial != serial || rel.Host != name || rel.Channel != opts.Channel:
			err = fmt.Errorf("its release is serial %d, not %d (not approved)", rel.Serial, serial)
		case time.Now().After(rel.Deadline) && !rel.Deadline.IsZero():
			err = fmt.Errorf("its wave's deadline %s has passed: publish again (not approved)", rel.Deadline.Format(time.RFC3339))
		}
		if err == nil {
			hr.System = rel.System
			doc, err = channel.AddSignatures(doc, agentapi.DocRelease, s.PublisherKey)
		}
		if err == nil {
			err = store.Put(ctx, channel.ReleaseKey(name), doc)
		}
		if err != nil {
			s.fail(hr, PhasePublish, ResultFailed, err)
			continue
		}
		n := len(signers)
		if !slices.Contains(signers, s.PublisherKey.Name) {
			n++
		}
		hr.Result, hr.Phase, hr.Serial = ResultOK, PhasePublish, serial
		s.finish(hr, Event{Channel: opts.Channel, Serial: serial, System: rel.System,
			Message: fmt.Sprintf("serial %d (%s, git %s): %d of %d signatures", serial, rel.Message, rel.GitRev, n, k)})
	}
	return rep, rep.Err()
}

// sameJSON reports whether two JSON documents are the same but for
// insignificant white space.
func sameJSON(a, b []byte) bool {
	var x, y bytes.Buffer
	return json.Compact(&x, a) == nil && json.Compact(&y, b) == nil && bytes.Equal(x.Bytes(), y.Bytes())
}
