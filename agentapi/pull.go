package agentapi

import (
	"encoding/json"
	"time"
)

// Pull mode's documents (docs/pull.md). A publisher (deploy publish, in CI)
// writes one signed [Release] per host and one signed [ChannelRelease] per
// publish into a channel in the fleet's bucket; each host's agent (deploy-agent
// pull) reads its own release, and writes a [PullStatus] back. A host's
// [PullConfig] says where all this is and whom to trust. They carry [Version]
// like every document of this package.

// Release is what one host of a channel is to run: one per host and
// publish, signed by a publisher key, inside a [SignedDocument] of type
// [DocRelease]. A host acts on a release only when the signature is by a key
// it trusts, Channel and Host are its own, and Serial is above every serial
// it accepted before.
type Release struct {
	V       int    `json:"v"`
	Channel string `json:"channel"`
	Host    string `json:"host"`
	// Serial orders the releases of a channel: every publish (and rollback
	// through the channel) takes the next one.
	Serial int64 `json:"serial"`
	// System is the store path of the host's system closure, which the
	// channel's binary cache holds, signed.
	System string `json:"system"`
	// Generation metadata, recorded with the generation on the host.
	GitRev    string    `json:"git_rev,omitempty"`
	Publisher string    `json:"publisher,omitempty"`
	Message   string    `json:"message,omitempty"`
	Published time.Time `json:"published"`
	// Wave is the host's rollout wave (1 is first) of Waves.
	Wave  int `json:"wave"`
	Waves int `json:"waves"`
	// After lists the hosts of the earlier waves: this host activates only
	// once each of them reported this serial, at most MaxFailures of them
	// not healthy, and none after Deadline (zero in wave 1).
	After       []string  `json:"after,omitempty"`
	MaxFailures int       `json:"max_failures,omitempty"`
	Deadline    time.Time `json:"deadline,omitzero"`
	// Window is the deployment's maintenance window ([ParseWindow]): the
	// host activates the release only while it is open, and waits
	// (reporting so) otherwise.
	Window string `json:"window,omitempty"`
	// AfterKeys names, for each host of After, the key its status
	// documents must be signed with: its SSH ed25519 host key, as an
	// authorized_keys line ("ssh-ed25519 AAAA..."). A status that this key
	// does not verify counts as no report.
	AfterKeys map[string]string `json:"after_keys,omitempty"`
	// WaveSizes is the number of hosts of each wave, in order: After holds
	// the hosts of wave 1, then those of wave 2, and so on, so a host finds
	// which [WaveReport] holds an earlier host's report. A release without
	// it (an older publisher) is gated on each host's status document.
	WaveSizes []int `json:"wave_sizes,omitempty"`
	// WaveSize is the number of hosts of this host's own wave, whose
	// gatherers make its report from its hosts' entries. Zero (an older
	// publisher): each host adds itself to the report.
	WaveSize int `json:"wave_size,omitempty"`
	// Gatherer: this host gathers its wave's report from the wave's
	// entries, at each poll after its own until the report holds the whole
	// wave (the publisher names the first few hosts of each wave).
	Gatherer bool `json:"gatherer,omitempty"`
	// RollbackTo is the serial whose systems this release returns to when
	// it was published by a rollback through the channel.
	RollbackTo int64 `json:"rollback_to,omitempty"`
	// RootVersion is the version of the channel's root the publisher
	// signed under (0 without a root): a host that reset its serial at root
	// version R refuses releases below R.
	RootVersion int64 `json:"root_version,omitempty"`
}

// ChannelRelease describes one publish to a channel: the systems of every
// host it included, and its waves. It is the channel's head (channel.json)
// and its history (releases/SERIAL.json), signed like a release, inside a
// [SignedDocument] of type [DocChannel]. Operators read it (deploy status
// --channel, deploy rollback --channel); hosts never do.
type ChannelRelease struct {
	V         int       `json:"v"`
	Channel   string    `json:"channel"`
	Serial    int64     `json:"serial"`
	GitRev    string    `json:"git_rev,omitempty"`
	Publisher string    `json:"publisher,omitempty"`
	Message   string    `json:"message,omitempty"`
	Published time.Time `json:"published"`
	// Systems maps each host of the publish to its system.
	Systems map[string]string `json:"systems"`
	// Waves are the hosts of each wave, in order.
	Waves [][]string `json:"waves"`
	// WaveTimeoutMS is how long each wave has to report, in milliseconds;
	// MaxFailures how many hosts may fail before later waves stop.
	WaveTimeoutMS int64 `json:"wave_timeout_ms"`
	MaxFailures   int   `json:"max_failures,omitempty"`
	RollbackTo    int64 `json:"rollback_to,omitempty"`
	// RootVersion is the channel's root version the publish was signed
	// under (0 without a root); Epoch the root version at which the
	// channel's serials were last reset (0 when never).
	RootVersion int64 `json:"root_version,omitempty"`
	Epoch       int64 `json:"epoch,omitempty"`
}

