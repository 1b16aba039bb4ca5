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
let groupPolling = false;

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

// A span of time as a person says it: "7 d 0 h", "9 min", "40 s".
function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s >= 86400) return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min`;
  return `${s} s`;
}

// The ledger's state as it is: new (no valid result yet), earning trust (with its count), trusted,
// quarantined (why, and until when).
function trustText(p) {
  switch (p.trust) {
    case "quarantined": {
      const left = p.quarantine_left_ms;
      const until = left != null ? ` until ${new Date(Date.now() + left).toLocaleString()} (${duration(left)} from now)` : "";
      return `<span class="quarantined">quarantined</span>${until}: ${esc(p.quarantine_reason ?? "")}`;
    }
    case "trusted":
      return '<span class="trusted">trusted</span>';
    case "earning":
      return `<span class="earning">earning trust</span>: ${p.valid_results} of ${p.valid_results_needed} valid results`;
    default:
      return '<span class="new">new</span> (no valid result yet)';
  }
}

// Which layers of each model the swarm holds, and how many times over: one row per peer holding the
// model whole or in part (or fetching some of it from peers), one cell per layer; the last row counts
// the copies, a gap in red, a single copy in amber. Layers on their way (fetched now) are striped
// and not counted until held.
function renderCoverage(models, peers) {
  const el = $("coverage");
  const online = peers.filter((p) => p.online);
  const llms = (models || []).filter((m) => m.kind === "llm" && m.layers);
  if (!llms.length) {
    el.innerHTML = '<p class="empty">No model with known layers yet: a node holding one joins with <code>hearth node --join URL</code>.</p>';
    return;
  }
  el.innerHTML = llms
    .map((m) => {
      const rows = [];
      for (const p of online) {
        let ranges = [];
        if ((p.capabilities.models || []).includes(m.id)) ranges = [[0, m.layers]];
        else {
          const held = (p.layers_held || []).find((h) => h.model === m.id);
          if (held) ranges = held.layers;
        }
        const fetching = ((p.layers_fetching || []).find((h) => h.model === m.id) || { layers: [] }).layers;
        if (ranges.length || fetching.length) rows.push({ peer: p.peer_id, ranges, fetching });
      }
      const copies = Array.from({ length: m.layers }, (_, l) => rows.filter((r) => r.ranges.some(([a, b]) => l >= a && l < b)).length);
      const covered = copies.filter((c) => c > 0).length;
      const minCopies = Math.min(...copies);
      const within = (list, l) => list.some(([a, b]) => l >= a && l < b);
      const cells = (r) => Array.from({ length: m.layers }, (_, l) => `<td class="${within(r.ranges, l) ? "held" : within(r.fetching, l) ? "fetching" : ""}"></td>`).join("");
      const fetchingNow = rows.filter((r) => r.fetching.length).length;
      const head = Array.from({ length: m.layers }, (_, l) => `<th>${l % 5 === 0 ? l : ""}</th>`).join("");
      const peerRows = rows
        .map((r) => `<tr data-peer="${esc(r.peer)}" data-layers="${r.ranges.map(([a, b]) => `${a}-${b}`).join(",")}" data-fetching="${r.fetching.map(([a, b]) => `${a}-${b}`).join(",")}"><th class="mono" title="${esc(r.peer)}">${esc(short(r.peer))}</th>${cells(r)}</tr>`)
        .join("");
      const countRow = `<tr class="copies"><th>copies</th>${copies.map((c) => `<td class="${c === 0 ? "gap" : c === 1 ? "single" : "many"}">${c}</td>`).join("")}</tr>`;
      const state = covered < m.layers ? `<span class="gap-text">${m.layers - covered} layers uncovered</span>` : minCopies === 1 ? '<span class="single-text">some layers held once: one peer away from a gap</span>' : `every layer held ${minCopies}+ times`;
      return `<div class="model-coverage" data-model="${esc(m.id)}" data-layers="${m.layers}" data-covered="${covered}" data-min-copies="${minCopies}" data-holders="${rows.length}">
        <h3>${esc(m.name)} <small>${m.layers} layers · ${covered}/${m.layers} covered · ${state}${fetchingNow ? ` · ${fetchingNow} peer${fetchingNow > 1 ? "s" : ""} fetching layers (striped)` : ""}</small></h3>
        <table class="coverage"><thead><tr><th>peer</th>${head}</tr></thead><tbody>${peerRows}${countRow}</tbody></table></div>`;
    })
    .join("");
}

// A chart with no data yet says so instead of drawing an axis over nothing.
function chartState(id, empty, text) {
  const box = $(id);
  box.parentElement.classList.toggle("no-data", empty);
  box.parentElement.dataset.empty = String(empty);
  box.parentElement.querySelector(".empty-note").textContent = empty ? text : "";
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
      const trust = trustText(p);
      return `<tr data-peer="${esc(p.peer_id)}" data-online="${p.online}" data-quarantined="${p.quarantined}" data-trust="${esc(p.trust ?? "new")}" class="${p.quarantined ? "quarantined-row" : ""}">
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
      const rtts = s.hop_rtt_ms || [];
      const route = (s.route || [])
        .map((h, i) => {
          const stage = `<span class="stage" title="${esc(h.peer_id)}">${esc(short(h.peer_id))}<br><small>layers ${h.layers[0]}..${h.layers[1]}</small></span>`;
          const last = i === s.route.length - 1;
          const rtt = rtts[i] != null ? `${fmt(rtts[i], 1)} ms` : "";
          return stage + (last ? (rtt ? `<span class="hop back">↺ ${rtt}</span>` : "") : `<span class="hop">→ ${rtt}</span>`);
        })
        .join("");
      return `<tr data-session="${s.id}"><td>${s.id}</td><td>${esc(s.state)}</td><td class="mono wrap"><span class="chain">${route}</span></td>
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
  const noJobs = !snap.jobs.length;
  chartState("chart-throughput", noJobs || history.t.length < 2, "No data yet: the chart starts with the first job (hearth embed …).");
  chartState("chart-results", noJobs || history.t.length < 2, "No results yet: verified and rejected results show once a job runs.");
  chartState("chart-peers", history.t.length < 2, "No data yet: a point a second from now on.");
  renderCoverage(snap.models, snap.peers);
  renderSummary(snap);
  renderPeers(snap.peers);
  renderJobs(snap.jobs);
  renderSessions(snap.sessions);
  previous = snap;
  status(`live · updated ${new Date(snap.time_ms).toLocaleTimeString()}`, true);
}

// A coordinator group (GET /v1/group, beside the event stream): which member leads, each member's
// role and how far its journal has come. A lone coordinator answers 404 and the section stays hidden.
async function pollGroup() {
  const answer = await fetch("/v1/group", { credentials: "same-origin" }).catch(() => null);
  if (!answer || !answer.ok) {
    if (answer && answer.status === 404) return; // not a group: no more polling
    setTimeout(pollGroup, 2000);
    return;
  }
  const g = await answer.json();
  $("group-section").hidden = false;
  const top = Math.max(0, ...g.members.map((m) => m.commit_index ?? 0));
  $("group-summary").innerHTML = g.leader
    ? `term ${g.term} · leader <span class="mono" title="${esc(g.leader)}">${esc(short(g.leader))}</span> · this page is served by the ${esc(g.self.role)}`
    : `term ${g.term} · <span class="gap-text">no leader: an election is under way</span>`;
  $("group").tBodies[0].innerHTML = g.members
    .map((m) => {
      const behind = m.commit_index != null && m.commit_index < top ? ` <small>(${top - m.commit_index} behind)</small>` : "";
      const position = m.commit_index != null ? `${m.commit_index}${behind}` : "—";
      return `<tr data-member="${esc(m.peer_id)}" data-role="${esc(m.role)}" data-commit="${m.commit_index ?? ""}" class="${m.role === "leader" ? "leader-row" : m.role === "unreachable" ? "offline" : ""}">
        <td class="mono" title="${esc(m.peer_id)}">${esc(short(m.peer_id))}</td><td>${esc(m.role)}</td><td>${position}</td><td class="mono">${esc(m.api ?? "—")}</td></tr>`;
    })
    .join("");
  setTimeout(pollGroup, 2000);
}

function connect() {
  $("login").hidden = true;
  $("main").hidden = false;
  if (source) source.close();
  source = new EventSource("/v1/events");
  source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  source.onerror = () => status("disconnected; retrying…", false);
  if (!groupPolling) {
    groupPolling = true;
    pollGroup();
  }
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
