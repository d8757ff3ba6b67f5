package pull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/pull/channel"
)

// loadTrust sets the poll's root: the newer of the generation's
// (PullConfig.Root) and the one the host accepted through the channel.
func (p *poll) loadTrust() error {
	t, err := channel.ParseRoot(p.a.Config.Root)
	if err != nil {
		return fmt.Errorf("pull config: the channel's root: %w", err)
	}
	if t.Root.Channel != p.a.Config.Channel {
		return fmt.Errorf("pull config: the root is channel %q's, this host follows %q", t.Root.Channel, p.a.Config.Channel)
	}
	if p.st.Root != nil {
		if have, err := channel.ParseRoot(p.st.Root); err == nil && have.Root.Version > t.Root.Version && have.Root.Channel == t.Root.Channel {
			t = have
		}
	}
	p.adopt(t)
	return nil
}

// adopt makes t the host's root, resetting the serial once when t says so.
func (p *poll) adopt(t *channel.Trust) {
	p.trust = t
	if t.Root.ResetSerial && t.Root.Version > p.st.MinRoot {
		p.a.logf("root version %d resets the serial (was %d): releases signed under an earlier root are refused from now on", t.Root.Version, p.st.Serial)
		p.st.Serial, p.st.MinRoot, p.st.Done, p.st.Accepted = 0, t.Root.Version, "", ""
		p.dirty = true
	}
}

// climb follows the channel's root chain from the host's root up to
// version want: each root signed by the threshold of the one before.
func (p *poll) climb(ctx context.Context, want int64) error {
	for p.trust.Root.Version < want {
		v := p.trust.Root.Version + 1
		data, _, err := p.a.getDocument(ctx, channel.RootKey(v), "")
		if err != nil {
			return fmt.Errorf("root version %d (named by the timestamp): %w", v, err)
		}
		n, err := p.trust.Next(data)
		if err != nil {
			return err
		}
		p.a.logf("root version %d accepted (signed by the root keys of version %d)", v, v-1)
		p.st.Root = data
		p.adopt(n)
		if err := p.save(); err != nil {
			return err
		}
	}
	return nil
}

// trusted reads and verifies the release of a channel with a root: the
// host's timestamp (one conditional GET: an idle poll ends there), fresh
// and signed by the timestamp role, names the release; the release must
// be that one, signed by the publisher role's threshold. It returns the
// release's payload hash and the release to act on, or the poll's result.
func (p *poll) trusted(ctx context.Context) (string, *agentapi.Release, *Result, error) {
	a, st, cfg := p.a, p.st, p.a.Config
	if err := p.loadTrust(); err != nil {
		return "", nil, nil, err
	}
	etag := ""
	if st.TSDoc != nil {
		etag = st.TSETag
	}
	data, newETag, err := a.getDocument(ctx, channel.TimestampKey(cfg.Host), etag)
	var tooLarge *limits.TooLargeError
	switch {
	case errors.As(err, &tooLarge):
		return "", nil, p.refuseTooLarge(ctx, err), nil
	case errors.Is(err, channel.ErrNotModified):
		data = st.TSDoc
	case errors.Is(err, fs.ErrNotExist):
		data = nil
	case err != nil:
		p.flush(ctx)
		return "", nil, nil, fmt.Errorf("reading the timestamp: %w", err)
	default:
		st.TSDoc, st.TSETag, p.dirty = data, newETag, true
	}

	// The timestamp: the newest accepted one, or this one if it is valid
	// (after climbing to the root it names).
	var ts *agentapi.Timestamp
	if st.Timestamp != nil {
		ts, _ = p.trust.VerifyTimestamp(st.Timestamp, channel.TimestampCheck{Host: cfg.Host})
	}
	if data != nil && !bytes.Equal(data, st.Timestamp) {
		// A timestamp that names a newer root is verified under that root
		// (the timestamp keys may have changed with it): climb first, on
		// the timestamp's word, which is only a hint of where to look; each
		// root of the chain is verified by the one before.
		var climbErr error
		if claims, cerr := channel.TimestampClaims(data); cerr == nil && claims.Root > p.trust.Root.Version {
			if climbErr = p.climb(ctx, claims.Root); climbErr != nil && !errors.As(climbErr, new(*channel.RefusedError)) {
				p.flush(ctx)
				return "", nil, nil, climbErr
			}
		}
		next, err := p.trust.VerifyTimestamp(data, channel.TimestampCheck{Host: cfg.Host, Version: versionOf(ts)})
		if err == nil && next.Root > p.trust.Root.Version {
			err = &channel.RefusedError{Doc: agentapi.DocTimestamp, Serial: next.Serial, Err: channel.ErrMismatch,
				Detail: fmt.Sprintf("the timestamp names root version %d, which this host could not accept: %v", next.Root, climbErr)}
		}
		var refused *channel.RefusedError
		switch {
		case errors.As(err, &refused):
			if _, err := p.refuse(ctx, refused, ""); err != nil {
				return "", nil, nil, err
			}
		case err != nil:
			p.flush(ctx)
			return "", nil, nil, err
		default:
			ts, st.Timestamp, p.dirty = next, data, true
		}
	}
	if ts == nil && data == nil && st.Timestamp == nil {
		return "", nil, &Result{Action: "no-release"}, p.flush(ctx)
	}

	// Fresh? An expired root or timestamp (or none) is acted on never.
	now := a.now()
	stale := p.trust.Expired(now)
	if stale == "" && ts == nil {
		stale = "no valid timestamp for this host in the channel"
	}
	if stale == "" {
		stale = channel.TimestampExpired(ts, now)
	}
	if stale != "" {
		changed := st.Stale != stale
		if changed {
			a.logf("stale: %s; acting on nothing until the channel is fresh", stale)
		}
		if st.Stale == "" {
			st.StaleSince = now
		}
		st.Stale = stale
		if changed {
			p.recordPull(ts)
		}
		return "", nil, &Result{Action: "stale", Serial: st.Serial}, p.report(ctx, func(*agentapi.PullStatus) {})
	}
	if st.Stale != "" {
		a.logf("the channel is fresh again (timestamp valid until %s)", ts.Expires.UTC().Format("2006-01-02T15:04:05Z"))
		st.Stale, st.StaleSince, p.dirty = "", time.Time{}, true
		if err := p.report(ctx, func(*agentapi.PullStatus) {}); err != nil {
			return "", nil, nil, err
		}
	}
	if p.dirty {
		// Only what changed is written: an idle poll writes nothing.
		if err := p.save(); err != nil {
			return "", nil, nil, err
		}
		p.recordPull(ts)
	}

	// The release the timestamp names.
	if ts.Release == "" {
		return "", nil, &Result{Action: "no-release"}, p.flush(ctx)
	}
	if ts.Release == st.Done || ts.Release == st.Accepted {
		st.Done = ts.Release
		return "", nil, &Result{Action: "none", Serial: st.Serial}, p.flush(ctx)
	}
	etag = ""
	if st.Doc != nil {
		etag = st.ETag
	}
	doc, newETag, err := a.getDocument(ctx, channel.ReleaseKey(cfg.Host), etag)
	switch {
	case errors.As(err, &tooLarge):
		return "", nil, p.refuseTooLarge(ctx, err), nil
	case errors.Is(err, channel.ErrNotModified):
		doc = st.Doc
	case errors.Is(err, fs.ErrNotExist):
		return p.mismatch(ctx, ts, "there is no release document")
	case err != nil:
		p.flush(ctx)
		return "", nil, nil, fmt.Errorf("reading the release: %w", err)
	default:
		st.Doc, st.ETag = doc, newETag
		if err := p.save(); err != nil {
			return "", nil, nil, err
		}
	}
	h, err := channel.PayloadHash(doc, agentapi.DocRelease)
	if err != nil || h != ts.Release {
		return p.mismatch(ctx, ts, "the release document is another one")
	}
	keys, k := p.trust.Keys(agentapi.RolePublisher)
	rel, signers, err := channel.ReleaseCheck{Keys: keys, Threshold: k, Channel: cfg.Channel, Host: cfg.Host,
		Current: st.Serial, MinRoot: st.MinRoot}.Verify(doc)
	if errors.Is(err, channel.ErrThreshold) && rel != nil {
		msg := fmt.Sprintf("waiting for approval: signed by %d of the %d publisher keys needed (%v)", len(signers), k, signers)
		if st.Status == nil || st.Status.Message != msg || st.Status.Serial != rel.Serial {
			a.logf("serial %d: %s", rel.Serial, msg)
		}
		return "", nil, &Result{Action: "waiting", Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) {
			s.Serial, s.System, s.Wave, s.Outcome, s.Message = rel.Serial, rel.System, rel.Wave, agentapi.PullWaiting, msg
			s.Generation, s.Check = 0, ""
		})
	}
	if err == nil && rel.Serial != ts.Serial {
		err = &channel.RefusedError{Serial: rel.Serial, Err: channel.ErrMismatch, Detail: fmt.Sprintf("serial %d, the timestamp names %d", rel.Serial, ts.Serial)}
	}
	rel, res, err := p.checkRelease(ctx, rel, h, err)
	return h, rel, res, err
}

