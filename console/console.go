// Package console is the fleet console. In pull mode it is one static page
// (HTML, CSS and JavaScript in one file, nothing fetched from elsewhere)
// that lives in a channel's prefix of the bucket, beside the documents it
// reads, and shows the channel in a browser with no server of its own
// ([Page], [Config]; docs/pull.md, "The console"). For a push-mode fleet,
// [Server] serves a page on a loopback address with the fleet's status,
// read over SSH by the caller at each look (docs/cli.md, "The console of
// a push fleet").
//
// # What the page reads
//
// Relative to itself (channels/NAME/index.html): its keys console.json
// ([ConfigKey], written by the caller from [EncodeConfig]), the head
// channel.json, the reports of its waves (status/waves/SERIAL/WAVE.json,
// one request per wave whatever its size), the own status/HOST.json of the
// hosts that no report covers, the last publishes' records
// (releases/N.json), the release of each wave's first host (its
// signatures) and, with a root, that host's timestamp. It shows the waves
// and each host's outcome with the failing check, hosts that are stale,
// silent past their wave's deadline or whose documents do not verify, the
// timestamps' expiry, and the release history with publisher, signers,
// commit, message and each host's change of system.
//
// # Trust
//
// The page verifies every document with WebCrypto's Ed25519
// (assets/verify.js), exactly as package channel does (the same signed
// bytes: "deploy TYPE v1\n" and the payload), against the keys in
// console.json: the publisher keys the fleet trusts (with the root's
// threshold), the root's timestamp keys, and each host's SSH ed25519 host
// key. A document that does not verify is shown as unverified, never with
// what it claims. The keys are apart from the page so that the page weighs
// the same whatever the fleet's size. testdata/vectors.json holds
// documents made by package channel that the page's verifier must accept,
// and tampered copies it must refuse; the Go tests hold both sides to it.
//
// The keys are as trustworthy as the page: whoever may write the page or
// console.json in the bucket may change them, as they may write
// channel.json. Hosts' status credentials (the status prefix only) cannot.
package console

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"html"
	"text/template"
	"time"
)

// PageKey is the page, relative to the channel's root, and ConfigKey its
// configuration ([Config]), which it reads first.
const (
	PageKey   = "index.html"
	ConfigKey = "console.json"
)

// MaxPageSize is the most the page may weigh; MaxConfigSize the most the
// page reads of its configuration (about 70 bytes per host).
const (
	MaxPageSize   = 200 << 10
	MaxConfigSize = 16 << 20
)

// Config is what the page is told when it is written: whom to trust and
// what to read. It is console.json beside the page ([ConfigKey]).
type Config struct {
	V       int    `json:"v"`
	Channel string `json:"channel"`
	// PublisherKeys verify the channel's records and the hosts' releases;
	// a release needs PublisherThreshold of them (a root's publisher
	// threshold; below it the page says it waits for approval).
	PublisherKeys      []Key `json:"publisher_keys"`
	PublisherThreshold int   `json:"publisher_threshold"`
	// TimestampKeys and TimestampThreshold are the timestamp role of the
	// channel's root (none without a root): the page reads one host's
	// timestamp per wave and says when the channel's timestamps expire, or
	// that they did (the hosts act on nothing then: stale).
	TimestampKeys      []Key `json:"timestamp_keys,omitempty"`
	TimestampThreshold int   `json:"timestamp_threshold,omitempty"`
	// RootVersion is the version of the root these keys come from.
	RootVersion int64 `json:"root_version,omitempty"`
	// Hosts are the hosts the page knows, each with its SSH ed25519 host
	// key (raw, base64; empty when the fleet names none: its status
	// cannot be verified).
	Hosts []Key `json:"hosts"`
	// MaxDocumentSize bounds each document the page reads (a wave's
	// report: 16 times as much).
	MaxDocumentSize int64 `json:"max_document_size"`
	// History is how many publishes the history shows (default 10).
	History int `json:"history"`
	// ReadAllStatuses makes the page read every host's own status
	// document too (for staleness), not only those no wave report covers.
	ReadAllStatuses bool `json:"read_all_statuses,omitempty"`
	// RefreshSeconds: the page reads the channel again this often (0:
	// only when asked).
	RefreshSeconds int `json:"refresh_seconds,omitempty"`
}

// Key is a named ed25519 public key, raw and base64 (standard encoding).
type Key struct {
	Name string `json:"name"`
	Key  string `json:"key,omitempty"`
}

var (
	//go:embed assets/page.html
	pageHTML string
	//go:embed assets/style.css
	styleCSS string
	//go:embed assets/verify.js
	verifyJS string
	//go:embed assets/gate.js
	gateJS string
	//go:embed assets/console.js
	consoleJS string
)

var pageTemplate = template.Must(template.New("page").Parse(pageHTML))

// VerifyJS is the page's verifier (assets/verify.js), for tests that run
// it alone.
func VerifyJS() string { return verifyJS }

// GateJS is the page's reading of the waves (assets/gate.js), for tests
// that run it alone.
func GateJS() string { return gateJS }

// PageInfo is what the page says about where it came from.
type PageInfo struct {
	// Target is the fleet target it was written from (DIR#NAME).
	Target string
	// Generated is when.
	Generated time.Time
}

// Page renders the page of channel.
func Page(channel string, info PageInfo) ([]byte, error) {
	intro := "Every document below is verified here, in this browser, against the keys <code>deploy console publish</code> wrote beside this page (<code>console.json</code>) on " +
		info.Generated.UTC().Format(time.RFC3339)
	if info.Target != "" {
		intro += " from <code>" + html.EscapeString(info.Target) + "</code>"
	}
	return render(channel, "channel "+html.EscapeString(channel), intro+".", verifyJS+"\n"+gateJS+"\n"+consoleJS)
}

// render fills the page's template.
func render(channel, heading, intro, js string) ([]byte, error) {
	var b bytes.Buffer
	err := pageTemplate.Execute(&b, map[string]string{
		"Channel": html.EscapeString(channel),
		"Heading": heading,
		"Intro":   intro,
		"CSS":     styleCSS,
		"JS":      js,
	})
	if err != nil {
		return nil, err
	}
	if b.Len() > MaxPageSize {
		return nil, fmt.Errorf("console page: %d bytes, above the limit of %d", b.Len(), MaxPageSize)
	}
	return b.Bytes(), nil
}

// EncodeConfig is cfg as console.json. It fails above [MaxConfigSize] (a
// fleet of some 200,000 hosts), which the page would not read.
func EncodeConfig(cfg *Config) ([]byte, error) {
	c := *cfg
	c.V = 1
	if c.History <= 0 {
		c.History = 10
	}
	if c.PublisherThreshold <= 0 {
		c.PublisherThreshold = 1
	}
	data, err := json.MarshalIndent(&c, "", " ")
	if err != nil {
		return nil, err
	}
	if len(data) > MaxConfigSize {
		return nil, fmt.Errorf("console configuration: %d bytes with %d hosts' keys, above the limit of %d", len(data), len(c.Hosts), MaxConfigSize)
	}
	return append(data, '\n'), nil
}
