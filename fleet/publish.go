package fleet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache"
	"github.com/declarative/deploy/internal/fanout"
	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/pull/channel"
)

// PublishOptions are the settings of [Session.Publish] and
// [Session.ChannelRollback].
type PublishOptions struct {
	// Channel is the channel's name.
	Channel string
	// Message is recorded with the release (and the hosts' generations).
	Message string
	// WaveTimeout is how long each wave has to report before the later
	// waves stop (0: the deployment's wave_timeout, else 30 minutes).
	WaveTimeout time.Duration
	// Serial is the serial to publish (0: the channel's last one plus 1);
	// it must be above the channel's.
	Serial int64
	// Wait follows the rollout until every host reported its outcome, or
	// cannot any more (its wave's time ran out, or an earlier wave
	// stopped the rollout); Poll is how often the statuses are read
	// (default 2s).
	Wait bool
	Poll time.Duration
	// ToSerial is the publish whose systems [Session.ChannelRollback]
	// returns to (0: the one before the channel's last).
	ToSerial int64
	// TimestampExpiry is how long the hosts' timestamps are valid, in a
	// channel with a root (0: DefaultTimestampExpiry).
	TimestampExpiry time.Duration
}

// Publish builds every selected host, pushes their whole closures to the
// fleet's cache, and publishes one signed release per host to the channel,
// in the selected deployment's batches as waves (docs/pull.md). No host is
// contacted: hosts pull. With Wait it follows the rollout through the
// hosts' status documents; each host's result is then how its release
// ended (ok, rolled-back, failed, refused; skipped when the rollout stopped
// before its wave; unreachable when it did not report in time).
func (s *Session) Publish(ctx context.Context, opts PublishOptions) (*Report, error) {
	if err := s.checkPublish(opts); err != nil {
		return nil, err
	}
	if s.CacheKey == nil {
		return nil, &UsageError{Err: errors.New("publish: no signing key for the cache (--cache-key FILE or DEPLOY_CACHE_KEY): hosts fetch the closures from the cache, so they must be pushed")}
	}
	ro := s.pullRollout()
	rep := s.begin("", ro.Batches)
	defer s.end(rep)
	results, err := s.build(ctx, rep)
	if err != nil {
		return rep, err
	}
	keys := []*cache.PublicKey{s.PublisherKey.Public()}
	systems := map[string]string{}
	cfgs := map[string]*agentapi.PullConfig{}
	for _, h := range s.Selected {
		res := results[h.Name]
		cfg, diags := modules.PullConfig(res.Config, s.Builder.Store.StoreDir)
		if diags.HasErrors() {
			s.diag(s.Fleet, diags)
			return rep, &ConfigError{Diags: diags}
		}
		pull := modules.PullOf(res.Config)
		if cfg == nil {
			return rep, s.configError(h.DefRange.Ptr(), "Host does not pull",
				"Host %q has no pull block, so it would never read the release of channel %q: add pull { channel = %q ... } to it, or select other hosts.", h.Name, opts.Channel, opts.Channel)
		}
		if cfg.Channel != opts.Channel {
			return rep, s.configError(pull.Range("channel"), "Host pulls from another channel",
				"Host %q pulls from channel %q, so it would never read the release of channel %q: change its channel, or select other hosts.", h.Name, cfg.Channel, opts.Channel)
		}
		cfgs[h.Name] = cfg
		if cfg.Root == nil && !slices.Contains(cfg.PublisherKeys, s.PublisherKey.Public().String()) {
			return rep, s.configError(pull.Range("publisher_keys"), "Host does not trust the publisher key",
				"Host %q would refuse a release signed with publisher key %q: its publisher_keys are %s. Add the key, or publish with one of them.", h.Name, s.PublisherKey.Name, strings.Join(cfg.PublisherKeys, ", "))
		}
		if cfg.StatusURL == "" && len(ro.Batches) > 1 && !slices.Contains(ro.Batches[len(ro.Batches)-1], h.Name) {
			return rep, s.configError(pull.DefRange.Ptr(), "Host cannot report to the channel",
				"Host %q has no status_credentials in its pull block, so it cannot report, and the waves after its own would wait for it until their deadline: give it status_credentials, or publish in one wave.", h.Name)
		}
		keys = appendKeys(keys, cfg.PublisherKeys)
		systems[h.Name] = results[h.Name].SystemPath
		hr := rep.Hosts[h.Name]
		hr.System = systems[h.Name]
	}
	t, err := s.channelTrust(cfgs)
	if err != nil {
		return rep, &UsageError{Err: fmt.Errorf("publish: %w", err)}
	}
	if t != nil {
		if err := s.checkSigners(t); err != nil {
			return rep, err
		}
		keys, _ = t.Keys(agentapi.RolePublisher)
	}
	// The whole closures, system paths included: hosts fetch everything.
	var roots []string
	for _, h := range s.Selected {
		roots = append(roots, systems[h.Name])
	}
	if err := s.pushClosures(ctx, roots); err != nil {
		return rep, fmt.Errorf("publish: pushing the closures: %w (nothing was published)", err)
	}
	return s.publishSystems(ctx, rep, opts, ro, systems, keys, t, 0)
}

