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
// releases (default $DEPLOY_PUBLISHER_KEY).
type publisherKeyFlag struct{ file string }

func (f *publisherKeyFlag) register(fs *flag.FlagSet) {
	fs.StringVar(&f.file, "publisher-key", "", "secret key `file` that signs the channel's releases (default $DEPLOY_PUBLISHER_KEY; deploy cache key generate NAME makes one)")
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
	pos, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if opts.Channel == "" {
		return usageErrorf("publish: --channel NAME is required")
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	ck, err := kf.load(e)
	if err != nil {
		return err
	}
	pk, err := pf.load(e)
	if err != nil {
		return err
	}
	v := newView(e, asJSON, true)
	var hf hostFlags
	s := hf.session(e, "publish", pos, v)
	s.Builder, s.CacheKey, s.PublisherKey, s.Getenv = b, ck, pk, e.getenv
	rep, err := runSession(s, v, func() (*fleet.Report, error) { return s.Publish(ctx, opts) })
	if !asJSON {
		view.Results(e.stdout, s.Selected, rep)
	}
	return err
}
