// End-to-end test of the dashboard: a real coordinator (API keys required) and real nodes, the page in
// headless Chromium driven by Playwright. Checks: the page asks for a key once and lists the peers;
// empty charts say so and fresh peers show as new; the coverage view shows the model's holders as the
// coordinator lists them, and loses a killed node's layers; a node joining and one leaving show
// without a reload; a running embed job's progress advances; honest nodes earn trust and a lying node
// shows as quarantined, with its reason and until when. Saves screenshots to SHOTS (default
// target/dashboard-shots).
//
//   HEARTH_BIN=target/debug/hearth node tests/dashboard/dashboard.test.mjs
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const hearth = path.resolve(root, process.env.HEARTH_BIN ?? "target/debug/hearth");
const models = process.env.HEARTH_MODELS ?? path.join(os.homedir(), ".cache/hearth/models");
const shots = path.resolve(root, process.env.SHOTS ?? "target/dashboard-shots");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
fs.mkdirSync(shots, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-dashboard-"));
const children = new Map();

function start(name, args) {
  const log = fs.openSync(path.join(tmp, `${name}.log`), "w");
  const child = spawn(hearth, args, { stdio: ["ignore", log, log], env: { ...process.env, HEARTH_LOG: "info" } });
  children.set(name, child);
  return child;
}

function cleanup() {
  for (const child of children.values()) child.kill("SIGKILL");
}
process.on("exit", cleanup);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, seconds, check) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      for (const name of children.keys()) {
        console.error(`--- ${name}.log (tail)\n` + fs.readFileSync(path.join(tmp, `${name}.log`), "utf8").split("\n").slice(-15).join("\n"));
      }
      throw new Error(`timed out after ${seconds} s waiting for: ${what}`);
    }
    await sleep(200);
  }
}

const coordinatorDir = path.join(tmp, "coordinator");
start("coordinator", ["coordinator", "--data-dir", coordinatorDir, "--http", "127.0.0.1:0", "--no-mdns",
  "--listen", "/ip4/127.0.0.1/tcp/0", "--models", models]);
