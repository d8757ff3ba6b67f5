// verify.js: the console's check of the channel's signed documents, the
// same as pull/channel's (sign.go, status.go) byte for byte. A signed
// document is {"v", "type", "payload" (base64 of the JSON), "signatures":
// [{"key", "sig"}]}; each signature is ed25519 over
// "deploy TYPE v1\n" followed by the decoded payload, so what is verified
// is the exact bytes Go signed, never a re-encoding of the JSON.
// testdata/vectors.json, written by the Go test, holds documents this
// code must accept and tampered copies it must refuse.
"use strict";

const DOC_VERSION = 1; // agentapi.Version

// b64 decodes standard base64 (with padding, as Go writes it); null when s
// is not base64.
function b64(s) {
  if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) return null;
  try {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch (e) {
    return null;
  }
}

// importKey makes a WebCrypto key of a raw 32-byte ed25519 public key in
// base64; null when it is not one.
async function importKey(raw64) {
  const raw = b64(raw64);
  if (!raw || raw.length !== 32) return null;
  return crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
}

// ed25519Supported says whether this browser's WebCrypto verifies ed25519.
async function ed25519Supported() {
  try {
    await crypto.subtle.importKey("raw", new Uint8Array(32).fill(1), { name: "Ed25519" }, false, ["verify"]);
    return true;
  } catch (e) {
    return false;
  }
}

// openSigned verifies a signed document (its bytes) of docType against
// keys ([{name, key: CryptoKey}]): at least threshold distinct keys must
// have signed it. It returns {ok, value, signers, reason, err}: value is
// the payload only when ok (what an unverified document claims is never
// returned); err is one of "malformed", "unsigned", "untrusted",
// "threshold", "newer" as pull/channel's errors.
async function openSigned(bytes, docType, keys, threshold) {
  const refuse = (err, reason) => ({ ok: false, err, reason, signers: [] });
  let doc;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    return refuse("malformed", bytes.length + " bytes that are not a signed document");
  }
  if (!doc || typeof doc !== "object" || typeof doc.payload !== "string" || doc.payload === "") {
    return refuse("malformed", bytes.length + " bytes that are not a signed document");
  }
  if (typeof doc.v === "number" && doc.v > DOC_VERSION) {
    return refuse("newer", "document version " + doc.v + "; this console reads up to " + DOC_VERSION);
  }
  if (doc.type !== docType) {
    return refuse("malformed", "a \"" + doc.type + "\" document where a \"" + docType + "\" was expected");
  }
  const payload = b64(doc.payload);
  if (!payload) return refuse("malformed", "the payload is not base64");
  const prefix = new TextEncoder().encode("deploy " + docType + " v1\n");
  const msg = new Uint8Array(prefix.length + payload.length);
  msg.set(prefix);
  msg.set(payload, prefix.length);
  const sigs = Array.isArray(doc.signatures) ? doc.signatures : [];
  const valid = [];
  for (const s of sigs) {
    const sig = b64(s && s.sig);
    if (!sig || sig.length !== 64 || valid.includes(s.key)) continue;
    for (const k of keys) {
      if (k.key && k.name === s.key && (await crypto.subtle.verify({ name: "Ed25519" }, k.key, sig, msg))) {
        valid.push(k.name);
        break;
      }
    }
  }
  if (sigs.length === 0) return refuse("unsigned", "unsigned");
  if (valid.length === 0) {
    return refuse("untrusted", "signed by " + sigs.map((s) => JSON.stringify(s && s.key)).join(", ") +
      "; trusted: " + keys.map((k) => JSON.stringify(k.name)).join(", "));
  }
  let value;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
  } catch (e) {
    return refuse("malformed", "the signed payload is not a " + docType);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    return refuse("malformed", "the signed payload is not a " + docType);
  }
  if (valid.length < Math.max(1, threshold || 1)) {
    return { ok: false, err: "threshold", signers: valid, reason: valid.length + " of the " + threshold + " signatures needed (by " + valid.join(", ") + ")" };
  }
  return { ok: true, value, signers: valid };
}

// verifyStatus is pull/channel's VerifyStatus: host's status document,
// signed by hostKey (a CryptoKey; null when the fleet names none), about
// host and channel. The reason reads as Go's StatusError.
async function verifyStatus(bytes, channel, host, hostKey) {
  const no = (reason) => ({ ok: false, reason: "status of " + host + " " + reason });
  if (!hostKey) return no("cannot be verified: no host key to verify it with");
  const r = await openSigned(bytes, "status", [{ name: host, key: hostKey }], 1);
  if (!r.ok) {
    switch (r.err) {
      case "unsigned": return no("not signed by its host key (unsigned)");
      case "untrusted": return no("not signed by its host key (signed by another key)");
      case "malformed": return no("not signed by its host key (" + r.reason + ")");
      default: return no("refused: " + r.reason);
    }
  }
  const st = r.value;
  if (st.v > DOC_VERSION) return no("refused: written by a newer deploy");
  if (st.host !== host) return no("refused: for another host (host " + JSON.stringify(st.host) + ")");
  if (st.channel !== channel) return no("refused: for another channel (channel " + JSON.stringify(st.channel) + ", not " + JSON.stringify(channel) + ")");
  return { ok: true, value: st };
}

// verifyRecord verifies a channel record (channel.json, releases/N.json):
// signed by one of the publisher keys, for channel.
async function verifyRecord(bytes, channel, keys) {
  const r = await openSigned(bytes, "channel", keys, 1);
  if (!r.ok) return { ok: false, reason: "not signed by a trusted publisher key: " + r.reason };
  if (r.value.channel !== channel) return { ok: false, reason: "for another channel (" + JSON.stringify(r.value.channel) + ")" };
  return r;
}

// verifyTimestamp is pull/channel's Trust.VerifyTimestamp for a reader
// that holds no version of its own: host's timestamp, signed by the
// timestamp role's threshold, about channel and host, with an expiry.
async function verifyTimestamp(bytes, channel, host, keys, threshold) {
  const r = await openSigned(bytes, "timestamp", keys, threshold);
  if (!r.ok) return { ok: false, reason: "timestamp refused: " + r.reason };
  const ts = r.value;
  if (ts.channel !== channel) return { ok: false, reason: "timestamp refused: for another channel" };
  if (ts.host !== host) return { ok: false, reason: "timestamp refused: for another host" };
  if (!ts.expires || ts.expires.startsWith("0001-")) return { ok: false, reason: "timestamp refused: no expiry" };
  return r;
}

// verifyRelease verifies host's release document against the publisher
// keys and threshold: ok, or below the threshold (waiting for approval,
// with the signers), or refused.
async function verifyRelease(bytes, channel, host, keys, threshold) {
  const r = await openSigned(bytes, "release", keys, threshold);
  if (!r.ok && r.err !== "threshold") return { ok: false, reason: "not signed by a trusted publisher key: " + r.reason };
  if (r.err === "threshold") return { ok: false, approval: true, signers: r.signers, reason: "waiting for approval: " + r.reason };
  if (r.value.channel !== channel || r.value.host !== host) return { ok: false, reason: "for another host or channel" };
  return r;
}
