package channel

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
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
)

// RefusedError is a document that was refused: nothing of it is acted on.
// Serial is what the document claimed (0 when it could not be read).
type RefusedError struct {
	Serial int64
	Err    error
	Detail string
}

func (e *RefusedError) Error() string {
	s := "release refused: " + e.Err.Error()
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
	var doc agentapi.SignedDocument
	if err := json.Unmarshal(data, &doc); err != nil || doc.Payload == "" {
		return "", &RefusedError{Err: ErrMalformed, Detail: fmt.Sprintf("%d bytes that are not a signed document", len(data))}
	}
	if doc.V > agentapi.Version {
		return "", &RefusedError{Err: ErrNewerVersion, Detail: fmt.Sprintf("document version %d; this agent reads up to %d: upgrade it", doc.V, agentapi.Version)}
	}
	if doc.Type != docType {
		return "", &RefusedError{Err: ErrMalformed, Detail: fmt.Sprintf("a %q document where a %q was expected", doc.Type, docType)}
	}
	payload, err := base64.StdEncoding.DecodeString(doc.Payload)
	if err != nil {
		return "", &RefusedError{Err: ErrMalformed, Detail: "the payload is not base64"}
	}
	claims := json.Unmarshal(payload, v)
	msg := signedMessage(docType, payload)
	var names []string
	for _, s := range doc.Signatures {
		names = append(names, fmt.Sprintf("%q", s.Key))
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil || len(sig) != ed25519.SignatureSize {
			continue
		}
		for _, k := range keys {
			if k.Name == s.Key && ed25519.Verify(k.Key, msg, sig) {
				if claims != nil {
					return "", &RefusedError{Err: ErrMalformed, Detail: "the signed payload is not a " + docType + ": " + claims.Error()}
				}
				return k.Name, nil
			}
		}
	}
	if len(names) == 0 {
		return "", &RefusedError{Err: ErrUnsigned}
	}
	var trusted []string
	for _, k := range keys {
		trusted = append(trusted, fmt.Sprintf("%q", k.Name))
	}
	return "", &RefusedError{Err: ErrUntrusted, Detail: fmt.Sprintf("signed by %s; trusted: %s", strings.Join(names, ", "), strings.Join(trusted, ", "))}
}

// VerifyRelease verifies host's release document: signed by one of keys,
// for channel and host, in a version this agent reads, with a serial above
// current (the host's last accepted serial). Anything else is a
// *[RefusedError] that says why (with the serial the document claims when it
// could be read).
func VerifyRelease(data []byte, keys []*cache.PublicKey, channel, host string, current int64) (*agentapi.Release, error) {
	rel := &agentapi.Release{}
	_, err := Open(data, agentapi.DocRelease, keys, rel)
	if err != nil {
		var re *RefusedError
		if errors.As(err, &re) && re.Serial == 0 {
			re.Serial = rel.Serial
		}
		return nil, err
	}
	refuse := func(e error, detail string, args ...any) (*agentapi.Release, error) {
		return nil, &RefusedError{Serial: rel.Serial, Err: e, Detail: fmt.Sprintf(detail, args...)}
	}
	switch {
	case rel.V > agentapi.Version:
		return refuse(ErrNewerVersion, "release version %d; this agent reads up to %d: upgrade it", rel.V, agentapi.Version)
	case rel.Channel != channel:
		return refuse(ErrOtherChannel, "channel %q, this host follows %q", rel.Channel, channel)
	case rel.Host != host:
		return refuse(ErrOtherHost, "host %q, this is %q", rel.Host, host)
	case rel.Serial <= current:
		return refuse(ErrNotNewer, "serial %d, this host is at %d (a replay, or a rollback not published through the channel)", rel.Serial, current)
	case rel.System == "":
		return refuse(ErrMalformed, "no system")
	}
	return rel, nil
}