// pullRollout is the rollout of a pull-mode release: its waves are the
// deployment's batches, each split so that no wave holds more hosts of a
// group than its disruption budget allows ([SplitWaves]).
func (s *Session) pullRollout() Rollout {
	ro := s.Rollout()
	ro.Batches = SplitWaves(ro.Batches, ro.Budgets)
	return ro
}

// ChannelRollback publishes, as a new and higher serial, the systems that
// an earlier publish gave the selected hosts (opts.ToSerial, default the
// one before the channel's last): a rollback through the channel, which
// hosts accept because its serial is new. Nothing is built; the closures
// must still be in the cache.
func (s *Session) ChannelRollback(ctx context.Context, opts PublishOptions) (*Report, error) {
	if err := s.checkPublish(opts); err != nil {
		return nil, err
	}
	ro := s.pullRollout()
	keys, err := s.trustedPublisherKeys(ctx, opts.Channel)
	if err != nil {
		return nil, err
	}
	cfgs, err := s.pullConfigs(ctx, opts.Channel)
	if err != nil {
		return nil, err
	}
	t, err := s.channelTrust(cfgs)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("rollback: %w", err)}
	}
	if t != nil {
		if err := s.checkSigners(t); err != nil {
			return nil, err
		}
		keys, _ = t.Keys(agentapi.RolePublisher)
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
		return nil, &UsageError{Err: fmt.Errorf("rollback: channel %q has no release yet", opts.Channel)}
	}
	to := opts.ToSerial
	if to == 0 {
		to = head.Serial - 1
	}
	if to <= 0 || to >= head.Serial {
		return nil, &UsageError{Err: fmt.Errorf("rollback: --to-serial %d: want an earlier serial of channel %q (its last is %d)", to, opts.Channel, head.Serial)}
	}
	old, _, err := readChannelDoc(ctx, store, channel.HistoryKey(head.Epoch, to), keys)
	if err != nil {
		return nil, err
	}
	if old == nil {
		return nil, &UsageError{Err: fmt.Errorf("rollback: channel %q has no record of serial %d (pass --to-serial with one that exists; deploy status --channel shows the last)", opts.Channel, to)}
	}
	w, err := OpenCacheWriter(s.Fleet.Cache.URL, s.Getenv)
	if err != nil {
		return nil, err
	}
	systems := map[string]string{}
	for _, h := range s.Selected {
		sys, ok := old.Systems[h.Name]
		if !ok {
			return nil, &UsageError{Err: fmt.Errorf("rollback: host %s was not in serial %d of channel %q", h.Name, to, opts.Channel)}
		}
		rc, err := w.Get(ctx, cache.Key(sys))
		if err != nil {
			return nil, fmt.Errorf("rollback: host %s: serial %d's system %s: %w (no longer in the cache: publish it again)", h.Name, to, sys, err)
		}
		rc.Close()
		systems[h.Name] = sys
	}
	if opts.Message == "" {
		opts.Message = fmt.Sprintf("rollback to serial %d", to)
	}
	rep := s.begin("", ro.Batches)
	defer s.end(rep)
	for name, sys := range systems {
		rep.Hosts[name].System = sys
	}
	return s.publishSystems(ctx, rep, opts, ro, systems, keys, t, to)
}

func (s *Session) checkPublish(opts PublishOptions) error {
	if s.Fleet == nil || s.Fleet.Cache == nil {
		return s.configError(nil, "No cache block", errNoCache)
	}
	if err := channel.CheckName("channel", opts.Channel); err != nil {
		return &UsageError{Err: err}
	}
	if s.PublisherKey == nil {
		return &UsageError{Err: errors.New("no publisher key: pass --publisher-key FILE or set DEPLOY_PUBLISHER_KEY (deploy cache key generate NAME makes one)")}
	}
	for _, h := range s.Selected {
		if err := channel.CheckName("host", h.Name); err != nil {
			return s.configError(h.DefRange.Ptr(), "Host name unfit for a channel", "%s: a host's name becomes part of the channel's object keys; rename the host to publish to it.", err)
		}
	}
	return s.checkReportKeys(opts)
}

