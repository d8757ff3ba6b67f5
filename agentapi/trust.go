package agentapi

import "time"

// The channel's root of trust (docs/trust.md), after The Update Framework's
// roles without its servers. An offline set of root keys signs a [Root]:
// which keys may sign releases (the publisher role) and timestamps (the
// timestamp role), with how many signatures each needs, and until when.
// A host gets the root in its generation (PullConfig.Root) and accepts a
// newer one only when it is signed by the threshold of the root it has
// (a chain: channels/NAME/root/VERSION.json). Each host's [Timestamp],
// signed by the timestamp role and short-lived, names the host's newest
// release: a host whose timestamp or root expired is stale and acts on
// nothing.

// Types of trust documents ([SignedDocument]).
const (
	DocRoot      = "root"
	DocTimestamp = "timestamp"
)

// The roles of a [Root].
const (
	RoleRoot      = "root"
	RolePublisher = "publisher"
	RoleTimestamp = "timestamp"
)

// Root is a channel's root of trust, inside a [SignedDocument] of type
// [DocRoot]. Version 1 is signed by its own root role's threshold; every
// later version by the previous version's root threshold and its own.
type Root struct {
	V       int    `json:"v"`
	Channel string `json:"channel"`
	// Version orders the roots of a channel (1, 2, ...): a host never goes
	// back to a lower one.
	Version int64     `json:"version"`
	Expires time.Time `json:"expires"`
	// Roles maps RoleRoot, RolePublisher and RoleTimestamp to their keys.
	Roles map[string]Role `json:"roles"`
	// ResetSerial: a host that accepts this root forgets the serial it was
	// at, and from then on accepts only releases that name this root
	// version or a later one (recovery from a release with a huge serial
	// signed by a key that leaked).
	ResetSerial bool `json:"reset_serial,omitempty"`
}

// Role is the keys that may sign a role's documents ("name:base64", the
// binary cache's format) and how many of them must.
type Role struct {
	Keys      []string `json:"keys"`
	Threshold int      `json:"threshold"`
}

// Timestamp is a host's freshness document, timestamps/HOST.json, inside a
// [SignedDocument] of type [DocTimestamp] signed by the timestamp role: it
// names the host's newest release (its serial and the SHA-256 of its
// signed payload) and the root version in force, and expires soon. deploy
// publish writes it with each release; deploy publish --refresh signs it
// again before it expires.
type Timestamp struct {
	V       int    `json:"v"`
	Channel string `json:"channel"`
	Host    string `json:"host"`
	// Version orders a host's timestamps: the signing time in Unix
	// milliseconds; a host never accepts a lower one than it has.
	Version int64     `json:"version"`
	Expires time.Time `json:"expires"`
	// Root is the version of the channel's root in force.
	Root int64 `json:"root"`
	// Serial and Release are the host's newest release (0 and "" when the
	// host has none): its serial and the hex SHA-256 of its payload.
	Serial  int64  `json:"serial"`
	Release string `json:"release,omitempty"`
}