// Types of signed documents.
const (
	DocRelease = "release"
	DocChannel = "channel"
	// DocStatus is a host's [PullStatus], signed with its host key (the
	// signature's key name is the host's name).
	DocStatus = "status"
)

// SignedDocument is a signed [Release], [ChannelRelease] or [PullStatus]:
// Payload is the document's JSON, base64 (standard encoding), exactly as
// signed. Each signature is ed25519 over "deploy TYPE v1\n" followed by the
// decoded payload, by a key in Nix's format (the binary cache's keys:
// "name:base64") or, for a status, by the host's SSH ed25519 host key, so
// that a signature of one type of document, or a narinfo signature by the
// same key, never verifies as another.
type SignedDocument struct {
	V          int         `json:"v"`
	Type       string      `json:"type"`
	Payload    string      `json:"payload"`
	Signatures []Signature `json:"signatures"`
}

// Signature is one signature of a [SignedDocument]: the key's name and the
// base64 ed25519 signature.
type Signature struct {
	Key string `json:"key"`
	Sig string `json:"sig"`
}

// PullOutcome is where a host is with a release, in its [PullStatus].
type PullOutcome string

// The outcomes of a release on a host. Waiting and activating are in
// progress; the others are final for their serial.
const (
	PullWaiting    PullOutcome = "waiting"     // verified; waiting for the earlier waves
	PullActivating PullOutcome = "activating"  // fetched; the activation runs
	PullDone       PullOutcome = "done"        // runs the release's system, healthy
	PullRolledBack PullOutcome = "rolled-back" // failed its activation or health checks; the previous generation runs
	PullFailed     PullOutcome = "failed"      // failed, and the rollback failed too (or was interrupted)
	PullHalted     PullOutcome = "halted"      // not activated: an earlier wave failed or did not report in time
	PullRefused    PullOutcome = "refused"     // not activated: the closure failed verification
)

// Final reports whether o ends a release on a host.
func (o PullOutcome) Final() bool {
	switch o {
	case PullDone, PullRolledBack, PullFailed, PullHalted, PullRefused:
		return true
	}
	return false
}

// PullStatus is what a host reports about its channel (status/HOST.json,
// a [SignedDocument] of type [DocStatus] signed with the host's key): the
// newest release it acted on and how that went, what it runs, and the last
// document it refused. Later waves gate on it; deploy status --channel and
// deploy publish --wait show it; all of them believe only a status that
// the host's key signed.
type PullStatus struct {
	V       int       `json:"v"`
	Host    string    `json:"host"`
	Channel string    `json:"channel"`
	Time    time.Time `json:"time"`
	Agent   string    `json:"agent,omitempty"`
	// The newest release this host accepted (a valid document for it with
	// a serial above the ones before), and its outcome.
	Serial     int64       `json:"serial"`
	System     string      `json:"system,omitempty"`
	Wave       int         `json:"wave,omitempty"`
	Outcome    PullOutcome `json:"outcome"`
	Generation int         `json:"generation,omitempty"`
	// Check is the health check that failed, when one did.
	Check   string `json:"check,omitempty"`
	Message string `json:"message,omitempty"`
	// OutcomeTime is when the release reached Outcome (Time is when the
	// document was written, which a later refusal changes): the wave
	// deadline is compared with it.
	OutcomeTime time.Time `json:"outcome_time,omitzero"`
	// Current is the running generation and CurrentSystem its system.
	Current       int    `json:"current,omitempty"`
	CurrentSystem string `json:"current_system,omitempty"`
	// Refused is the last document the host refused (unsigned, signed
	// by a key it does not trust, for another host or channel, or with a
	// serial not above its own); nil when none since it was installed.
	Refused *PullRefusal `json:"refused,omitempty"`
	// Stale says why the host acts on nothing now: its timestamp or root
	// expired, or it has no valid timestamp (a freeze, or no refresh). Empty
	// when the channel is fresh.
	Stale string `json:"stale,omitempty"`
	// StaleSince is when the host first found the channel stale.
	StaleSince time.Time `json:"stale_since,omitzero"`
	// Root is the version of the channel's root the host trusts (0 without
	// a root).
	Root int64 `json:"root,omitempty"`
}