const api = await until("the coordinator's API", 20, () => {
  try { return fs.readFileSync(path.join(coordinatorDir, "api.url"), "utf8").trim(); } catch { return null; }
});
const key = execFileSync(hearth, ["apikey", "create", "--api", api, "--data-dir", coordinatorDir], { stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
assert.match(key, /^hk-/);

function startNode(i, extra = []) {
  const dir = path.join(tmp, `node${i}`);
  const id = execFileSync(hearth, ["keygen", "--data-dir", dir]).toString().trim().split(/\s+/).pop();
  start(`node${i}`, ["node", "--data-dir", dir, "--join", api, "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0",
    "--models", models, "--max-threads", "1", ...extra]);
  return id;
}
const ids = [startNode(0), startNode(1), startNode(2, ["--fault", "wrong-output"])];
const liar = ids[2];

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1100 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(api + "/");

  // The page asks for a key once; the key becomes an HttpOnly cookie.
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#key", key);
  await page.click("#login-form button");
  await page.locator("#main").waitFor({ state: "visible" });
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "hearth_session");
  assert.ok(session && session.httpOnly, "an HttpOnly session cookie");
  assert.equal(await page.evaluate(() => document.cookie), "", "page scripts cannot read it");

  const row = (id) => page.locator(`#peers tr[data-peer="${id}"]`);
  const attr = async (id, name) => (await row(id).count()) ? row(id).getAttribute(name) : null;
  await until("the page lists the 3 peers, online", 30, async () => {
    for (const id of ids) if ((await attr(id, "data-online")) !== "true") return false;
    return true;
  });
  await page.evaluate(() => { window.__sameDocument = true; });

  // Before any job: the charts say they have no data; fresh peers are new, not trusted.
  for (const id of ["chart-throughput", "chart-results"]) {
    const figure = page.locator(`#${id}`).locator("xpath=..");
    assert.equal(await figure.getAttribute("data-empty"), "true", `${id} shows its empty state`);
    assert.match(await figure.innerText(), /No (data|results) yet/);
  }
  for (const id of ids) {
    assert.equal(await attr(id, "data-trust"), "new", "a fresh peer is new");
    assert.doesNotMatch(await row(id).innerText(), /trusted/);
  }

  // The coverage view against the swarm's real holdings: the peers that hold SmolLM2, as the
  // coordinator lists them, each a row over all its 30 layers, every layer held by all of them.
  const listed = async () => {
    const answer = await fetch(api + "/v1/models", { headers: { authorization: "Bearer " + key } });
    const smollm2 = (await answer.json()).data.find((m) => m.id === "smollm2-135m-instruct-q4_1");
    return { id: smollm2.hearth.id, layers: smollm2.hearth.layers, holders: smollm2.holders.slice().sort() };
  };
  const coverage = async (model) => {
    const box = page.locator(`#coverage .model-coverage[data-model="${model}"]`);
    if (!(await box.count())) return null;
    const rows = await box.locator("tbody tr[data-peer]").evaluateAll((trs) => trs.map((tr) => [tr.dataset.peer, tr.dataset.layers]));
    return {
      layers: Number(await box.getAttribute("data-layers")),
      covered: Number(await box.getAttribute("data-covered")),
      minCopies: Number(await box.getAttribute("data-min-copies")),
      rows: rows.sort(),
    };
  };
  const real = await until("the coordinator lists 3 holders of SmolLM2", 30, async () => {
    const m = await listed();
    return m.holders.length === 3 ? m : null;
  });
  assert.equal(real.layers, 30);
  await until("the coverage view shows the 3 holders over all 30 layers", 30, async () => {
    const c = await coverage(real.id);
    return c && c.layers === 30 && c.covered === 30 && c.minCopies === 3 &&
      JSON.stringify(c.rows) === JSON.stringify(real.holders.map((h) => [h, "0-30"]));
  });
  await page.screenshot({ path: path.join(shots, "1-peers.png"), fullPage: true });

  // A node joins: it shows up without a reload.
  ids.push(startNode(3));
  await until("the joining node on the page", 30, async () => (await attr(ids[3], "data-online")) === "true");

  // A node leaves (killed outright): it shows offline.
  children.get("node1").kill("SIGKILL");
  await until("the killed node shown offline", 30, async () => (await attr(ids[1], "data-online")) === "false");
  // Its layers are no longer counted: the coverage view loses its row and a copy of every layer.
  await until("the coverage view without the killed node", 30, async () => {
    const c = await coverage(real.id);
    return c && c.minCopies === 3 && c.covered === 30 && !c.rows.some(([peer]) => peer === ids[1]) &&
      c.rows.some(([peer]) => peer === ids[3]);
  });
  await page.screenshot({ path: path.join(shots, "4-coverage-after-a-node-left.png"), fullPage: true });

  // An embed job: its progress advances on the page, and the liar is caught.
  const texts = Array.from({ length: 2400 }, (_, i) => JSON.stringify({ id: i, text: `sentence ${i}: ${"volunteer computing ".repeat(1 + (i % 7))}` }));
  const input = path.join(tmp, "texts.jsonl");
  fs.writeFileSync(input, texts.join("\n") + "\n");
  const job = execFileSync(hearth, ["embed", "--input", input, "--detach", "--replicas", "2", "--unit-size", "8",
    "--api", api, "--api-key", key], { stdio: ["ignore", "pipe", "pipe"] }).toString().trim().split(/\s+/).pop();
  const jobRow = page.locator(`#jobs tr[data-job="${job}"]`);
  const seen = new Set();
  let screenshotTaken = false;
  await until("the job's progress advancing to done", 180, async () => {
    if (!(await jobRow.count())) return false;
    const done = Number(await jobRow.getAttribute("data-done"));
    const total = Number(await jobRow.getAttribute("data-total"));
    seen.add(done);
    if (!screenshotTaken && done > total * 0.3 && done < total * 0.8) {
      await page.screenshot({ path: path.join(shots, "2-job-running.png"), fullPage: true });
      screenshotTaken = true;
    }
    return (await jobRow.getAttribute("data-state")) === "done" ? total : false;
  });
  const progress = [...seen].filter((d) => d > 0);
  assert.ok(progress.length >= 3, `progress advanced in steps on the page: ${[...seen].join(", ")}`);
  assert.ok(screenshotTaken, "a screenshot with the job running");

  await until("the liar shown quarantined", 60, async () => (await attr(liar, "data-quarantined")) === "true");
  const liarText = await row(liar).innerText();
  assert.match(liarText, /quarantined/);
  assert.match(liarText, /quorum|wrong|disagree|lost/i, "the reason is shown");
  for (const id of [ids[0], ids[3]]) assert.equal(await attr(id, "data-quarantined"), "false", "honest nodes stay trusted");
  assert.match(liarText, /until .*\(\d+ (d|h|min|s)\b.* from now\)/, "how long the quarantine lasts");
  for (const id of [ids[0], ids[3]]) {
    assert.ok(["earning", "trusted"].includes(await attr(id, "data-trust")), "honest nodes earned trust with valid results");
  }
  for (const id of ["chart-throughput", "chart-results"]) {
    assert.equal(await page.locator(`#${id}`).locator("xpath=..").getAttribute("data-empty"), "false", `${id} draws once a job ran`);
  }

  assert.equal(await page.evaluate(() => window.__sameDocument), true, "no reload happened");
  await page.screenshot({ path: path.join(shots, "3-quarantined.png"), fullPage: true });
  assert.equal(await page.locator("#group-section").isHidden(), true, "a lone coordinator shows no group");
  assert.deepEqual(errors, [], "no script errors on the page");

  // A coordinator group: the page shows who leads, each member's role and journal position, as the
  // members say (`hearth group --json`); the leader killed, a survivor's page shows the new one.
  const members = [0, 1, 2].map((i) => {
    const dir = path.join(tmp, `member${i}`);
    const id = execFileSync(hearth, ["keygen", "--data-dir", dir]).toString().trim().split(/\s+/).pop();
    return { dir, id, name: `member${i}` };
  });
  const ports = await Promise.all(members.map(() => new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  })));
  const group = members.map((m, i) => `/ip4/127.0.0.1/tcp/${ports[i]}/p2p/${m.id}`).join(",");
  for (const m of members) {
    start(m.name, ["coordinator", "--open", "--data-dir", m.dir, "--http", "127.0.0.1:0", "--no-mdns",
      "--listen", "/ip4/127.0.0.1/tcp/0", "--group", group]);
  }
  for (const m of members) {
    m.api = await until(`${m.name}'s API`, 20, () => {
      try { return fs.readFileSync(path.join(m.dir, "api.url"), "utf8").trim(); } catch { return null; }
    });
  }
  const view = (m) => {
    try { return JSON.parse(execFileSync(hearth, ["group", "--json", "--api", m.api], { stdio: ["ignore", "pipe", "ignore"] })); } catch { return null; }
  };
  const leaderOf = (alive) => {
    const views = alive.map(view);
    const leader = views.find((v) => v && v.self.role === "leader");
    return leader && views.every((v) => v && v.leader === leader.self.peer_id) ? leader : null;
  };
  const first = await until("the group's leader", 60, () => leaderOf(members));
  const groupPage = await browser.newPage({ viewport: { width: 1500, height: 1100 } });
  groupPage.on("pageerror", (e) => errors.push(String(e)));
  const follower = members.find((m) => m.id !== first.self.peer_id);
  await groupPage.goto(follower.api + "/"); // a follower sends the page on to its leader
  const groupRows = async () => groupPage.locator("#group tbody tr").evaluateAll((rows) =>
    rows.map((r) => ({ id: r.dataset.member, role: r.dataset.role, commit: r.dataset.commit })));
  await until("the group on the page, as the members say", 30, async () => {
    const rows = await groupRows();
    const now = leaderOf(members);
    if (!now || rows.length !== 3) return false;
    return now.members.every((m) => rows.some((r) => r.id === m.peer_id && r.role === m.role && r.commit === String(m.commit_index)));
  });
  assert.equal((await groupRows()).filter((r) => r.role === "leader").length, 1, "one leader");
  const live = async () => (await groupPage.locator("#status").innerText()).startsWith("live");
  await until("the leader's page live", 30, live);
  await groupPage.screenshot({ path: path.join(shots, "5-group.png"), fullPage: true });

  const leaderMember = members.find((m) => m.id === first.self.peer_id);
  children.get(leaderMember.name).kill("SIGKILL");
  const survivors = members.filter((m) => m !== leaderMember);
  const second = await until("a new leader", 30, () => leaderOf(survivors));
  assert.notEqual(second.self.peer_id, leaderMember.id);
  await groupPage.goto(survivors[0].api + "/");
  await until("the new leader and the lost one on the page", 30, async () => {
    const rows = await groupRows();
    return rows.some((r) => r.id === second.self.peer_id && r.role === "leader")
      && rows.some((r) => r.id === leaderMember.id && r.role === "unreachable");
  });
  await until("the new leader's page live", 30, live);
  await groupPage.screenshot({ path: path.join(shots, "6-group-leader-lost.png"), fullPage: true });
  assert.deepEqual(errors, [], "no script errors on the pages");
  console.log(`dashboard: peers listed, join and leave shown live, job ${job} progress seen at ${progress.length} steps, liar quarantined, group leader and its loss shown; screenshots in ${shots}`);
} finally {
  await browser.close();
  cleanup();
}
