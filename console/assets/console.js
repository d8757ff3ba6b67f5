// console.js: the fleet console. It reads the channel from the bucket,
// relative to this page (channels/NAME/index.html): the head
// (channel.json), the reports of its waves (status/waves/...), the own
// status documents of the hosts the reports do not cover, the release
// history (releases/N.json) and one release per wave (hosts/H.json, for
// its signatures). Every document is verified with verify.js against the
// keys deploy console publish wrote beside the page (console.json); one
// that does not verify is shown as unverified, never with what it claims.
"use strict";

const CONFIG_KEY = "console.json"; // console.ConfigKey
const CONFIG_LIMIT = 16 << 20;
let CFG = null; // console.json: whom to trust, what to read
const PARALLEL = 6; // requests in flight
let requests = 0; // made by the last reading, for the page's data-requests

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, String(v));
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// get reads a document of the channel: {status: "ok", bytes} | "missing" |
// "error" (with why).
async function get(key, limit) {
  requests++;
  try {
    const resp = await fetch(key, { cache: "no-store" });
    if (resp.status === 404 || resp.status === 403) return { status: "missing" };
    if (!resp.ok) return { status: "error", reason: key + ": HTTP " + resp.status };
    const bytes = new Uint8Array(await resp.arrayBuffer());
    if (bytes.length > limit) return { status: "error", reason: key + ": " + bytes.length + " bytes, above the limit of " + limit };
    return { status: "ok", bytes };
  } catch (e) {
    return { status: "error", reason: key + ": " + e };
  }
}

// pool runs the tasks, PARALLEL at a time.
async function pool(tasks) {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]();
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, tasks.length) }, worker));
}

function waveDir(serial, root) {
  return "status/waves/" + serial + (root > 0 ? "-r" + root : "") + "/";
}

function historyKey(epoch, serial) {
  return epoch > 0 ? "releases/epoch-" + epoch + "/" + serial + ".json" : "releases/" + serial + ".json";
}

function baseName(p) {
  return p ? p.slice(p.lastIndexOf("/") + 1) : "";
}

