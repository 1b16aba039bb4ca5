// Hearth's dashboard: reads GET /v1/events (a snapshot every second) and draws the swarm, its jobs,
// its pipeline sessions and charts over time. It only reads. If the coordinator wants a key, the page
// asks once and POST /v1/session turns it into an HttpOnly cookie, which the event stream carries.
"use strict";

const HISTORY = 300; // points kept per chart (5 minutes at one snapshot a second)
const $ = (id) => document.getElementById(id);
const short = (id) => (id.length > 14 ? "…" + id.slice(-8) : id);
const fmt = (x, digits = 2) => (typeof x === "number" ? x.toFixed(digits) : "—");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const history = { t: [], throughput: [], verified: [], rejected: [], peers: [] };
let previous = null; // the last snapshot, for rates
const jobRates = new Map(); // job id → units/s
let charts = null;
let source = null;

function status(text, live) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (live ? "live" : "down");
}

function chart(el, series, title) {
  const opts = {
    width: 380,
    height: 170,
    legend: { show: true },
    scales: { x: { time: true } },
    axes: [{}, { size: 45 }],
    series: [{}].concat(series.map(([label, stroke]) => ({ label, stroke, width: 2, points: { show: false } }))),
  };
  return new uPlot(opts, [[]].concat(series.map(() => [])), el);
}

function ensureCharts() {
  if (charts) return;
  charts = {
    throughput: chart($("chart-throughput"), [["units/s", "#1f8a4c"]]),
    results: chart($("chart-results"), [["verified/s", "#1f8a4c"], ["rejected/s", "#b3261e"]]),
    peers: chart($("chart-peers"), [["online", "#c2410c"]]),
  };
}

function push(key, value) {
  history[key].push(value);
  if (history[key].length > HISTORY) history[key].shift();
}

function rates(snap) {
  const totals = (s) => s.jobs.reduce((a, j) => ({ done: a.done + j.units_done, exec: a.exec + j.executions, rejected: a.rejected + j.rejected }), { done: 0, exec: 0, rejected: 0 });
  const now = totals(snap);
  let r = { throughput: 0, verified: 0, rejected: 0 };
  if (previous) {
    const dt = Math.max((snap.time_ms - previous.time_ms) / 1000, 1e-3);
    const before = totals(previous);
    r = {
      throughput: Math.max(0, now.done - before.done) / dt,
      verified: Math.max(0, (now.exec - now.rejected) - (before.exec - before.rejected)) / dt,
      rejected: Math.max(0, now.rejected - before.rejected) / dt,
    };
    const old = new Map(previous.jobs.map((j) => [j.id, j]));
    for (const j of snap.jobs) {
      const o = old.get(j.id);
      if (o) jobRates.set(j.id, Math.max(0, j.units_done - o.units_done) / dt);
    }
  }
  return r;
}

function renderPeers(peers) {
  const body = $("peers").tBodies[0];
  if (!peers.length) {
    body.innerHTML = '<tr class="empty"><td colspan="9">No peers yet: start a node with <code>hearth node --join URL</code>.</td></tr>';
    return;
  }
  body.innerHTML = peers
    .map((p) => {
      const c = p.capabilities;
      const hw = `${esc(c.backend)} · ${esc(c.device)} · ${c.cpu_cores} cores, ${c.threads} threads · ${(c.host_memory_total_bytes / 2 ** 30).toFixed(1)} GiB · ${esc(c.arch)}`;
      const classes = `${esc(c.numeric_class.llm ?? "—")} / ${esc(c.numeric_class.embed ?? "—")}`;
      const trust = p.quarantined
        ? `<span class="quarantined">quarantined</span>: ${esc(p.quarantine_reason ?? "")}`
        : '<span class="trusted">trusted</span>';
      return `<tr data-peer="${esc(p.peer_id)}" data-online="${p.online}" data-quarantined="${p.quarantined}" class="${p.quarantined ? "quarantined-row" : ""}">
        <td class="mono" title="${esc(p.peer_id)}">${esc(short(p.peer_id))}</td>
        <td class="${p.online ? "online" : "offline"}">${p.online ? "online" : "offline"}</td>
        <td>${hw}</td><td class="mono">${classes}</td><td>${fmt(c.score, 1)}</td>
        <td>${fmt(p.reliability, 3)}</td><td>${fmt(p.credit, 0)}</td><td>${p.strikes}</td><td class="wrap">${trust}</td></tr>`;
    })
    .join("");
}

