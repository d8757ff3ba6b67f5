package modules

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/pull/channel"
	"github.com/hashicorp/hcl/v2"
)

// KindPull is the pull setting: the host deploys itself from a channel.
const KindPull = "pull"

// The units that poll, in a generation with a pull block (the agent's
// configuration is at [agentapi.PullConfigFile]).
const (
	PullServiceUnit = "deploy-pull.service"
	PullTimerUnit   = "deploy-pull.timer"
)

// CacheRef is what a host's configuration needs of the fleet's cache block
// (pull mode's channels live in the cache's bucket).
type CacheRef struct {
	// URL is where the operator pushes (s3:// or file://), FetchURL where
	// hosts read (http(s):// or file://).
	URL        string
	FetchURL   string
	PublicKeys []string
}

// pullKind makes the generation install deploy-agent pull: a timer that
// polls the channel and a oneshot service that verifies, fetches and
// activates a new release (docs/pull.md).
func pullKind() *Kind {
	return &Kind{Name: KindPull, Doc: "pull mode: the host deploys itself from a signed channel in the fleet's cache (docs/pull.md)",
		Attrs: []Attr{
			{Name: "channel", Type: str, Required: true, Doc: "the channel's name (deploy publish --channel NAME)"},
			{Name: "root", Type: str, Doc: `the channel's signed root of trust, file("trust/NAME/root.json") as deploy trust init writes it: publisher and timestamp keys with thresholds, expiring timestamps, rotation (docs/trust.md)`},
			{Name: "publisher_keys", Type: strList, Merge: MergeSet, Doc: `without a root: keys whose release signatures the host trusts ("name:base64"; one signature is enough, no freshness)`},
			{Name: "interval", Type: str, Doc: `how often the host polls (default "1m")`},
			{Name: "jitter", Type: str, Doc: "a random delay added to each poll, to spread a fleet's polls (default a tenth of the interval, at most 5m)"},
			{Name: "status_credentials", Type: str, Doc: "a file on the host (secret.NAME.path) with S3 credentials that may write the channel's status prefix; without it an s3 channel's host does not report"},
			{Name: "max_document_size", Type: str, Doc: `the largest release, status or narinfo the host reads (default "1MiB")`},
			{Name: "max_nar_size", Type: str, Doc: `the largest store path (NAR) the host fetches (default "8GiB")`},
			{Name: "fetch_timeout", Type: str, Doc: `a document's whole deadline, and the floor of a NAR's (default "1m")`},
			{Name: "fetch_min_rate", Type: str, Doc: `the slowest average rate a NAR's deadline allows for, per second, beyond fetch_timeout (default "64KiB")`},
			{Name: "host_key_file", Type: str, Doc: "the host's OpenSSH ed25519 private key that signs its status reports, whose public half is the host's host_key (default /etc/ssh/ssh_host_ed25519_key)"},
		},
		Check:   checkPull,
		Realize: realizePull,
	}
}