// load reads and verifies everything the page shows.
async function load() {
  const c = await get(CONFIG_KEY, CONFIG_LIMIT);
  let cfg = null;
  try {
    cfg = c.status === "ok" ? JSON.parse(new TextDecoder().decode(c.bytes)) : null;
  } catch (e) {
    cfg = null;
  }
  if (!cfg || cfg.channel !== document.body.dataset.channel) {
    return { headErr: CONFIG_KEY + " (the keys this page trusts) cannot be read" + (c.reason ? ": " + c.reason : "") + ": run deploy console publish again", hosts: new Map(), supported: true };
  }
  CFG = cfg;
  const model = { head: null, headErr: "", hosts: new Map(), waves: [], history: [], signers: [], approval: "", supported: await ed25519Supported() };
  const pub = [];
  for (const k of CFG.publisher_keys || []) pub.push({ name: k.name, key: model.supported ? await importKey(k.key) : null });
  const hostKeys = new Map();
  for (const h of CFG.hosts || []) hostKeys.set(h.name, model.supported && h.key ? await importKey(h.key) : null);
  const limit = CFG.max_document_size || 1 << 20;

  const hd = await get("channel.json", limit);
  if (hd.status !== "ok") {
    model.headErr = hd.status === "missing" ? "the channel has no channel.json: nothing was published" : hd.reason;
    return model;
  }
  const head = await verifyRecord(hd.bytes, CFG.channel, pub);
  if (!head.ok) {
    model.headErr = "channel.json unverified: " + head.reason;
    return model;
  }
  const h = (model.head = head.value);
  model.headSigners = head.signers;
  const waves = h.waves || [];
  for (const [i, hosts] of waves.entries()) {
    for (const name of hosts) model.hosts.set(name, { name, wave: i + 1, system: (h.systems || {})[name] });
  }

  // The waves' reports: one request per wave for the hosts that finished.
  const dir = waveDir(h.serial, h.root_version || 0);
  await pool(waves.map((hosts, i) => async () => {
    const r = await get(dir + (i + 1) + ".json", 16 * limit);
    if (r.status !== "ok") return;
    let wr;
    try {
      wr = JSON.parse(new TextDecoder().decode(r.bytes));
    } catch (e) {
      return;
    }
    if (!wr || wr.channel !== h.channel || wr.serial !== h.serial || wr.wave !== i + 1 || !wr.reports) return;
    for (const name of hosts) {
      const entry = wr.reports[name];
      if (entry === undefined) continue;
      const hs = model.hosts.get(name);
      const v = await verifyStatus(new TextEncoder().encode(JSON.stringify(entry)), h.channel, name, hostKeys.get(name));
      if (v.ok && v.value.serial === h.serial && FINAL.includes(v.value.outcome)) {
        hs.status = v.value;
        hs.source = "wave report";
      } else if (!v.ok) {
        hs.entryUnverified = "its entry in wave " + (i + 1) + "'s report: " + v.reason;
      }
    }
  }));

  // The hosts' own documents, for those the reports do not cover.
  const rest = [...model.hosts.values()].filter((hs) => !hs.status);
  if (CFG.read_all_statuses) rest.push(...[...model.hosts.values()].filter((hs) => hs.status));
  await pool(rest.map((hs) => async () => {
    const r = await get("status/" + hs.name + ".json", limit);
    if (r.status === "missing") {
      hs.none = true;
      return;
    }
    if (r.status !== "ok") {
      hs.readErr = r.reason;
      return;
    }
    const v = await verifyStatus(r.bytes, h.channel, hs.name, hostKeys.get(hs.name));
    if (!v.ok) {
      if (!hs.status) hs.unverified = v.reason;
      else hs.ownUnverified = "its own status document: " + v.reason;
      return;
    }
    if (!hs.status || v.value.serial >= hs.status.serial) {
      hs.status = v.value;
      hs.source = "status/" + hs.name + ".json";
    }
  }));

  // The history: the last records of this epoch.
  const first = Math.max(1, h.serial - (CFG.history || 10) + 1);
  const serials = [];
  for (let s = h.serial; s >= first; s--) serials.push(s);
  const records = new Map();
  await pool(serials.map((s) => async () => {
    const r = await get(historyKey(h.epoch || 0, s), limit);
    if (r.status !== "ok") {
      records.set(s, { serial: s, missing: r.status === "missing", reason: r.reason || "" });
      return;
    }
    const v = await verifyRecord(r.bytes, h.channel, pub);
    records.set(s, v.ok ? { serial: s, value: v.value, signers: v.signers } : { serial: s, reason: v.reason });
  }));
  model.history = serials.map((s) => records.get(s));
  if (first > 1) {
    const r = await get(historyKey(h.epoch || 0, first - 1), limit);
    if (r.status === "ok") {
      const v = await verifyRecord(r.bytes, h.channel, pub);
      if (v.ok) model.before = v.value;
    }
  }

  // One timestamp per wave (a channel with a root): when the hosts stop
  // acting on the channel unless it is refreshed.
  if ((CFG.timestamp_keys || []).length) {
    const tkeys = [];
    for (const k of CFG.timestamp_keys) tkeys.push({ name: k.name, key: model.supported ? await importKey(k.key) : null });
    model.timestamps = [];
    await pool(waves.map((hosts) => async () => {
      if (!hosts.length) return;
      const r = await get("timestamps/" + hosts[0] + ".json", limit);
      if (r.status !== "ok") {
        model.timestamps.push({ host: hosts[0], reason: r.status === "missing" ? "no timestamp" : r.reason });
        return;
      }
      const v = await verifyTimestamp(r.bytes, h.channel, hosts[0], tkeys, CFG.timestamp_threshold || 1);
      model.timestamps.push(v.ok ? { host: hosts[0], ts: v.value } : { host: hosts[0], reason: v.reason });
    }));
  }

  // One release per wave: its signatures (approvals).
  const signers = new Set();
  await pool(waves.map((hosts) => async () => {
    if (!hosts.length) return;
    const r = await get("hosts/" + hosts[0] + ".json", limit);
    if (r.status !== "ok") return;
    const v = await verifyRelease(r.bytes, h.channel, hosts[0], pub, CFG.publisher_threshold || 1);
    if (v.ok && v.value.serial === h.serial) v.signers.forEach((s) => signers.add(s));
    else if (v.approval) model.approval = v.reason;
  }));
  model.signers = [...signers].sort();
  model.waves = judgeWaves(h, model.hosts, Date.now());
  return model;
}

