package channel

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
)

// Reasons a document is refused. A *[RefusedError] wraps one of them.
var (
	ErrMalformed    = errors.New("not a signed release document")
	ErrUnsigned     = errors.New("unsigned")
	ErrUntrusted    = errors.New("not signed by a trusted publisher key")
	ErrNewerVersion = errors.New("written by a newer deploy")
	ErrOtherChannel = errors.New("for another channel")
	ErrOtherHost    = errors.New("for another host")
	ErrNotNewer     = errors.New("serial not above the current one")
	ErrThreshold    = errors.New("not enough signatures")
	ErrExpired      = errors.New("expired")
	ErrMismatch     = errors.New("does not match its timestamp")
)

// RefusedError is a document that was refused: nothing of it is acted on.
// Serial is what the document claimed (0 when it could not be read).
type RefusedError struct {
	Serial int64
	Err    error
	Detail string
	// Doc is the refused document's type (agentapi.DocRelease when empty).
	Doc string
}

func (e *RefusedError) Error() string {
	doc := e.Doc
	if doc == "" {
		doc = agentapi.DocRelease
	}
	what := e.Err.Error()
	if e.Err == ErrUntrusted && doc != agentapi.DocRelease {
		what = "not signed by a trusted " + doc + " key"
	}
	s := doc + " refused: " + what
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

func (e *RefusedError) Unwrap() error { return e.Err }

// signedMessage is what a signature of a document of type docType signs.
func signedMessage(docType string, payload []byte) []byte {
	return append([]byte("deploy "+docType+" v1\n"), payload...)
}

// Sign encodes v (a [agentapi.Release] or [agentapi.ChannelRelease]) as a
// [agentapi.SignedDocument] of docType signed by every key.
func Sign(docType string, v any, keys ...*cache.SecretKey) ([]byte, error) {
	if len(keys) == 0 {
		return nil, errors.New("sign: no key")
	}
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	doc := agentapi.SignedDocument{V: agentapi.Version, Type: docType, Payload: base64.StdEncoding.EncodeToString(payload)}
	msg := signedMessage(docType, payload)
	for _, k := range keys {
		doc.Signatures = append(doc.Signatures, agentapi.Signature{Key: k.Name, Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, msg))})
	}
	out, err := json.MarshalIndent(&doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Open verifies a signed document of docType against keys and decodes its
// payload into v. It returns the name of the key that signed it. A
// document that is malformed, of another type, unsigned, or not signed by
// one of keys is a *[RefusedError]. Even then v may hold what the payload
// claims (for a report that names the claimed serial): never act on it.
func Open(data []byte, docType string, keys []*cache.PublicKey, v any) (string, error) {
	signers, err := OpenThreshold(data, docType, keys, 1, v)
	if err != nil {
		return "", err
	}
	return signers[0], nil
}

// OpenThreshold is [Open] for a document that needs the signatures of
// threshold distinct keys of keys: it returns their names. Fewer is a
// *[RefusedError] wrapping [ErrThreshold] (or [ErrUnsigned],
// [ErrUntrusted] when no trusted key signed).
func OpenThreshold(data []byte, docType string, keys []*cache.PublicKey, threshold int, v any) ([]string, error) {
	doc, payload, err := decodeSigned(data, docType)
	if err != nil {
		return nil, err
	}
	claims := json.Unmarshal(payload, v)
	msg := signedMessage(docType, payload)
	var names, valid []string
	for _, s := range doc.Signatures {
		names = append(names, fmt.Sprintf("%q", s.Key))
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil || len(sig) != ed25519.SignatureSize || slices.Contains(valid, s.Key) {
			continue
		}
		for _, k := range keys {
			if k.Name == s.Key && ed25519.Verify(k.Key, msg, sig) {
				valid = append(valid, k.Name)
				break
			}
		}
	}
	if len(valid) > 0 && claims != nil {
		return nil, &RefusedError{Doc: docType, Err: ErrMalformed, Detail: "the signed payload is not a " + docType + ": " + claims.Error()}
	}
	if threshold < 1 {
		threshold = 1
	}
	switch {
	case len(valid) >= threshold:
		return valid, nil
	case len(names) == 0:
		return nil, &RefusedError{Doc: docType, Err: ErrUnsigned}
	}
	var trusted []string
	for _, k := range keys {
		trusted = append(trusted, fmt.Sprintf("%q", k.Name))
	}
	if len(valid) == 0 {
		return nil, &RefusedError{Doc: docType, Err: ErrUntrusted, Detail: fmt.Sprintf("signed by %s; trusted: %s", strings.Join(names, ", "), strings.Join(trusted, ", "))}
	}
	return valid, &RefusedError{Doc: docType, Err: ErrThreshold, Detail: fmt.Sprintf("%d of the %d signatures needed (by %s; trusted: %s)",
		len(valid), threshold, strings.Join(valid, ", "), strings.Join(trusted, ", "))}
}

// decodeSigned reads a signed document of docType and its payload.
func decodeSigned(data []byte, docType string) (*agentapi.SignedDocument, []byte, error) {
	var doc agentapi.SignedDocument
	if err := json.Unmarshal(data, &doc); err != nil || doc.Payload == "" {
		return nil, nil, &RefusedError{Doc: docType, Err: ErrMalformed, Detail: fmt.Sprintf("%d bytes that are not a signed document", len(data))}
	}
	if doc.V > agentapi.Version {
		return nil, nil, &RefusedError{Doc: docType, Err: ErrNewerVersion, Detail: fmt.Sprintf("document version %d; this agent reads up to %d: upgrade it", doc.V, agentapi.Version)}
	}
	if doc.Type != docType {
		return nil, nil, &RefusedError{Doc: docType, Err: ErrMalformed, Detail: fmt.Sprintf("a %q document where a %q was expected", doc.Type, docType)}
	}
	payload, err := base64.StdEncoding.DecodeString(doc.Payload)
	if err != nil {
		return nil, nil, &RefusedError{Doc: docType, Err: ErrMalformed, Detail: "the payload is not base64"}
	}
	return &doc, payload, nil
}

// PayloadHash is the hex SHA-256 of a signed document's payload: what a
// [agentapi.Timestamp] names, unchanged by signatures added later.
func PayloadHash(data []byte, docType string) (string, error) {
	_, payload, err := decodeSigned(data, docType)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(payload)
	return hex.EncodeToString(sum[:]), nil
}

// AddSignatures signs a signed document's payload, unchanged, with keys
// (an approval of a release, a root key holder's signature of a root),
// replacing an earlier signature by a key of the same name.
func AddSignatures(data []byte, docType string, keys ...*cache.SecretKey) ([]byte, error) {
	doc, payload, err := decodeSigned(data, docType)
	if err != nil {
		return nil, err
	}
	msg := signedMessage(docType, payload)
	for _, k := range keys {
		doc.Signatures = slices.DeleteFunc(doc.Signatures, func(s agentapi.Signature) bool { return s.Key == k.Name })
		doc.Signatures = append(doc.Signatures, agentapi.Signature{Key: k.Name, Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, msg))})
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Signers lists the names of the keys that signed data (verified or not).
func Signers(data []byte) []string {
	var doc agentapi.SignedDocument
	if json.Unmarshal(data, &doc) != nil {
		return nil
	}
	var names []string
	for _, s := range doc.Signatures {
		names = append(names, s.Key)
	}
	return names
}

// VerifyRelease verifies host's release document: signed by one of keys,
// for channel and host, in a version this agent reads, with a serial above
// current (the host's last accepted serial). Anything else is a
// *[RefusedError] that says why (with the serial the document claims when it
// could be read).
func VerifyRelease(data []byte, keys []*cache.PublicKey, channel, host string, current int64) (*agentapi.Release, error) {
	rel, _, err := ReleaseCheck{Keys: keys, Threshold: 1, Channel: channel, Host: host, Current: current}.Verify(data)
	return rel, err
}

// ReleaseCheck is what a host requires of its release document.
type ReleaseCheck struct {
	// Keys and Threshold: the publisher role (at least one signature).
	Keys      []*cache.PublicKey
	Threshold int
	Channel   string
	Host      string
	// Current is the host's last accepted serial: a release must be above.
	Current int64
	// MinRoot is the root version at which the host last reset its serial:
	// a release must name it or a later one.
	MinRoot int64
}

// Verify checks data and returns the release and the keys that signed it.
// Anything else is a *[RefusedError] that says why, with the serial the
// document claims when it could be read. A release with fewer signatures
// than the threshold is refused with [ErrThreshold] but returned too (with
// the signers), so that a host can say it waits for approval.
func (c ReleaseCheck) Verify(data []byte) (*agentapi.Release, []string, error) {
	rel := &agentapi.Release{}
	signers, err := OpenThreshold(data, agentapi.DocRelease, c.Keys, c.Threshold, rel)
	if err != nil {
		var re *RefusedError
		if errors.As(err, &re) && re.Serial == 0 {
			re.Serial = rel.Serial
		}
		if !errors.Is(err, ErrThreshold) {
			return nil, nil, err
		}
	}
	refuse := func(e error, detail string, args ...any) (*agentapi.Release, []string, error) {
		return nil, nil, &RefusedError{Serial: rel.Serial, Err: e, Detail: fmt.Sprintf(detail, args...)}
	}
	switch {
	case rel.V > agentapi.Version:
		return refuse(ErrNewerVersion, "release version %d; this agent reads up to %d: upgrade it", rel.V, agentapi.Version)
	case rel.Channel != c.Channel:
		return refuse(ErrOtherChannel, "channel %q, this host follows %q", rel.Channel, c.Channel)
	case rel.Host != c.Host:
		return refuse(ErrOtherHost, "host %q, this is %q", rel.Host, c.Host)
	case rel.RootVersion < c.MinRoot:
		return refuse(ErrNotNewer, "signed under root version %d; this host reset its serial at root version %d", rel.RootVersion, c.MinRoot)
	case rel.Serial <= c.Current:
		return refuse(ErrNotNewer, "serial %d, this host is at %d (a replay, or a rollback not published through the channel)", rel.Serial, c.Current)
	case rel.System == "":
		return refuse(ErrMalformed, "no system")
	}
	return rel, signers, err
}
