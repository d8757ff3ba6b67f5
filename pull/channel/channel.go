// Package channel is pull mode's release channel: where a channel's
// documents live in the fleet's bucket, how releases are signed and
// verified, how a host decides that its wave may go, and how documents are
// read (hosts, over plain HTTP(S) with conditional GETs) and statuses
// written (hosts, with a request signed by [sigv4] under the channel's
// status prefix). Both sides import it: deploy publish on the operator's
// machine or in CI, deploy-agent pull on the hosts. docs/pull.md is the
// operator's description.
//
// # Layout
//
// A channel NAME lives under channels/NAME/ in the binary cache's bucket
// (beside the cache's narinfos and NARs, which hold the closures):
//
//	channels/NAME/channel.json          the head: the last publish (signed ChannelRelease)
//	channels/NAME/releases/SERIAL.json  every publish, never overwritten (after a
//	                                    serial reset: releases/epoch-ROOT/SERIAL.json)
//	channels/NAME/root/VERSION.json     the channel's root of trust, every version
//	channels/NAME/timestamps/HOST.json  each host's timestamp (signed Timestamp)
//	channels/NAME/hosts/HOST.json       each host's release (signed Release)
//	channels/NAME/status/HOST.json      each host's report (PullStatus, signed with its host key)
//	channels/NAME/status/waves/S/W.json the final reports of wave W of serial S (WaveReport:
//	                                    each host's signed status, verbatim; S is SERIAL-rROOT
//	                                    after a serial reset)
//
// # Trust
//
// Documents are [agentapi.SignedDocument]s signed with ed25519 keys:
// releases and the channel's records with publisher keys in the cache's
// format ([cache.SecretKey]), statuses with the reporting host's SSH
// ed25519 host key. [VerifyRelease] accepts a release only when it is
// signed by a trusted key, names the host and channel, and has a serial
// above the host's. [VerifyStatus] believes a status only when the key that
// the release (Release.AfterKeys) or the fleet names for its host signed
// it, about that host and channel; the wave gate ([Gate]) counts any other
// status as silence. Whoever can write the status prefix can therefore
// still withhold or delete reports (a silent wave halts at its deadline),
// but can neither let a later wave go early nor halt it by a forged
// failure.
package channel

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// The channel's keys, relative to its root ([Root]).
const (
	// HeadKey is the channel's last publish.
	HeadKey = "channel.json"
)

// Root is the key prefix of channel name in the bucket (no trailing slash).
func Root(name string) string { return "channels/" + name }

// URL is channel name's root under a cache URL (s3://, file://,
// http(s)://), keeping an s3 URL's query: where hosts read the channel,
// where they write their status, and where the publisher writes.
func URL(cacheURL, name string) string {
	u, err := url.Parse(cacheURL)
	if err != nil {
		return strings.TrimSuffix(cacheURL, "/") + "/" + Root(name)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + Root(name)
	u.RawPath = ""
	return u.String()
}

// ReleaseKey is host's release document.
func ReleaseKey(host string) string { return "hosts/" + host + ".json" }

// StatusKey is host's status document.
func StatusKey(host string) string { return "status/" + host + ".json" }

// HistoryKey is the record of publish serial. Epoch is the root version
// at which the channel's serials were last reset (0 when never): serials
// start again at 1 after a reset, so each epoch has its own records.
func HistoryKey(epoch, serial int64) string {
	if epoch == 0 {
		return "releases/" + strconv.FormatInt(serial, 10) + ".json"
	}
	return "releases/epoch-" + strconv.FormatInt(epoch, 10) + "/" + strconv.FormatInt(serial, 10) + ".json"
}

// CheckName checks a channel or host name: it becomes part of object keys,
// so letters, digits and . _ - only, not starting with . or -, at most 128
// bytes. (A loop, not a regular expression: compiling ^...{0,127}$ took
// 2 ms at every start of deploy-agent, which runs once per poll.)
func CheckName(what, name string) error {
	ok := len(name) > 0 && len(name) <= 128
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		ok = alnum || i > 0 && (c == '.' || c == '_' || c == '-')
	}
	if !ok {
		return fmt.Errorf("%s name %q: want letters, digits, '.', '_' and '-', starting with a letter or digit", what, name)
	}
	return nil
}