// hostState is one host's outcome as shown: verified, unverified, or no
// report.
function hostState(h, hs) {
  if (hs.status) {
    const st = hs.status;
    if (st.serial !== h.serial) return { cls: "old", text: "at serial " + st.serial + " (" + st.outcome + "); not yet serial " + h.serial };
    return { cls: st.outcome, text: st.outcome };
  }
  if (hs.unverified) return { cls: "unverified", text: "unverified" };
  if (hs.readErr) return { cls: "error", text: "unreadable" };
  return { cls: "none", text: hs.silent ? "silent" : "no report" };
}

function render(model) {
  const main = document.getElementById("main");
  main.replaceChildren();
  if (!model.supported) {
    main.append(el("p", { class: "banner bad", "data-crypto": "unsupported" },
      "This browser's WebCrypto cannot verify ed25519 signatures: nothing below is verified, so nothing is shown. Use a current Chromium or Firefox."));
  }
  if (model.headErr) {
    main.append(el("p", { class: "banner bad", id: "head", "data-verified": "false" }, model.headErr));
    return;
  }
  const h = model.head;
  const counts = {};
  for (const hs of model.hosts.values()) {
    const s = hostState(h, hs);
    counts[s.cls] = (counts[s.cls] || 0) + 1;
  }
  const labels = { none: "no report", old: "on an older serial" };
  main.append(el("section", { id: "head", "data-verified": "true", "data-serial": h.serial },
    el("h2", {}, "Serial " + h.serial + (h.rollback_to ? " (rollback to " + h.rollback_to + ")" : "")),
    el("dl", {},
      el("dt", {}, "published"), el("dd", {}, fmtTime(h.published)),
      el("dt", {}, "publisher"), el("dd", {}, h.publisher || "?"),
      el("dt", {}, "commit"), el("dd", { class: "mono" }, h.git_rev || "?"),
      el("dt", {}, "message"), el("dd", {}, h.message || ""),
      el("dt", {}, "signed by"), el("dd", { id: "signers" }, (model.signers.length ? model.signers : model.headSigners).join(", ") + " (verified)"),
      model.approval ? [el("dt", {}, "approval"), el("dd", { class: "bad" }, model.approval)] : null,
      model.timestamps ? [el("dt", {}, "timestamps"), timestampsOf(model.timestamps)] : null,
      el("dt", {}, "hosts"), el("dd", { id: "counts" }, Object.entries(counts).sort().map(([k, n]) => el("span", { class: "pill " + k, "data-count": k }, n + " " + (labels[k] || k)))))));

  const waves = el("section", { id: "waves" }, el("h2", {}, "Waves"));
  for (const w of model.waves) {
    const rows = w.names.map((name) => hostRow(h, model.hosts.get(name)));
    waves.append(el("section", { class: "wave wave-" + w.state, "data-wave": w.wave, "data-state": w.state },
      el("h3", {}, "Wave " + w.wave + " ", el("span", { class: "pill " + w.state }, w.state), " " + w.names.length + (w.names.length === 1 ? " host" : " hosts"),
        w.deadline ? el("span", { class: "muted" }, " · earlier waves' deadline " + fmtTime(new Date(w.deadline).toISOString())) : null),
      w.why ? el("p", { class: "why" }, w.why) : null,
      el("table", {}, el("thead", {}, el("tr", {}, ["host", "outcome", "failing check", "message", "generation", "reported", "source", "system"].map((c) => el("th", {}, c)))),
        el("tbody", {}, rows))));
  }
  main.append(waves);

  const attention = [...model.hosts.values()].filter((hs) => hs.silent || (hs.status && hs.status.stale) || hs.unverified || hs.entryUnverified || hs.ownUnverified || hs.readErr);
  main.append(el("section", { id: "attention" }, el("h2", {}, "Stale, silent and unverified"),
    attention.length ? el("ul", {}, attention.map((hs) => el("li", { "data-host": hs.name },
      el("b", {}, hs.name), ": ",
      hs.unverified ? el("span", { class: "unverified", "data-verified": "false" }, hs.unverified) : null,
      hs.status && hs.status.stale ? el("span", { class: "stale", "data-stale": "true" }, "stale since " + fmtTime(hs.status.stale_since) + ": " + hs.status.stale) : null,
      hs.silent ? el("span", { class: "silent", "data-silent": "true" }, "silent: no report of serial " + h.serial + " by its wave's deadline") : null,
      hs.entryUnverified ? el("span", { class: "unverified" }, " " + hs.entryUnverified) : null,
      hs.ownUnverified ? el("span", { class: "unverified" }, " " + hs.ownUnverified) : null,
      hs.readErr ? el("span", { class: "error" }, hs.readErr) : null)))
      : el("p", { class: "muted" }, "none")));

  main.append(historySection(h, model));
}