// checkReportKeys refuses a host whose status reports would be needed (a
// host of every wave but the last, whose report the later waves wait for;
// every host with Wait) but could not be verified: a report counts only
// when the host's ed25519 host_key verifies its signature.
func (s *Session) checkReportKeys(opts PublishOptions) error {
	ro := s.pullRollout()
	var last []string
	if len(ro.Batches) > 0 {
		last = ro.Batches[len(ro.Batches)-1]
	}
	for _, h := range s.Selected {
		if !opts.Wait && slices.Contains(last, h.Name) {
			continue
		}
		if _, err := channel.ParseHostKey(h.HostKey); err == nil {
			continue
		}
		who := "the hosts of the later waves wait for its status report"
		if opts.Wait {
			who = "publish --wait follows its status report"
			if !slices.Contains(last, h.Name) {
				who = "the hosts of the later waves and publish --wait follow its status report"
			}
		}
		what := fmt.Sprintf("Host %q has no host_key", h.Name)
		if h.HostKey != "" {
			what = fmt.Sprintf("Host %q's host_key is not an ssh-ed25519 key", h.Name)
		}
		return s.configError(h.DefRange.Ptr(), "Host has no ed25519 host key",
			"%s, and %s: a host signs its reports with its SSH ed25519 host key (%s), and a report its host_key does not verify counts as no report. "+
				"Add host_key = \"ssh-ed25519 AAAA...\" to the host (deploy keyscan %s prints it), or publish it in the last wave without --wait.",
			what, who, agentapi.DefaultHostKeyFile, h.Address)
	}
	return nil
}

// reportKeys maps each selected host with an ed25519 host_key to it: the
// keys that verify their status reports.
func (s *Session) reportKeys() map[string]string {
	keys := map[string]string{}
	for _, h := range s.Selected {
		if _, err := channel.ParseHostKey(h.HostKey); err == nil {
			keys[h.Name] = h.HostKey
		}
	}
	return keys
}

// trustedPublisherKeys evaluates the selected hosts (nothing is built) for
// the publisher keys of their pull blocks for channel name, with the
// session's own key: the keys whose signatures on the channel's records
// are believed.
func (s *Session) trustedPublisherKeys(ctx context.Context, name string) ([]*cache.PublicKey, error) {
	var keys []*cache.PublicKey
	if s.PublisherKey != nil {
		keys = append(keys, s.PublisherKey.Public())
	}
	if s.Builder == nil {
		return keys, nil
	}
	for _, h := range s.Selected {
		cfg, diags := s.Builder.EvaluateDry(ctx, s.Fleet, h.Name)
		if diags.HasErrors() {
			s.diag(s.Fleet, diags)
			return nil, &ConfigError{Diags: diags}
		}
		if pc, _ := modules.PullConfig(cfg, s.Builder.Store.StoreDir); pc != nil && pc.Channel == name {
			keys = appendKeys(keys, pc.PublisherKeys)
			if t, err := channel.ParseRoot(pc.Root); err == nil {
				rk, _ := t.Keys(agentapi.RolePublisher)
				for _, k := range rk {
					keys = appendKeys(keys, []string{k.String()})
				}
			}
		}
	}
	return keys, nil
}

func appendKeys(keys []*cache.PublicKey, more []string) []*cache.PublicKey {
	for _, k := range more {
		pk, err := cache.ParsePublicKey(k)
		if err != nil || slices.ContainsFunc(keys, func(x *cache.PublicKey) bool { return x.String() == pk.String() }) {
			continue
		}
		keys = append(keys, pk)
	}
	return keys
}

// readChannelDoc reads and verifies a channel record (the head or a
// publish's); nil when there is none. A record that is not signed by one of
// keys is an error: someone other than a publisher wrote it.
func readChannelDoc(ctx context.Context, store channel.Store, key string, keys []*cache.PublicKey) (*agentapi.ChannelRelease, string, error) {
	data, etag, err := store.Read(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("channel %s: %s: %w", store, key, err)
	}
	cr := &agentapi.ChannelRelease{}
	if _, err := channel.Open(data, agentapi.DocChannel, keys, cr); err != nil {
		return nil, "", fmt.Errorf("channel %s: %s: %w (the channel's record is not signed by a publisher key the fleet trusts: someone else wrote to the bucket, or pass the right --publisher-key)", store, key, err)
	}
	return cr, etag, nil
}

