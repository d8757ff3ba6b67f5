// serve.js: the console of a push-mode fleet (deploy console serve). It
// reads status.json from the local server, which asks each host over SSH
// (the fleet session, host keys pinned) when the page asks, and shows
// each host's running generation, commit and age, boot default, pending
// and failed generations, whether its last application completed, who
// holds its run lock, and drift. The server is on this machine: the
// trust is SSH's, not the browser's.
"use strict";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    e.setAttribute(k === "class" ? "class" : k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtTime(t) {
  if (!t || t.startsWith("0001-")) return "";
  const d = new Date(t);
  return isNaN(d) ? t : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function age(t) {
  if (!t || t.startsWith("0001-")) return "";
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  if (s < 120) return Math.round(s) + "s";
  if (s < 7200) return Math.round(s / 60) + "m";
  if (s < 172800) return Math.round(s / 3600) + "h";
  return Math.round(s / 86400) + "d";
}

function row(h) {
  const st = h.status;
  if (!st) {
    return el("tr", { "data-host": h.host, "data-result": h.result, class: "unverified" },
      el("td", {}, h.host), el("td", {}, el("span", { class: "pill " + (h.result === "ok" ? "done" : "failed") }, h.result)),
      el("td", { colspan: 7 }, h.error || ""));
  }
  const notes = [];
  if (!st.consistent) notes.push(el("span", { class: "pill failed" }, "incomplete"));
  if (st.reboot_required) notes.push(el("span", { class: "pill halted" }, "reboot required"));
  if (st.kept_secrets && st.kept_secrets.length) notes.push(el("span", { class: "pill halted" }, "kept secrets: " + st.kept_secrets.join(",")));
  const drift = st.drift ? st.drift.items || [] : null;
  if (drift && drift.length) notes.push(el("span", { class: "pill failed", "data-drift": drift.length }, drift.length + " drifted"));
  return el("tr", { "data-host": h.host, "data-result": h.result, "data-generation": st.current },
    el("td", {}, h.host),
    el("td", {}, el("span", { class: "pill " + (h.result === "ok" ? "done" : "failed") }, h.result), notes),
    el("td", {}, st.current || "none"),
    el("td", { class: "mono" }, (st.current_git_rev || "").slice(0, 12)),
    el("td", { title: fmtTime(st.current_time) }, age(st.current_time)),
    el("td", {}, st.boot === st.current ? "same" : String(st.boot)),
    el("td", {}, st.pending ? "generation " + st.pending : ""),
    el("td", { class: st.failed && st.failed.length ? "bad" : "" }, (st.failed || []).join(", ")),
    el("td", {}, st.run_lock ? (st.run_lock.operator || "") + "@" + (st.run_lock.machine || "") + " " + (st.run_lock.command || "") : ""));
}

async function refresh() {
  document.body.dataset.state = "loading";
  const main = document.getElementById("main");
  try {
    const resp = await fetch("status.json", { cache: "no-store" });
    if (!resp.ok) throw new Error("status.json: HTTP " + resp.status + ": " + (await resp.text()));
    const fs = await resp.json();
    const counts = {};
    for (const h of fs.hosts) counts[h.result] = (counts[h.result] || 0) + 1;
    main.replaceChildren(
      el("p", { id: "counts" }, "read " + fmtTime(fs.time) + ": ", Object.entries(counts).sort().map(([k, n]) => el("span", { class: "pill " + (k === "ok" ? "done" : "failed"), "data-count": k }, n + " " + k))),
      el("table", { id: "hosts" },
        el("thead", {}, el("tr", {}, ["host", "state", "generation", "commit", "age", "boot default", "pending", "failed", "run lock"].map((c) => el("th", {}, c)))),
        el("tbody", {}, fs.hosts.map(row))));
    document.body.dataset.hosts = fs.hosts.length;
  } catch (e) {
    main.replaceChildren(el("p", { class: "banner bad" }, "Could not read the fleet: " + e.message));
  }
  document.getElementById("loaded").textContent = "";
  document.body.dataset.state = "loaded";
}

document.getElementById("refresh").addEventListener("click", refresh);
refresh().then(() => {
  const m = /refresh=(\d+)/.exec(location.hash);
  if (m && +m[1] > 0) setInterval(refresh, +m[1] * 1000);
});
