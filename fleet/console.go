package fleet

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/console"
	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/pull/channel"
)

// ConsoleOptions are the settings of [Session.PublishConsole].
type ConsoleOptions struct {
	// Channel is the channel's name.
	Channel string
	// RefreshSeconds: the page reads the channel again this often (0:
	// only when asked).
	RefreshSeconds int
	// ReadAllStatuses makes the page read every host's own status
	// document, not only those its wave's report does not hold.
	ReadAllStatuses bool
	// History is how many publishes the page shows (0: 10).
	History int
}

// ConsoleResult is the page [Session.PublishConsole] wrote.
type ConsoleResult struct {
	// Key is where it is in the bucket (relative to the bucket's prefix:
	// channels/NAME/index.html); URL is where a browser opens it (under
	// the cache's fetch_url).
	Key, URL string
	// Size is the page's, ConfigSize its console.json's (the keys).
	Size, ConfigSize int
	// Hosts is how many hosts' keys it holds; Unverifiable names those
	// without an ed25519 host_key (their statuses show as unverified).
	Hosts        int
	Unverifiable []string
}

// PublishConsole writes the fleet console ([console.Page], and its keys
// in console.json) into channel
// opts.Channel's prefix of the fleet's bucket, beside the documents it
// reads. It trusts what ChannelStatus trusts: the publisher keys of the
// selected hosts' pull blocks for that channel (and of their root), with
// the session's own publisher key, and each selected host's host_key.
// Nothing is built and no host is contacted.
func (s *Session) PublishConsole(ctx context.Context, opts ConsoleOptions) (*ConsoleResult, error) {
	if s.Fleet == nil || s.Fleet.Cache == nil {
		return nil, s.configError(nil, "No cache block", errNoCache)
	}
	if err := channel.CheckName("channel", opts.Channel); err != nil {
		return nil, &UsageError{Err: err}
	}
	cfg, err := s.consoleConfig(ctx, opts)
	if err != nil {
		return nil, err
	}
	res := &ConsoleResult{Key: channel.Root(opts.Channel) + "/" + console.PageKey, Hosts: len(cfg.Hosts)}
	for _, h := range cfg.Hosts {
		if h.Key == "" {
			res.Unverifiable = append(res.Unverifiable, h.Name)
		}
	}
	target := ""
	if len(s.Targets) == 1 {
		target = s.Targets[0]
	}
	page, err := console.Page(opts.Channel, console.PageInfo{Target: target, Generated: time.Now()})
	if err != nil {
		return nil, err
	}
	conf, err := console.EncodeConfig(cfg)
	if err != nil {
		return nil, err
	}
	res.Size, res.ConfigSize = len(page), len(conf)
	store, err := s.channelStore(opts.Channel)
	if err != nil {
		return nil, err
	}
	// The keys first: a page never reads keys older than itself.
	for _, o := range []struct {
		key, ctype string
		data       []byte
	}{
		{console.ConfigKey, "application/json", conf},
		{console.PageKey, "text/html; charset=utf-8", page},
	} {
		if tp, ok := store.(typedPutter); ok {
			err = tp.PutTyped(ctx, o.key, o.data, o.ctype)
		} else {
			err = store.Put(ctx, o.key, o.data)
		}
		if err != nil {
			return nil, fmt.Errorf("channel %s: writing %s: %w", store, o.key, err)
		}
	}
	if fu := s.Fleet.Cache.FetchURL; fu != "" {
		res.URL = channel.URL(fu, opts.Channel) + "/" + console.PageKey
	}
	return res, nil
}

// typedPutter is a store that writes an object with its content type (a
// browser needs text/html for the page).
type typedPutter interface {
	PutTyped(ctx context.Context, key string, data []byte, contentType string) error
}

// PutTyped implements typedPutter.
func (c *s3Channel) PutTyped(ctx context.Context, key string, data []byte, contentType string) error {
	return c.b.WriteObject(ctx, key, data, contentType, "", false)
}

// consoleConfig is what the page trusts and reads.
func (s *Session) consoleConfig(ctx context.Context, opts ConsoleOptions) (*console.Config, error) {
	cfg := &console.Config{Channel: opts.Channel, PublisherThreshold: 1, History: opts.History,
		ReadAllStatuses: opts.ReadAllStatuses, RefreshSeconds: opts.RefreshSeconds}
	keys, err := s.trustedPublisherKeys(ctx, opts.Channel)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		cfg.PublisherKeys = append(cfg.PublisherKeys, console.Key{Name: k.Name, Key: base64.StdEncoding.EncodeToString(k.Key)})
	}
	if len(keys) == 0 {
		return nil, s.configError(nil, "No publisher key", "no selected host follows channel %q with publisher keys, and no --publisher-key was given: the console could verify nothing", opts.Channel)
	}
	// The root's threshold and the hosts' document limit, from their
	// pull blocks (evaluated again: nothing is built).
	for _, h := range s.Selected {
		if s.Builder == nil {
			break
		}
		c, diags := s.Builder.EvaluateDry(ctx, s.Fleet, h.Name)
		if diags.HasErrors() {
			continue // trustedPublisherKeys reported it
		}
		pc, _ := modules.PullConfig(c, s.Builder.Store.StoreDir)
		if pc == nil || pc.Channel != opts.Channel {
			continue
		}
		if t, err := channel.ParseRoot(pc.Root); err == nil && t.Root.Version > cfg.RootVersion {
			// The newest root the fleet names: its thresholds and
			// timestamp keys.
			_, cfg.PublisherThreshold = t.Keys(agentapi.RolePublisher)
			tk, k := t.Keys(agentapi.RoleTimestamp)
			cfg.TimestampKeys, cfg.TimestampThreshold, cfg.RootVersion = nil, k, t.Root.Version
			for _, key := range tk {
				cfg.TimestampKeys = append(cfg.TimestampKeys, console.Key{Name: key.Name, Key: base64.StdEncoding.EncodeToString(key.Key)})
			}
		}
		cfg.MaxDocumentSize = max(cfg.MaxDocumentSize, pc.MaxDocumentSize)
	}
	for _, h := range s.Selected {
		k := console.Key{Name: h.Name}
		if pk, err := channel.ParseHostKey(h.HostKey); err == nil {
			k.Key = base64.StdEncoding.EncodeToString(pk)
		}
		cfg.Hosts = append(cfg.Hosts, k)
	}
	if len(cfg.Hosts) == 0 {
		return nil, errors.New("console: no host selected")
	}
	return cfg, nil
}