// publishSystems writes the channel's new head and record, then each
// host's release, first wave first; with opts.Wait it follows the rollout.
func (s *Session) publishSystems(ctx context.Context, rep *Report, opts PublishOptions, ro Rollout, systems map[string]string, keys []*cache.PublicKey, t *channel.Trust, rollbackTo int64) (*Report, error) {
	store, err := s.channelStore(opts.Channel)
	if err != nil {
		return rep, err
	}
	var rootVersion int64
	if t != nil {
		rootVersion = t.Root.Version
		if err := s.putRoots(ctx, store, t); err != nil {
			return rep, fmt.Errorf("publish: %w", err)
		}
	}
	head, headTag, err := readChannelDoc(ctx, store, channel.HeadKey, keys)
	if err != nil && t != nil && t.Root.ResetSerial {
		// A root that resets the serials was made to step over a head
		// signed by a key it revoked: start again below it.
		var herr error
		if _, headTag, herr = store.Read(ctx, channel.HeadKey); herr == nil {
			head, err = nil, nil
		}
	}
	if err != nil {
		return rep, err
	}
	serial, epoch := int64(1), int64(0)
	if head != nil {
		epoch = head.Epoch
	}
	switch {
	case t != nil && t.Root.ResetSerial && (head == nil || head.RootVersion < t.Root.Version):
		// The first publish under a root that resets serials.
		epoch = t.Root.Version
	case head == nil:
	case head.Serial == math.MaxInt64:
		return rep, fmt.Errorf("publish: channel %q is at the highest serial there is (%d): a publisher key that leaked fast-forwarded it; recover with deploy trust revoke DIR KEYNAME --reset-serial (docs/trust.md); nothing was published", opts.Channel, head.Serial)
	default:
		serial = head.Serial + 1
	}
	if opts.Serial != 0 {
		if opts.Serial < serial {
			return rep, &UsageError{Err: fmt.Errorf("publish: --serial %d is not above channel %q's last serial %d", opts.Serial, opts.Channel, serial-1)}
		}
		serial = opts.Serial
	}
	timeout := opts.WaveTimeout
	if timeout == 0 && s.Deployment != nil {
		timeout = s.Deployment.WaveTimeout
	}
	if timeout == 0 {
		timeout = 30 * time.Minute
	}
	meta := GenerationMeta(s.Fleet.Dir, opts.Message)
	now := time.Now().UTC().Truncate(time.Millisecond)
	cr := &agentapi.ChannelRelease{V: agentapi.Version, Channel: opts.Channel, Serial: serial, GitRev: meta["git_rev"],
		Publisher: meta["operator"], Message: opts.Message, Published: now, Systems: systems, Waves: ro.Batches,
		WaveTimeoutMS: timeout.Milliseconds(), MaxFailures: ro.MaxFailures, RollbackTo: rollbackTo, RootVersion: rootVersion, Epoch: epoch}
	data, err := channel.Sign(agentapi.DocChannel, cr, s.PublisherKey)
	if err != nil {
		return rep, err
	}
	// The head first: its conditional write claims the serial, so two
	// publishes never give out the same one.
	cond := channel.Cond{IfAbsent: true}
	if headTag != "" {
		cond = channel.Cond{IfMatch: headTag}
	}
	if err := store.Write(ctx, channel.HeadKey, data, cond); err != nil {
		if errors.Is(err, channel.ErrConflict) {
			return rep, fmt.Errorf("publish: channel %q changed while this publish read it (another publish?): nothing was published; run it again", opts.Channel)
		}
		return rep, fmt.Errorf("publish: %w", err)
	}
	if err := store.Write(ctx, channel.HistoryKey(epoch, serial), data, channel.Cond{IfAbsent: true}); err != nil {
		return rep, fmt.Errorf("publish: recording serial %d: %w", serial, err)
	}
	s.emit(Event{Type: EventPublish, State: "started", Channel: opts.Channel, Serial: serial, Batches: ro.Batches,
		Message: fmt.Sprintf("channel %s serial %d: %d hosts in %d waves", opts.Channel, serial, len(systems), len(ro.Batches))})
	releases := map[string]*agentapi.Release{}
	var earlier []string
	hostKeys := s.reportKeys()
	sizes := make([]int, len(ro.Batches))
	for i, wave := range ro.Batches {
		sizes[i] = len(wave)
	}
	for i, wave := range ro.Batches {
		for _, name := range wave {
			rel := &agentapi.Release{V: agentapi.Version, Channel: opts.Channel, Host: name, Serial: serial, System: systems[name],
				GitRev: meta["git_rev"], Publisher: meta["operator"], Message: opts.Message, Published: now,
				Wave: i + 1, Waves: len(ro.Batches), WaveSize: len(wave), Gatherer: slices.Index(wave, name) < channel.Gatherers,
				After: slices.Clone(earlier), MaxFailures: ro.MaxFailures, RollbackTo: rollbackTo, RootVersion: rootVersion}
			if s.Deployment != nil && s.Deployment.Window != nil {
				rel.Window = s.Deployment.Window.Spec
			}
			if i > 0 {
				rel.Deadline = now.Add(time.Duration(i) * timeout)
				rel.WaveSizes = sizes[:i]
				rel.AfterKeys = map[string]string{}
				for _, h := range earlier {
					rel.AfterKeys[h] = hostKeys[h]
				}
			}
			releases[name] = rel
		}
		earlier = append(earlier, wave...)
	}
	// With --wait, the rollout is followed from the moment the first wave's
	// releases are written, while the later waves' are being written: a
	// canary that fails early halts them in --wait's next poll, not after
	// the last release of a large fleet is out.
	w := &rolloutWatch{pending: map[string]bool{}, written: map[string]bool{}, stop: make(chan struct{})}
	watched := make(chan struct{})
	if opts.Wait {
		for _, name := range s.names() {
			w.pending[name] = true
		}
		go func() {
			defer close(watched)
			s.waitRollout(ctx, rep, store, cr, releases, hostKeys, opts.Poll, w)
		}()
	} else {
		close(watched)
	}
	failed := false
	for i, wave := range ro.Batches {
		if failed {
			break
		}
		// The hosts of a wave in parallel; the waves in order, so that no
		// host of a later wave has its release while an earlier wave's
		// writing failed.
		left := fanout.Each(ctx, wave, publishWriters, func(ctx context.Context, name string) {
			rel, hr := releases[name], rep.Hosts[name]
			doc, err := channel.Sign(agentapi.DocRelease, rel, s.PublisherKey)
			if err == nil {
				err = store.Put(ctx, channel.ReleaseKey(name), doc)
			}
			if err == nil && t != nil {
				// After the release: a host that reads the timestamp
				// finds the release it names.
				_, err = s.putTimestamp(ctx, store, t, name, doc, opts.TimestampExpiry)
			}
			if err == nil {
				err = ctx.Err()
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			if err != nil {
				// The later waves get nothing: their hosts would wait for
				// this one until their deadline anyway.
				failed = true
				delete(w.pending, name)
				s.fail(hr, PhasePublish, ResultFailed, fmt.Errorf("writing the release: %w", err))
				return
			}
			w.written[name] = true
			s.emit(Event{Type: EventPhase, Host: name, Phase: PhasePublish, State: "done", Channel: opts.Channel, Serial: serial, Batch: i + 1, System: rel.System})
		})
		w.mu.Lock()
		for _, name := range left {
			failed = true
			delete(w.pending, name)
			s.fail(rep.Hosts[name], PhasePublish, ResultFailed, fmt.Errorf("writing the release: %w", ctx.Err()))
		}
		w.mu.Unlock()
	}
	if failed {
		close(w.stop)
		<-watched
		for _, name := range s.names() {
			hr := rep.Hosts[name]
			switch {
			case hr.Result != ResultSkipped || hr.Err != nil:
				// Failed, or its outcome is known.
			case w.written[name]:
				hr.Phase, hr.Serial, hr.Err = PhasePublish, serial, errors.New("published, but not followed: writing another host's release failed (deploy status --channel shows it)")
				s.finish(hr, Event{Channel: opts.Channel, Serial: serial})
			default:
				hr.Phase, hr.Err = PhasePublish, errors.New("not published: writing an earlier host's release failed")
				s.finish(hr, Event{Channel: opts.Channel, Serial: serial})
			}
		}
		s.emit(Event{Type: EventPublish, State: "failed", Channel: opts.Channel, Serial: serial})
		return rep, rep.Err()
	}
	done := Event{Type: EventPublish, State: "done", Channel: opts.Channel, Serial: serial, Batches: ro.Batches}
	if t != nil {
		if _, k := t.Keys(agentapi.RolePublisher); k > 1 {
			done.Message = fmt.Sprintf("signed by %s, 1 of the %d publisher signatures the hosts need: they act on it once deploy approve added the others (before the first wave's deadline, %s)",
				s.PublisherKey.Name, k, now.Add(timeout).Format(time.RFC3339))
		}
	}
	w.mu.Lock()
	s.emit(done)
	w.mu.Unlock()
	if !opts.Wait {
		for _, name := range s.names() {
			hr := rep.Hosts[name]
			hr.Result, hr.Phase, hr.Serial = ResultOK, PhasePublish, serial
			s.finish(hr, Event{Channel: opts.Channel, Serial: serial})
		}
		return rep, nil
	}
	<-watched
	if err := rep.Err(); err != nil || ctx.Err() == nil {
		return rep, err
	}
	return rep, fmt.Errorf("publish: serial %d published; stopped waiting for the hosts: %w", cr.Serial, ctx.Err())
}

// rolloutWatch is what publish --wait shares with the writing of the
// releases: the hosts whose outcome is not known yet, and the lock that
// orders their reports' changes and events.
type rolloutWatch struct {
	mu      sync.Mutex
	pending map[string]bool
	written map[string]bool
	// stop ends the watch without a word: writing the releases failed.
	stop chan struct{}
}

// publishWriters is how many hosts' releases a publish writes at once.
const publishWriters = 16

// waitRollout follows a published release until every host's outcome is
// known, from the waves' reports ([agentapi.WaveReport]: one read per wave
// per poll, whatever the fleet's size) and, for progress, the status
// documents of a few hosts of the wave that runs (statusReads per poll, in
// turn). A poll's reads run at once, and polls start poll apart (at once
// after a poll that took longer), so that what a report says is seen
// within one poll on a slow channel too. Only a status that the host's key
// (hostKeys) verifies counts; any other is said once, and is no report. A
// host of a later wave halts as soon as the reports say the gate halts it.
//
// It runs while the releases are being written: w orders its changes to
// rep with the writers', and the writers take the hosts whose release they
// failed to write out of w.pending.
func (s *Session) waitRollout(ctx context.Context, rep *Report, store channel.Store, cr *agentapi.ChannelRelease, releases map[string]*agentapi.Release, hostKeys map[string]string, poll time.Duration, w *rolloutWatch) {
	if poll <= 0 {
		poll = 2 * time.Second
	}
	timeout := time.Duration(cr.WaveTimeoutMS) * time.Millisecond
	reports := map[string]*agentapi.PullStatus{}
	etags := map[int]string{}
	seen, warned := map[string]string{}, map[string]string{}
	pending := w.pending
	turn := 0
	// verify believes host's status document (said once when it does not
	// verify); it returns nil for one that does not.
	verify := func(name string, data []byte) *agentapi.PullStatus {
		st, err := channel.VerifyStatus(data, cr.Channel, name, hostKeys[name])
		if err != nil && warned[name] != err.Error() {
			warned[name] = err.Error()
			s.emit(Event{Type: EventWarning, Host: name, Phase: PhasePull, Serial: cr.Serial, Message: err.Error() + ": not believed"})
		}
		return st
	}
	// final ends a host from a status of this serial that is final.
	final := func(name string, st *agentapi.PullStatus) bool {
		if st == nil || st.Serial != cr.Serial || !st.Outcome.Final() {
			return false
		}
		reports[name] = st
		if pending[name] {
			delete(pending, name)
			s.finishPull(rep.Hosts[name], st, cr.Serial)
		}
		return true
	}
	// fetch reads keys at once, without holding w.mu, which the loop
	// holds otherwise: the writers of the releases are not held up by a
	// slow channel, and a poll's reads take one round trip, not one each.
	type got struct {
		data []byte
		etag string
		err  error
	}
	fetch := func(keys []string) []got {
		w.mu.Unlock()
		defer w.mu.Lock()
		out := make([]got, len(keys))
		var wg sync.WaitGroup
		sem := make(chan struct{}, publishWriters)
		for i, key := range keys {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				out[i].data, out[i].etag, out[i].err = store.Read(ctx, key)
			})
		}
		wg.Wait()
		return out
	}
	for {
		w.mu.Lock()
		if len(pending) == 0 {
			w.mu.Unlock()
			return
		}
		started := time.Now()
		// What this poll reads: each wave's report that may hold a pending
		// host, and the status documents of a few hosts of the running
		// wave in turn (progress, a refusal, a report that did not reach
		// the wave's report), and of every host whose wave's time is up.
		var waves []int
		var keys, look []string
		active := 0
		for i, wave := range cr.Waves {
			if !slices.ContainsFunc(wave, func(h string) bool { return pending[h] }) {
				continue
			}
			if active == 0 {
				active = i + 1
			}
			waves = append(waves, i+1)
			keys = append(keys, channel.WaveReportKey(cr.Serial, cr.RootVersion, i+1))
		}
		if active > 0 {
			var waiting []string
			for _, h := range cr.Waves[active-1] {
				if pending[h] {
					waiting = append(waiting, h)
				}
			}
			for k := range min(statusReads, len(waiting)) {
				look = append(look, waiting[(turn+k)%len(waiting)])
			}
			turn += statusReads
		}
		for _, name := range s.names() {
			if rel := releases[name]; pending[name] && started.After(cr.Published.Add(time.Duration(rel.Wave)*timeout)) && !slices.Contains(look, name) {
				look = append(look, name)
			}
		}
		for _, name := range look {
			keys = append(keys, channel.StatusKey(name))
		}
		res := fetch(keys)
		now := time.Now()
		// 1. The waves' reports.
		for k, wv := range waves {
			data, etag, err := res[k].data, res[k].etag, res[k].err
			if err != nil || etag == etags[wv] {
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					s.emit(Event{Type: EventLog, Phase: PhasePull, Message: fmt.Sprintf("reading wave %d's report: %v", wv, err)})
				}
				continue
			}
			etags[wv] = etag
			wr := channel.DecodeWaveReport(data, cr.Channel, cr.Serial, wv)
			if wr == nil {
				continue
			}
			for _, name := range cr.Waves[wv-1] {
				if doc, ok := wr.Reports[name]; ok && pending[name] {
					final(name, verify(name, doc))
				}
			}
		}
		// 2. The hosts' own status documents.
		for k, name := range look {
			rel, hr := releases[name], rep.Hosts[name]
			data, err := res[len(waves)+k].data, res[len(waves)+k].err
			if !pending[name] {
				// Its wave's report ended it, or its release could not be
				// written meanwhile.
				continue
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhasePull, Message: fmt.Sprintf("reading the status: %v", err)})
			}
			var st *agentapi.PullStatus
			if data != nil {
				st = verify(name, data)
			}
			if st != nil && st.Serial == cr.Serial {
				if key := string(st.Outcome) + "\x00" + st.Message; seen[name] != key {
					seen[name] = key
					s.emitPullProgress(name, st)
				}
				if final(name, st) {
					continue
				}
			}
			if st != nil && st.Serial < cr.Serial && st.Refused != nil && st.Refused.Serial == cr.Serial && !st.Refused.Time.Before(cr.Published) {
				// The host refused this very release (a key it does not
				// trust, say): it will never act on it.
				hr.Result, hr.Phase, hr.Serial, hr.Pull = ResultRefused, PhasePull, cr.Serial, st
				hr.Err = errors.New(st.Refused.Reason)
				delete(pending, name)
				s.finish(hr, Event{Channel: cr.Channel, Serial: cr.Serial, PullStatus: st})
				continue
			}
			if deadline := cr.Published.Add(time.Duration(rel.Wave) * timeout); now.After(deadline) {
				what := "did not report"
				if st != nil && st.Serial == cr.Serial {
					what = fmt.Sprintf("was still %s (%s)", st.Outcome, st.Message)
				}
				hr.Result, hr.Phase, hr.Serial, hr.Pull = ResultUnreachable, PhasePull, cr.Serial, st
				hr.Err = fmt.Errorf("%s serial %d by %s, the end of wave %d's time", what, cr.Serial, deadline.Format(time.RFC3339), rel.Wave)
				if why := warned[name]; why != "" {
					hr.Err = fmt.Errorf("%w; %s", hr.Err, why)
				}
				delete(pending, name)
				s.finish(hr, Event{Channel: cr.Channel, Serial: cr.Serial})
			}
		}
		// 3. The hosts of later waves that the reports halt.
		for _, name := range s.names() {
			if rel := releases[name]; pending[name] && rel.Wave > 1 {
				if d, reason := channel.GateReports(rel, now, reports); d == channel.Halt {
					hr := rep.Hosts[name]
					hr.Result, hr.Phase, hr.Serial, hr.Err = ResultSkipped, PhasePull, cr.Serial, errors.New("halted: "+reason)
					delete(pending, name)
					s.finish(hr, Event{Channel: cr.Channel, Serial: cr.Serial})
				}
			}
		}
		w.mu.Unlock()
		select {
		case <-w.stop:
			return
		case <-ctx.Done():
			w.mu.Lock()
			defer w.mu.Unlock()
			for _, name := range s.names() {
				if pending[name] {
					hr := rep.Hosts[name]
					hr.Phase, hr.Err = PhasePull, fmt.Errorf("stopped waiting: %w (the rollout goes on; deploy status --channel %s shows it)", ctx.Err(), cr.Channel)
					s.finish(hr, Event{Channel: cr.Channel, Serial: cr.Serial})
				}
			}
			return
		case <-time.After(time.Until(started.Add(poll))):
		}
	}
}

