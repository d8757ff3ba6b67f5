// gate.js: the console's reading of a rollout's waves, by the rule of
// pull/channel's wave gate (gate.go): which wave runs, which halted and
// why, which hosts are silent. Pure functions over verified statuses.
"use strict";

const FINAL = ["done", "rolled-back", "failed", "halted", "refused"];

function fmtTime(t) {
  if (!t || t.startsWith("0001-")) return "";
  const d = new Date(t);
  return isNaN(d) ? t : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function outcomeTime(st) {
  return new Date(st.outcome_time && !st.outcome_time.startsWith("0001-") ? st.outcome_time : st.time);
}

function rfc3339(ms) {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");
}

// decide is pull/channel's gate (decide in gate.go) for the hosts of wave
// of head h at now: "go", "wait" or "halt", and why. hosts maps each host
// to {status}: its verified status, if any.
function decide(h, hosts, wave, now) {
  const timeout = h.wave_timeout_ms || 0;
  const deadline = wave > 1 && timeout ? new Date(h.published).getTime() + (wave - 1) * timeout : 0;
  const late = deadline > 0 && now > deadline;
  const failed = [], silent = [];
  for (const name of (h.waves || []).slice(0, wave - 1).flat()) {
    const hs = hosts.get(name);
    const st = hs && hs.status;
    const reported = st && st.serial === h.serial && FINAL.includes(st.outcome) && (!deadline || outcomeTime(st).getTime() <= deadline);
    if (!reported) {
      if (!late) return { d: "wait", why: "waiting for " + name + " (wave before " + wave + ") to report serial " + h.serial };
      silent.push(name);
      continue;
    }
    if (st.outcome === "done") continue;
    if (st.outcome === "halted") {
      return { d: "halt", why: "the rollout of serial " + h.serial + " stopped before wave " + wave + " (" + name + " halted: " + (st.message || "") + ")" };
    }
    failed.push(name + " (" + st.outcome + (st.check ? ", health check \"" + st.check + "\"" : "") + ")");
    if (failed.length > (h.max_failures || 0)) {
      return { d: "halt", why: "the rollout of serial " + h.serial + " stopped before wave " + wave + ": " + failed.join(", ") + " failed (max_failures " + (h.max_failures || 0) + ")" };
    }
  }
  if (silent.length) {
    return { d: "halt", why: "the rollout of serial " + h.serial + " stopped before wave " + wave + ": " + silent.join(", ") + " did not report by " + rfc3339(deadline) };
  }
  return { d: "go", why: "" };
}

// judgeWaves is each wave's state, as its hosts' gate decides it now
// ([decide]): halted (and why), waiting for the earlier waves (and for
// whom), or, once it may go, running, done or failed by its own hosts'
// reports (halted too when they report so). It marks a host silent when
// its wave's own time is over without its report of the serial (what the
// next wave's gate counts as silence). TestGateJS holds it to
// pull/channel's GateReports.
function judgeWaves(h, hosts, now) {
  const timeout = h.wave_timeout_ms || 0;
  const published = new Date(h.published).getTime();
  return (h.waves || []).map((names, i) => {
    const wave = i + 1;
    const own = names.map((n) => hosts.get(n));
    const ownDeadline = timeout ? published + wave * timeout : 0;
    for (const hs of own) {
      const st = hs.status;
      const reported = st && st.serial === h.serial && FINAL.includes(st.outcome) && (!ownDeadline || outcomeTime(st).getTime() <= ownDeadline);
      hs.silent = !reported && ownDeadline > 0 && now > ownDeadline;
    }
    const gate = wave === 1 ? { d: "go", why: "" } : decide(h, hosts, wave, now);
    const deadline = wave > 1 && timeout ? published + (wave - 1) * timeout : 0;
    const mine = own.filter((hs) => hs.status && hs.status.serial === h.serial);
    let state;
    if (gate.d === "halt" || mine.some((hs) => hs.status.outcome === "halted")) state = "halted";
    else if (gate.d === "wait") state = "waiting";
    else if (mine.length === own.length && mine.every((hs) => FINAL.includes(hs.status.outcome))) state = mine.every((hs) => hs.status.outcome === "done") ? "done" : "failed";
    else if (mine.some((hs) => hs.status.outcome !== "waiting")) state = "running";
    else state = "waiting";
    let why = gate.why;
    if (state === "halted" && !why) why = "its hosts halted: " + ((mine.find((hs) => hs.status.outcome === "halted") || {}).status || {}).message;
    return { wave, names, state, why, deadline };
  });
}