func checkPull(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if ch := r.String("channel", ""); channel.CheckName("channel", ch) != nil {
		diags = append(diags, errAt(r.Range("channel"), "Invalid channel name",
			"channel = %q: use letters, digits, '.', '_' and '-', starting with a letter or digit.", ch))
	}
	keys := r.Strings("publisher_keys")
	switch {
	case r.Has("root") && len(keys) > 0:
		diags = append(diags, errAt(r.Range("publisher_keys"), "Both root and publisher_keys",
			"A pull block with a root takes its publisher keys from the root: remove publisher_keys (deploy trust rotate --add-publisher adds a key to the root)."))
	case r.Has("root"):
		t, err := channel.ParseRoot([]byte(r.String("root", "")))
		switch {
		case err != nil:
			diags = append(diags, errAt(r.Range("root"), "Invalid root",
				"root is not a channel's signed root: %s. Use root = file(\"trust/NAME/root.json\") as deploy trust init writes it; deploy trust show says what it lacks, deploy trust sign adds root signatures.", err))
		case t.Root.Channel != r.String("channel", ""):
			diags = append(diags, errAt(r.Range("root"), "Root of another channel",
				"The root is channel %q's; this pull block follows %q.", t.Root.Channel, r.String("channel", "")))
		case t.Expired(time.Now()) != "":
			diags = append(diags, errAt(r.Range("root"), "Root expired",
				"%s: hosts would act on nothing. Sign a new version with deploy trust rotate --expires.", t.Expired(time.Now())))
		}
	case len(keys) == 0:
		diags = append(diags, errAt(r.Range("publisher_keys"), "No publisher keys",
			"A pull block needs a root (root = file(\"trust/NAME/root.json\"), deploy trust init) or publisher_keys listing at least one key (\"name:base64\", as deploy cache key generate prints it): the host runs only releases signed by them."))
	}
	for _, k := range keys {
		if _, err := cache.ParsePublicKey(k); err != nil {
			diags = append(diags, errAt(r.Range("publisher_keys"), "Invalid publisher key", "%s.", err))
		}
	}
	for _, a := range []string{"interval", "jitter"} {
		if !r.Has(a) {
			continue
		}
		d, err := time.ParseDuration(r.String(a, ""))
		if err != nil || d < 0 || (a == "interval" && d < time.Second) {
			diags = append(diags, errAt(r.Range(a), "Invalid "+a, "%s = %q: want a duration like \"30s\" or \"5m\"%s.", a, r.String(a, ""),
				map[bool]string{true: " of at least 1s"}[a == "interval"]))
		}
	}
	for _, a := range []string{"max_document_size", "max_nar_size", "fetch_min_rate"} {
		if !r.Has(a) {
			continue
		}
		if n, err := limits.ParseSize(r.String(a, "")); err != nil || n < 1024 {
			diags = append(diags, errAt(r.Range(a), "Invalid "+a, "%s = %q: want a size of at least 1KiB, such as \"64MiB\".", a, r.String(a, "")))
		}
	}
	if r.Has("fetch_timeout") {
		if d, err := time.ParseDuration(r.String("fetch_timeout", "")); err != nil || d < time.Second {
			diags = append(diags, errAt(r.Range("fetch_timeout"), "Invalid fetch_timeout", "fetch_timeout = %q: want a duration of at least 1s, such as \"2m\".", r.String("fetch_timeout", "")))
		}
	}
	if c := r.String("status_credentials", ""); r.Has("status_credentials") && (!path.IsAbs(c) || path.Clean(c) != c) {
		diags = append(diags, errAt(r.Range("status_credentials"), "Invalid status_credentials",
			"status_credentials = %q must be an absolute path on the host, such as secret.NAME.path.", c))
	}
	if c := r.String("host_key_file", ""); r.Has("host_key_file") && (!path.IsAbs(c) || path.Clean(c) != c) {
		diags = append(diags, errAt(r.Range("host_key_file"), "Invalid host_key_file",
			"host_key_file = %q must be an absolute path on the host, such as %q.", c, agentapi.DefaultHostKeyFile))
	}
	return diags
}

// PullOf returns the host's pull block, nil when it has none.
func PullOf(cfg *Config) *Resource {
	for _, r := range cfg.Resources {
		if r.Kind.Name == KindPull {
			return r
		}
	}
	return nil
}

// PullInterval returns a pull block's interval and jitter.
func PullInterval(r *Resource) (interval, jitter time.Duration) {
	interval = time.Minute
	if d, err := time.ParseDuration(r.String("interval", "")); err == nil && d > 0 {
		interval = d
	}
	jitter = min(interval/10, 5*time.Minute)
	if d, err := time.ParseDuration(r.String("jitter", "")); err == nil && r.Has("jitter") {
		jitter = d
	}
	return interval, jitter
}