// statusReads is how many hosts of the running wave deploy publish --wait
// reads the status documents of per poll, in turn, for their progress.
const statusReads = 8

// emitPullProgress turns a host's status into events: activating starts
// the pull phase, waiting and the rest are log lines.
func (s *Session) emitPullProgress(host string, st *agentapi.PullStatus) {
	switch st.Outcome {
	case agentapi.PullActivating:
		s.emit(Event{Type: EventPhase, Host: host, Phase: PhasePull, State: "started", Serial: st.Serial, System: st.System, Message: "activating"})
	case agentapi.PullWaiting:
		s.emit(Event{Type: EventLog, Host: host, Phase: PhasePull, Serial: st.Serial, Message: st.Message})
	}
}

// finishPull ends a host from its final status.
func (s *Session) finishPull(hr *HostReport, st *agentapi.PullStatus, serial int64) {
	hr.Phase, hr.Serial, hr.Pull, hr.Generation = PhasePull, serial, st, st.Generation
	if st.System != "" {
		// A wave report's entry does not repeat the system: the release's
		// stays.
		hr.System = st.System
	}
	msg := st.Message
	if st.Check != "" {
		msg = fmt.Sprintf("health check %q: %s", st.Check, msg)
	}
	switch st.Outcome {
	case agentapi.PullDone:
		hr.Result = ResultOK
	case agentapi.PullRolledBack:
		hr.Result, hr.Err = ResultRolledBack, errors.New("rolled back: "+msg)
	case agentapi.PullRefused:
		hr.Result, hr.Err = ResultRefused, errors.New(msg)
	case agentapi.PullHalted:
		hr.Result, hr.Err = ResultSkipped, errors.New("halted: "+msg)
	default:
		hr.Result, hr.Err = ResultFailed, errors.New(msg)
	}
	s.finish(hr, Event{Channel: st.Channel, Serial: serial, PullStatus: st})
}