func versionOf(ts *agentapi.Timestamp) int64 {
	if ts == nil {
		return 0
	}
	return ts.Version
}

// mismatch is a timestamp whose release is not in the channel: a publish
// that is still writing (the releases go first, so this is brief), or
// someone serving one release with another's timestamp. The host acts on
// nothing and tries again at the next poll.
func (p *poll) mismatch(ctx context.Context, ts *agentapi.Timestamp, what string) (string, *agentapi.Release, *Result, error) {
	err := &channel.RefusedError{Serial: ts.Serial, Err: channel.ErrMismatch, Detail: fmt.Sprintf("the timestamp names serial %d (%.12s), %s", ts.Serial, ts.Release, what)}
	res, rerr := p.refuse(ctx, err, "waiting")
	return "", nil, res, rerr
}

// refuse reports a refused document once (the same reason again is not
// written again), without using up a serial. It returns the poll's result
// with action (default "refused"); a nil result when action is "" and the
// poll goes on.
func (p *poll) refuse(ctx context.Context, refused *channel.RefusedError, action string) (*Result, error) {
	reason := refused.Error()
	if p.st.Status == nil || p.st.Status.Refused == nil || p.st.Status.Refused.Reason != reason {
		p.a.logf("%s", reason)
		if err := p.report(ctx, func(s *agentapi.PullStatus) {
			s.Refused = &agentapi.PullRefusal{Serial: refused.Serial, Reason: reason, Time: p.a.now()}
		}); err != nil {
			return nil, err
		}
	}
	if action == "" {
		return nil, nil
	}
	return &Result{Action: action, Serial: refused.Serial}, p.flush(ctx)
}

// recordPull puts the channel's freshness into the agent's Prometheus
// textfile (deploy_pull_stale and its kin); a failure is logged only.
func (p *poll) recordPull(ts *agentapi.Timestamp) {
	m := activation.PullMetrics{Stale: p.st.Stale != "", StaleSince: p.st.StaleSince, Root: p.trust.Root.Version, Serial: p.st.Serial}
	if ts != nil {
		m.Expires = ts.Expires
	}
	if err := p.l.RecordPull(p.a.Config.Channel, m); err != nil {
		p.a.logf("%v", err)
	}
}