function renderJobs(jobs) {
  const body = $("jobs").tBodies[0];
  if (!jobs.length) {
    body.innerHTML = '<tr class="empty"><td colspan="10">No jobs yet: <code>hearth embed --input texts.jsonl</code>.</td></tr>';
    return;
  }
  body.innerHTML = jobs
    .slice()
    .reverse()
    .map((j) => {
      const pending = Math.max(0, j.units_total - j.units_done - j.units_failed - j.units_running);
      const share = j.units_total ? j.units_done / j.units_total : 0;
      const replicas = j.units_done ? ` (${(j.executions / Math.max(1, j.units_done + j.units_running)).toFixed(1)})` : "";
      return `<tr data-job="${j.id}" data-done="${j.units_done}" data-total="${j.units_total}" data-state="${esc(j.state)}">
        <td>${j.id}</td><td>${esc(j.state)}</td>
        <td><span class="bar"><span style="width:${(share * 100).toFixed(1)}%"></span></span> ${j.units_done}/${j.units_total}</td>
        <td>${pending}</td><td>${j.units_running}</td><td>${j.units_done}</td><td>${j.units_failed}</td>
        <td>${j.executions}${replicas}</td><td>${j.rejected}</td><td>${fmt(jobRates.get(j.id) ?? 0, 1)}</td></tr>`;
    })
    .join("");
}

function renderSessions(sessions) {
  const body = $("sessions").tBodies[0];
  if (!sessions.length) {
    body.innerHTML = '<tr class="empty"><td colspan="8">No pipeline sessions yet: <code>hearth generate --prompt …</code>.</td></tr>';
    return;
  }
  body.innerHTML = sessions
    .map((s) => {
      const route = (s.route || []).map((h) => `${esc(short(h.peer_id))}: ${h.layers[0]}..${h.layers[1]}`).join(" → ");
      return `<tr data-session="${s.id}"><td>${s.id}</td><td>${esc(s.state)}</td><td class="mono wrap">${route}</td>
        <td>${s.tokens}</td><td>${fmt(s.tokens_per_s, 1)}</td><td>${s.verified_tokens}</td><td>${s.windows}</td><td>${s.reroutes}</td></tr>`;
    })
    .join("");
}

function renderSummary(snap) {
  const online = snap.peers.filter((p) => p.online).length;
  const quarantined = snap.peers.filter((p) => p.quarantined).length;
  const running = snap.jobs.filter((j) => j.state === "running" || j.state === "queued").length;
  $("summary").innerHTML = [
    ["peers online", `${online} / ${snap.peers.length}`],
    ["quarantined", quarantined],
    ["jobs running", running],
    ["pipeline sessions", snap.sessions.filter((s) => s.state === "running").length],
  ]
    .map(([k, v]) => `<div><b>${v}</b>${k}</div>`)
    .join("");
}

function onSnapshot(snap) {
  ensureCharts();
  const r = rates(snap);
  push("t", snap.time_ms / 1000);
  push("throughput", r.throughput);
  push("verified", r.verified);
  push("rejected", r.rejected);
  push("peers", snap.peers.filter((p) => p.online).length);
  charts.throughput.setData([history.t, history.throughput]);
  charts.results.setData([history.t, history.verified, history.rejected]);
  charts.peers.setData([history.t, history.peers]);
  renderSummary(snap);
  renderPeers(snap.peers);
  renderJobs(snap.jobs);
  renderSessions(snap.sessions);
  previous = snap;
  status(`live · updated ${new Date(snap.time_ms).toLocaleTimeString()}`, true);
}

function connect() {
  $("login").hidden = true;
  $("main").hidden = false;
  if (source) source.close();
  source = new EventSource("/v1/events");
  source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  source.onerror = () => status("disconnected; retrying…", false);
}

async function start() {
  // Whether the coordinator lets this browser in: an --open one, or a live session cookie.
  const probe = await fetch("/v1/sessions", { credentials: "same-origin" }).catch(() => null);
  if (probe && probe.ok) return connect();
  status(probe ? "API key needed" : "coordinator unreachable", false);
  $("login").hidden = false;
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  const answer = await fetch("/v1/session", { method: "POST", credentials: "same-origin", headers: { authorization: "Bearer " + key } });
  if (!answer.ok) {
    const body = await answer.json().catch(() => ({}));
    $("login-error").textContent = body?.error?.message ?? `refused (${answer.status})`;
    return;
  }
  $("key").value = "";
  connect();
});

start();