// timestampsOf says when the channel's timestamps (one host's per wave)
// expire, or that they did or do not verify.
function timestampsOf(list) {
  const now = Date.now();
  let state = "fresh";
  const parts = [];
  for (const t of list.sort((a, b) => a.host.localeCompare(b.host))) {
    if (!t.ts) {
      state = "unverified";
      parts.push(t.host + ": " + t.reason);
      continue;
    }
    const exp = new Date(t.ts.expires).getTime();
    if (exp < now) {
      if (state === "fresh") state = "expired";
      parts.push(t.host + ": expired at " + fmtTime(t.ts.expires) + " (the hosts act on nothing: run deploy publish --refresh)");
    } else {
      parts.push(t.host + ": until " + fmtTime(t.ts.expires) + ", root " + t.ts.root + ", serial " + t.ts.serial);
    }
  }
  return el("dd", { id: "timestamps", "data-timestamps": state, class: state === "fresh" ? "" : "bad" }, parts.join("; "));
}

function hostRow(h, hs) {
  const s = hostState(h, hs);
  if (hs.unverified) {
    // What an unverified document claims is not shown.
    return el("tr", { "data-host": hs.name, "data-outcome": "unverified", "data-verified": "false", class: "unverified" },
      el("td", {}, hs.name), el("td", { colspan: 7 }, el("span", { class: "pill unverified" }, "unverified"), " " + hs.unverified));
  }
  const st = hs.status || {};
  return el("tr", { "data-host": hs.name, "data-outcome": s.cls, "data-verified": hs.status ? "true" : null, "data-check": st.check || null, "data-stale": st.stale ? "true" : null },
    el("td", {}, hs.name),
    el("td", {}, el("span", { class: "pill " + s.cls }, s.text), st.stale ? el("span", { class: "pill stale" }, "stale") : null),
    el("td", { class: "check" }, st.check || ""),
    el("td", {}, st.message || (st.refused ? "refused " + st.refused.reason : "")),
    el("td", {}, st.generation || ""),
    el("td", {}, st.time ? fmtTime(outcomeTime(st).toISOString()) : ""),
    el("td", { class: "muted" }, hs.source || ""),
    el("td", { class: "mono" }, baseName(hs.system)));
}