// PullConfig is the pull configuration that cfg's generation installs
// ([agentapi.PullConfigFile]) for the agent whose store is storeDir: the one source of
// a host's pull setting, for the host and for the publisher. It is nil
// when the host has no pull block; an error when it has one but the fleet
// has no cache.
func PullConfig(cfg *Config, storeDir string) (*agentapi.PullConfig, hcl.Diagnostics) {
	r := PullOf(cfg)
	if r == nil {
		return nil, nil
	}
	ref := cfg.Cache
	if ref == nil {
		return nil, hcl.Diagnostics{errAt(r.nameRange(), "Pull mode needs a cache",
			"A pull block needs the fleet's cache block: the channel's releases and the closures live in the cache's bucket (docs/pull.md).")}
	}
	name := r.String("channel", "")
	interval, _ := PullInterval(r)
	pc := &agentapi.PullConfig{V: agentapi.Version, Host: cfg.Host, Channel: name,
		URL:           channel.URL(ref.FetchURL, name),
		PublisherKeys: r.Strings("publisher_keys"),
		Root:          rootDoc(r),
		CacheURL:      ref.FetchURL, CacheKeys: ref.PublicKeys,
		StateDir:   path.Dir(storeDir),
		IntervalMS: interval.Milliseconds(),
	}
	pc.MaxDocumentSize, _ = limits.ParseSize(r.String("max_document_size", "0"))
	pc.MaxNarSize, _ = limits.ParseSize(r.String("max_nar_size", "0"))
	pc.FetchMinRate, _ = limits.ParseSize(r.String("fetch_min_rate", "0"))
	if d, err := time.ParseDuration(r.String("fetch_timeout", "")); err == nil {
		pc.FetchTimeoutMS = d.Milliseconds()
	}
	pc.HostKeyFile = r.String("host_key_file", "")
	pc.Notify = cfg.Notify
	if u, err := url.Parse(ref.URL); err == nil && (u.Scheme == "file" || r.Has("status_credentials")) {
		pc.StatusURL = channel.URL(ref.URL, name)
		pc.StatusCredentials = r.String("status_credentials", "")
	}
	return pc, nil
}

// rootDoc is the pull block's root, as the host gets it (nil for none).
func rootDoc(r *Resource) json.RawMessage {
	if !r.Has("root") {
		return nil
	}
	var doc json.RawMessage
	if json.Unmarshal([]byte(r.String("root", "")), &doc) != nil {
		return nil
	}
	return doc
}

func realizePull(c *Realization, rs []*Resource) {
	for _, r := range rs {
		cfg, diags := PullConfig(c.Config, c.z.StoreDir)
		if diags.HasErrors() {
			c.diags = append(c.diags, diags...)
			continue
		}
		name := cfg.Channel
		interval, jitter := PullInterval(r)
		data, err := json.MarshalIndent(cfg, "", "  ")
		if err != nil {
			c.diags = append(c.diags, errAt(r.nameRange(), "Cannot encode the pull configuration", "%s.", err))
			continue
		}
		src := c.add(r, "deploy-pull.json", append(data, '\n'), false, "channel")
		c.Manifest.Files = append(c.Manifest.Files, manifest.File{Path: agentapi.PullConfigFile, Source: src, Owner: "root", Group: "root", Mode: "0644"})

		service := fmt.Sprintf(`# Generated by deploy; changes are overwritten at the next activation.

[Unit]
Description=deploy: pull releases of channel %[1]s
Wants=network-online.target
After=network-online.target %[2]s

StartLimitIntervalSec=0

[Service]
Type=oneshot
ExecStart=/run/deploy/current-system/agent/bin/deploy-agent pull --config %[3]s
# A poll every interval: systemd's own "Starting/Finished" lines (info)
# would flood the journal; the agent's lines are notices, and failures
# are still logged.
SyslogLevel=notice
LogLevelMax=notice
`, name, "deploy-boot.service", agentapi.PullConfigFile)
		accuracy := "1s"
		if interval < 10*time.Second {
			accuracy = "100ms"
		}
		timer := fmt.Sprintf(`# Generated by deploy; changes are overwritten at the next activation.

[Unit]
Description=deploy: poll channel %[1]s every %[2]s

[Timer]
OnActiveSec=1s
OnUnitInactiveSec=%[2]s
RandomizedDelaySec=%[3]s
AccuracySec=%[4]s
Unit=%[5]s

[Install]
WantedBy=timers.target
`, name, systemdSpan(interval), systemdSpan(jitter), accuracy, PullServiceUnit)
		c.Manifest.Units = append(c.Manifest.Units,
			manifest.Unit{Name: PullServiceUnit, Source: c.add(r, StoreName(PullServiceUnit, "unit"), []byte(service), false, "channel"),
				RestartHash: triggerHash([]string{service})},
			manifest.Unit{Name: PullTimerUnit, Source: c.add(r, StoreName(PullTimerUnit, "unit"), []byte(timer), false, "interval"),
				WantedBy: []string{"timers.target"}, Start: true, RestartHash: triggerHash([]string{timer})})
	}
}

// systemdSpan writes d as a systemd time span ("1min 30s" is also fine, but
// milliseconds keep it exact).
func systemdSpan(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d/time.Millisecond)
}
