package main

import (
	"context"
	"flag"
	"time"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"github.com/declarative/deploy/fleet"
)

// publisherKeyFlag is --publisher-key: the key that signs pull-mode
// releases (default $DEPLOY_PUBLISHER_KEY); and --timestamp-key, the keys
// that sign the hosts' timestamps of a channel with a root (default
// $DEPLOY_TIMESTAMP_KEY), with --timestamp-expiry.
type publisherKeyFlag struct {
	file       string
	timestamps []string
	expiry     time.Duration
}

func (f *publisherKeyFlag) register(fs *flag.FlagSet) {
	fs.StringVar(&f.file, "publisher-key", "", "secret key `file` that signs the channel's releases (default $DEPLOY_PUBLISHER_KEY; deploy cache key generate NAME makes one)")
	fs.Func("timestamp-key", "secret key `file` that signs the hosts' timestamps, for a channel with a root (repeatable; default $DEPLOY_TIMESTAMP_KEY)", func(v string) error {
		f.timestamps = append(f.timestamps, v)
		return nil
	})
	fs.DurationVar(&f.expiry, "timestamp-expiry", fleet.DefaultTimestampExpiry, "how long the hosts' timestamps are valid: hosts act on nothing after, unless publish --refresh signed them again")
}

// timestampKeys reads the timestamp keys (none when none are given).
func (f *publisherKeyFlag) timestampKeys(e *env) ([]*cache.SecretKey, error) {
	files := f.timestamps
	if len(files) == 0 {
		if v := e.getenv("DEPLOY_TIMESTAMP_KEY"); v != "" {
			files = []string{v}
		}
	}
	var keys []*cache.SecretKey
	for _, file := range files {
		k, err := loadKey(e, file, "", "timestamp key", "deploy cache key generate NAME writes one; deploy trust puts its public half in the channel's root")
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// signers sets s's publisher and timestamp keys, and opts' expiry.
func (f *publisherKeyFlag) signers(e *env, s *fleet.Session, opts *fleet.PublishOptions) error {
	pk, err := f.load(e)
	if err != nil {
		return err
	}
	tk, err := f.timestampKeys(e)
	if err != nil {
		return err
	}
	s.PublisherKey, s.TimestampKeys, opts.TimestampExpiry = pk, tk, f.expiry
	return nil
}

// load reads the key; nil when none is given.
func (f *publisherKeyFlag) load(e *env) (*cache.SecretKey, error) {
	return loadKey(e, f.file, "DEPLOY_PUBLISHER_KEY", "publisher key",
		"deploy cache key generate NAME writes one; its public half goes in the hosts' pull { publisher_keys }")
}

// runPublish is deploy publish DIR#TARGET --channel NAME: build the
// selected hosts, push their closures to the fleet's cache, and publish a
// signed release per host to the channel, for hosts in pull mode to
// deploy themselves (docs/pull.md). No host is contacted.
func runPublish(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var kf cacheKeyFlag
	var pf publisherKeyFlag
	var opts fleet.PublishOptions
	var asJSON bool
	fs := newFlags(e, "publish", "DIR#TARGET... --channel NAME")
	bf.register(fs)
	kf.register(fs)
	pf.register(fs)
	fs.StringVar(&opts.Channel, "channel", "", "the channel's `name` (the hosts' pull { channel })")
	fs.StringVar(&opts.Message, "message", "", "a `message` recorded with the release and the hosts' generations")
	fs.BoolVar(&opts.Wait, "wait", false, "follow the rollout until every host reported; the exit code says how it ended")
	fs.DurationVar(&opts.WaveTimeout, "wave-timeout", 0, "how long each wave has to report before the later waves stop (default: the deployment's wave_timeout, else 30m)")
	fs.DurationVar(&opts.Poll, "poll", 2*time.Second, "with --wait, how often the hosts' statuses are read")
	fs.Int64Var(&opts.Serial, "serial", 0, "publish with this serial (default: the channel's last plus one); it must be above the channel's")
	fs.BoolVar(&asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	var refresh bool
	fs.BoolVar(&refresh, "refresh", false, "build nothing: sign the selected hosts' timestamps again (channel with a root; run it from cron more often than --timestamp-expiry)")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if opts.Channel == "" {
		return usageErrorf("publish: --channel NAME is required")
	}
	if refresh && (opts.Wait || opts.Serial != 0 || opts.Message != "") {
		return usageErrorf("publish: --refresh publishes nothing new: it goes without --wait, --serial and --message")
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	ck, err := kf.load(e)
	if err != nil {
		return err
	}
	v := newView(e, asJSON, true)
	var hf hostFlags
	s := hf.session(e, "publish", pos, v)
	if err := pf.signers(e, s, &opts); err != nil {
		return err
	}
	s.Builder, s.CacheKey, s.Getenv = b, ck, e.getenv
	rep, err := runSession(s, v, func() (*fleet.Report, error) {
		if refresh {
			return s.Refresh(ctx, opts)
		}
		return s.Publish(ctx, opts)
	})
	if !asJSON {
		view.Results(e.stdout, s.Selected, rep)
	}
	return err
}

// runApprove is deploy approve DIR#TARGET --channel NAME [--serial N]:
// add the publisher key's signature to the selected hosts' releases, for
// a channel whose root needs more than one (docs/trust.md).
func runApprove(ctx context.Context, e *env, args []string) error {
	var bf buildFlags
	var pf publisherKeyFlag
	var opts fleet.PublishOptions
	var asJSON bool
	fs := newFlags(e, "approve", "DIR#TARGET... --channel NAME [--serial N]")
	bf.register(fs)
	pf.register(fs)
	fs.StringVar(&opts.Channel, "channel", "", "the channel's `name`")
	fs.Int64Var(&opts.Serial, "serial", 0, "the serial to approve (default: the channel's last)")
	fs.BoolVar(&asJSON, "json", false, "print the event stream as JSON lines on stdout (docs/events.md)")
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if opts.Channel == "" {
		return usageErrorf("approve: --channel NAME is required")
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	v := newView(e, asJSON, true)
	var hf hostFlags
	s := hf.session(e, "approve", pos, v)
	if err := pf.signers(e, s, &opts); err != nil {
		return err
	}
	s.Builder, s.Getenv = b, e.getenv
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Approve(ctx, opts) })
	if !asJSON {
		view.Results(e.stdout, s.Selected, rep)
	}
	return err
}