function historySection(h, model) {
  const sec = el("section", { id: "history" }, el("h2", {}, "Releases"));
  const rows = [];
  model.history.forEach((rec, i) => {
    if (!rec.value) {
      rows.push(el("tr", { "data-serial": rec.serial, "data-verified": rec.missing ? null : "false" },
        el("td", {}, rec.serial), el("td", { colspan: 6, class: rec.missing ? "muted" : "unverified" }, rec.missing ? "no record" : "unverified: " + rec.reason)));
      return;
    }
    const r = rec.value;
    const prevRec = model.history[i + 1];
    const prev = prevRec ? prevRec.value : model.before;
    const changes = diffSystems(prev, r, prevRec && !prevRec.value && !(r.serial === 1));
    rows.push(el("tr", { "data-serial": r.serial, "data-verified": "true" },
      el("td", {}, r.serial + (r.rollback_to ? " ↩ " + r.rollback_to : "")),
      el("td", {}, fmtTime(r.published)),
      el("td", {}, r.publisher || ""),
      el("td", {}, (r.serial === h.serial && model.signers.length ? model.signers : rec.signers).join(", ")),
      el("td", { class: "mono" }, (r.git_rev || "").slice(0, 12)),
      el("td", {}, r.message || ""),
      el("td", {}, changes)));
  });
  sec.append(el("table", {}, el("thead", {}, el("tr", {}, ["serial", "published", "publisher", "signed by", "commit", "message", "changes"].map((c) => el("th", {}, c)))), el("tbody", {}, rows)));
  return sec;
}

// diffSystems is what a publish changed for each host, against the one
// before: the documents carry each host's system, so a host's change is
// its system's store path.
function diffSystems(prev, cur, unknown) {
  if (unknown) return el("span", { class: "muted" }, "unknown (the record before is not verified)");
  const lines = [];
  const a = (prev && prev.systems) || {};
  const b = cur.systems || {};
  for (const host of Object.keys(b).sort()) {
    if (!(host in a)) lines.push(el("li", { "data-host": host, "data-change": "added" }, host + ": new, " + baseName(b[host])));
    else if (a[host] !== b[host]) lines.push(el("li", { "data-host": host, "data-change": "changed" }, host + ": " + baseName(a[host]) + " → " + baseName(b[host])));
  }
  for (const host of Object.keys(a).sort()) {
    if (!(host in b)) lines.push(el("li", { "data-host": host, "data-change": "removed" }, host + ": not in this publish"));
  }
  if (!prev) return el("details", {}, el("summary", {}, "first publish: " + Object.keys(b).length + " hosts"), el("ul", {}, lines));
  if (!lines.length) return "no host's system changed";
  return el("details", { open: lines.length <= 5 ? "" : null }, el("summary", {}, lines.length + " hosts changed"), el("ul", {}, lines));
}

async function refresh() {
  const t0 = performance.now();
  document.body.dataset.state = "loading";
  requests = 0;
  let model;
  try {
    model = await load();
    render(model);
  } catch (e) {
    document.getElementById("main").replaceChildren(el("p", { class: "banner bad" }, "The console failed: " + e));
  }
  document.getElementById("loaded").textContent = "read " + new Date().toISOString().replace(/\.\d+Z$/, "Z") + " in " + Math.round(performance.now() - t0) + " ms";
  document.body.dataset.hosts = model ? model.hosts.size : 0;
  document.body.dataset.verified = model ? [...model.hosts.values()].filter((hs) => hs.status).length : 0;
  document.body.dataset.requests = requests;
  document.body.dataset.state = "loaded";
}

document.getElementById("refresh").addEventListener("click", refresh);
refresh().then(() => {
  if (CFG && CFG.refresh_seconds > 0 && !location.hash.includes("norefresh")) setInterval(refresh, CFG.refresh_seconds * 1000);
});