// PullRefusal is a release document a host refused, and why.
type PullRefusal struct {
	// Serial is what the document claimed (it may be a lie).
	Serial int64     `json:"serial,omitempty"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

// WaveReport gathers the final statuses of one wave of one release
// (status/waves/SERIAL/WAVE.json): each host of the wave, once its outcome
// is final, writes its signed status document, exactly as it wrote it to
// status/HOST.json, as its entry (status/waves/SERIAL/WAVE/HOST.json), and
// the wave's gatherers (Release.Gatherer) gather the entries into the report with a
// conditional write (hosts that cannot list add themselves to the report,
// a read-modify-write). A host of a later wave then
// reads one document per earlier wave instead of one per earlier host.
// The document itself is not signed: each entry is verified like a status
// document (the host's key, channel, serial), and an entry that does not
// verify is no report. Whoever can write the status prefix can withhold
// entries, as they can delete status documents; the gate then reads the
// missing hosts' own status documents at the wave's deadline.
type WaveReport struct {
	V       int    `json:"v"`
	Channel string `json:"channel"`
	Serial  int64  `json:"serial"`
	Wave    int    `json:"wave"`
	// Reports maps each host that reported to its signed status
	// document ([SignedDocument] of type [DocStatus]).
	Reports map[string]json.RawMessage `json:"reports"`
}

// PullConfig is a host's pull setting, written by the generation that has
// a pull block ([PullConfigFile]) and read by deploy-agent pull.
type PullConfig struct {
	V       int    `json:"v"`
	Host    string `json:"host"`
	Channel string `json:"channel"`
	// URL is the channel's root for reading, over http(s):// or file://:
	// hosts/HOST.json and status/HOST.json are under it.
	URL string `json:"url"`
	// PublisherKeys are the keys whose release signatures the host trusts
	// when the channel has no root (one signature enough, no freshness).
	PublisherKeys []string `json:"publisher_keys,omitempty"`
	// Root is the channel's signed root ([Root] in a [SignedDocument]),
	// when it has one: the publisher and timestamp keys and thresholds.
	Root json.RawMessage `json:"root,omitempty"`
	// Cache is where the closures are, and the keys they must be signed by.
	CacheURL  string   `json:"cache_url"`
	CacheKeys []string `json:"cache_keys"`
	// StatusURL is where the host writes status/HOST.json: s3://BUCKET/PREFIX
	// (with endpoint and region) signed with the credentials in
	// StatusCredentials, or file:///DIR. Empty: the host does not report.
	StatusURL         string `json:"status_url,omitempty"`
	StatusCredentials string `json:"status_credentials,omitempty"`
	// HostKeyFile is the OpenSSH ed25519 private key that signs the host's
	// status (empty: [DefaultHostKeyFile]); the fleet's host_key for the
	// host is its public half.
	HostKeyFile string `json:"host_key_file,omitempty"`
	// StateDir is the agent's state directory (its store is StateDir/store).
	StateDir string `json:"state_dir"`
	// IntervalMS is the poll interval the timer uses, for the record.
	IntervalMS int64 `json:"interval_ms"`
	// The limits of what the host fetches (0: the defaults, docs/pull.md):
	// MaxDocumentSize bounds a release, a status and a narinfo (bytes,
	// default 1 MiB); MaxNarSize a store path's NAR (default 8 GiB);
	// FetchTimeoutMS is a document's whole deadline and the floor of a
	// NAR's (default 1 minute), which adds the NAR's size at FetchMinRate
	// bytes per second (default 64 KiB/s).
	MaxDocumentSize int64 `json:"max_document_size,omitempty"`
	MaxNarSize      int64 `json:"max_nar_size,omitempty"`
	FetchTimeoutMS  int64 `json:"fetch_timeout_ms,omitempty"`
	FetchMinRate    int64 `json:"fetch_min_rate,omitempty"`
	// Notify are the fleet's webhooks: the host posts its own outcome of
	// each release to them (start: activating; done; rollback; halt).
	Notify []NotifyTarget `json:"notify,omitempty"`
}

// NotifyTarget is a fleet's notify block as a pull host follows it.
type NotifyTarget struct {
	Name   string   `json:"name"`
	URL    string   `json:"url"`
	Format string   `json:"format"` // "json" or "text"
	On     []string `json:"on"`     // of start, halt, rollback, done
}