// ChannelStatus reads the channel's last publish and each selected host's
// release and status documents (deploy status --channel): no host is
// contacted. Each host's report has Pull (its status, nil when it never
// reported) and Serial (the serial of its release in the channel). A status
// that the host's host_key does not verify is not shown: Pull is nil and
// Err wraps a *[channel.StatusError].
func (s *Session) ChannelStatus(ctx context.Context, name string) (*Report, *agentapi.ChannelRelease, error) {
	if s.Fleet == nil || s.Fleet.Cache == nil {
		return nil, nil, s.configError(nil, "No cache block", errNoCache)
	}
	if err := channel.CheckName("channel", name); err != nil {
		return nil, nil, &UsageError{Err: err}
	}
	keys, err := s.trustedPublisherKeys(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	store, err := s.channelStore(name)
	if err != nil {
		return nil, nil, err
	}
	rep := s.begin("", nil)
	defer s.end(rep)
	head, _, err := readChannelDoc(ctx, store, channel.HeadKey, keys)
	if err != nil {
		return rep, nil, err
	}
	hostKeys := s.reportKeys()
	// A host whose final status of the head's serial is in its wave's
	// report had the head's release: its release need not be read. Its
	// status is, as it may have changed since (a stale channel, say).
	reported := s.waveReports(ctx, store, head, hostKeys)
	each(ctx, s.names(), s.Parallel.connect(), func(ctx context.Context, host string) {
		hr := rep.Hosts[host]
		hr.Phase = PhasePull
		if st := reported[host]; st != nil {
			hr.Serial, hr.Wave, hr.System = head.Serial, st.Wave, head.Systems[host]
		} else if data, _, err := store.Read(ctx, channel.ReleaseKey(host)); err == nil {
			rel := &agentapi.Release{}
			if _, err := channel.Open(data, agentapi.DocRelease, keys, rel); err != nil {
				hr.Err = fmt.Errorf("its release in the channel: %w", err)
			} else {
				hr.Serial, hr.Wave, hr.System = rel.Serial, rel.Wave, rel.System
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			s.fail(hr, PhasePull, ResultUnreachable, fmt.Errorf("reading its release: %w", err))
			return
		}
		data, _, err := store.Read(ctx, channel.StatusKey(host))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			s.fail(hr, PhasePull, ResultUnreachable, fmt.Errorf("reading its status: %w", err))
			return
		default:
			// What an unverified status claims is not shown: only that
			// it did not verify.
			if hr.Pull, err = channel.VerifyStatus(data, name, host, hostKeys[host]); err != nil {
				if hr.Err != nil {
					err = fmt.Errorf("%w; %w", hr.Err, err)
				}
				hr.Err = err
			}
		}
		hr.Result = ResultOK
		s.finish(hr, Event{Channel: name, Serial: hr.Serial, PullStatus: hr.Pull})
	})
	return rep, head, rep.Err()
}

// waveReports reads the reports of head's waves and returns the verified
// final statuses of head's serial they hold, by host. A report that cannot
// be read or believed is as good as none: the hosts' own documents are
// read instead.
func (s *Session) waveReports(ctx context.Context, store channel.Store, head *agentapi.ChannelRelease, hostKeys map[string]string) map[string]*agentapi.PullStatus {
	got := map[string]*agentapi.PullStatus{}
	for i, wave := range head.Waves {
		data, _, err := store.Read(ctx, channel.WaveReportKey(head.Serial, head.RootVersion, i+1))
		if err != nil || int64(len(data)) > channel.WaveReportLimit(0) {
			continue
		}
		wr := channel.DecodeWaveReport(data, head.Channel, head.Serial, i+1)
		if wr == nil {
			continue
		}
		for _, h := range wave {
			doc, ok := wr.Reports[h]
			if !ok {
				continue
			}
			st, err := channel.VerifyStatus(doc, head.Channel, h, hostKeys[h])
			if err == nil && st.Serial == head.Serial && st.Outcome.Final() {
				got[h] = st
			}
		}
	}
	return got
}

// channelStore opens channel name of the fleet's cache for the publisher:
// the cache's s3:// bucket (credentials as for pushing) or file:// directory.
func (s *Session) channelStore(name string) (channel.Store, error) {
	st, err := s.openChannel(name)
	if err != nil || s.wrapChannel == nil {
		return st, err
	}
	return s.wrapChannel(st), nil
}

func (s *Session) openChannel(name string) (channel.Store, error) {
	raw := channel.URL(s.Fleet.Cache.URL, name)
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "s3":
		b, err := s3cache.Open(raw, s.Getenv)
		if err != nil {
			return nil, err
		}
		return &s3Channel{b: b}, nil
	case "file":
		return channel.DirStore(u.Path), nil
	}
	return nil, fmt.Errorf("channel %q: the cache URL %q is neither s3:// nor file://", name, s.Fleet.Cache.URL)
}

// s3Channel is a channel in an S3 bucket ([channel.Store]).
type s3Channel struct{ b *s3cache.Bucket }

func (c *s3Channel) String() string { return c.b.String() }

func (c *s3Channel) Read(ctx context.Context, key string) ([]byte, string, error) {
	return c.b.ReadObject(ctx, key)
}

func (c *s3Channel) Put(ctx context.Context, key string, data []byte) error {
	return c.Write(ctx, key, data, channel.Cond{})
}

func (c *s3Channel) Write(ctx context.Context, key string, data []byte, cond channel.Cond) error {
	err := c.b.WriteObject(ctx, key, data, "application/json", cond.IfMatch, cond.IfAbsent)
	if errors.Is(err, s3cache.ErrPreconditionFailed) {
		return fmt.Errorf("%w: %w", channel.ErrConflict, err)
	}
	return err
}
