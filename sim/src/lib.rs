//! `hearth-sim`: a deterministic discrete-event simulation of a Hearth swarm that drives the
//! coordinator's real sans-IO [`Scheduler`] (with its verifier rules and ledger) against thousands of
//! simulated peers, on a virtual clock.
//!
//! The simulator sees only the scheduler's public inputs and outputs, as the coordinator's shell
//! does: peers ask for work ([`Input::Ready`]), deliver results ([`Input::Delivered`], with the marks
//! the shell would set; a bad signature is a mark, not cryptography), leave ([`Input::PeerLost`]),
//! and time passes ([`Input::Tick`]). Peers are honest, liars with a probability, adaptive liars
//! that turn once trusted, or colluders returning one shared wrong answer; groups can churn, crash,
//! and be spread over or packed into networks. The same scenario and seed give the same report.

pub mod plot;
mod scenario;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use hearth_core::limits::PEERS_MAX_DEFAULT;
use hearth_core::pipeline::{Action, Candidate, Driver, Verify, plan};
use hearth_core::scheduler::{Input, Output};
use hearth_core::{Delivery, JobSpec, LedgerOutput, Offer, Policy, Scheduler, UnitSpec};
use hearth_protocol::work::{Forward, StageData, StageResult};
use hearth_protocol::{Digest, KernelFamily, ModelId, PeerId, SecretKey};
use hearth_protocol::{Receipt, ReceiptBody, Subject};
pub use scenario::{Behaviour, Group, Network, Pipeline, Scenario, Workload};
use serde::Serialize;

/// Virtual milliseconds between scheduler ticks.
const TICK_MS: u64 = 1000;
/// How long a peer's request for work is held (as the coordinator holds it).
const HOLD_MS: u64 = 10_000;
/// How long after a peer goes silent the registry reports it lost (3 missed 2 s heartbeats).
const LOST_AFTER_MS: u64 = 6_000;
/// How long a node waits before sending a lost delivery again (its outbox).
const REDELIVER_MS: u64 = 2_000;

/// What the simulation found. Nothing in it depends on the host.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// Peers simulated.
    pub peers: u64,
    /// Units submitted.
    pub units: u64,
    /// Units accepted.
    pub units_accepted: u64,
    /// Units that failed (no quorum within the cap).
    pub units_failed: u64,
    /// Accepted units whose accepted result is wrong.
    pub wrong_accepted: u64,
    /// Results delivered and judged.
    pub executions: u64,
    /// Executions per accepted unit over the whole run.
    pub executions_per_accepted_unit: f64,
    /// The same over the second half of the units accepted.
    pub executions_per_accepted_unit_second_half: f64,
    /// Virtual time until every job finished (or the time limit).
    pub makespan_s: f64,
    /// Accepted units per virtual second.
    pub throughput_units_per_s: f64,
    /// Peers that lie at least sometimes.
    pub liars: u64,
    /// Of those, quarantined at least once.
    pub liars_quarantined: u64,
    /// Honest peers quarantined (should be 0).
    pub honest_quarantined: u64,
    /// Mean virtual seconds from start to a liar's first quarantine (quarantined liars only).
    pub mean_time_to_quarantine_s: Option<f64>,
    /// The longest of those.
    pub max_time_to_quarantine_s: Option<f64>,
    /// Mean credit of an honest peer.
    pub credit_per_honest_peer: f64,
    /// Whether every job finished within the time limit.
    pub finished: bool,
    /// Events processed.
    pub events: u64,
    /// Pipeline sessions started.
    pub pipeline_sessions: u64,
    /// Of those, finished without error.
    pub pipeline_sessions_done: u64,
    /// Tokens released to clients.
    pub pipeline_tokens: u64,
    /// Released tokens that were wrong (and not corrected).
    pub pipeline_wrong_tokens: u64,
    /// Mean tokens per second of a finished session, over its whole life.
    pub pipeline_tokens_per_s: f64,
    /// Stages replaced mid-session (failures and caught liars).
    pub pipeline_reroutes: u64,
    /// Released tokens later corrected (`verify = "after"`).
    pub pipeline_corrections: u64,
}

impl Report {
    /// The readable summary.
    pub fn summary(&self) -> String {
        let mut text = self.sharded_summary();
        if self.pipeline_sessions > 0 {
            text.push_str(&format!(
                "\npipeline: {}/{} sessions done, {} tokens ({} wrong, {} corrected), {:.1} tokens/s per session, {} reroutes",
                self.pipeline_sessions_done,
                self.pipeline_sessions,
                self.pipeline_tokens,
                self.pipeline_wrong_tokens,
                self.pipeline_corrections,
                self.pipeline_tokens_per_s,
                self.pipeline_reroutes,
            ));
        }
        text
    }

    fn sharded_summary(&self) -> String {
        format!(
            "{}: {} peers ({} liars), {} units: {} accepted, {} failed, {} wrong accepted\n\
             executions per accepted unit {:.3} (second half {:.3}); makespan {:.1} s, {:.1} units/s\n\
             liars quarantined {}/{} (mean {} s after start); honest quarantined {}; credit per honest peer {:.1}",
            self.scenario,
            self.peers,
            self.liars,
            self.units,
            self.units_accepted,
            self.units_failed,
            self.wrong_accepted,
            self.executions_per_accepted_unit,
            self.executions_per_accepted_unit_second_half,
            self.makespan_s,
            self.throughput_units_per_s,
            self.liars_quarantined,
            self.liars,
            self.mean_time_to_quarantine_s
                .map_or("-".into(), |t| format!("{t:.1}")),
            self.honest_quarantined,
            self.credit_per_honest_peer,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The peer asks for work (if idle); `epoch` guards against stale events after churn.
    Ready(u32, u32),
    /// The peer's result arrives.
    Deliver {
        peer: u32,
        epoch: u32,
        job: u64,
        unit: u64,
    },
    Tick,
    Leave(u32),
    Join(u32),
    Crash(u32),
    /// The registry notices the peer is gone.
    Lost(u32, u32),
    /// A pipeline session starts.
    StartSession(u32),
    /// A stage's answer arrives.
    StageAnswer(u64),
}

struct SimPeer {
    id: PeerId,
    key: SecretKey,
    group: usize,
    offer: Offer,
    ms_per_item: f64,
    online: bool,
    crashed: bool,
    busy: bool,
    epoch: u32,
    valid: u32,
    quarantined_at: Option<u64>,
}

/// xorshift64*: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Layers of the simulated model (the default model's).
const LAYERS: u32 = 30;

/// The honest last stage's token at absolute position `q` of session `session`.
fn fake_token(session: u64, q: u64) -> u32 {
    (session
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(q.wrapping_mul(31))
        % 49_000) as u32
}

/// An honest stage's activation for position `q` after layer `end`.
fn fake_value(session: u64, end: u64, q: u64) -> f32 {
    (session
        .wrapping_mul(7)
        .wrapping_add(end.wrapping_mul(13))
        .wrapping_add(q.wrapping_mul(17))
        % 1000) as f32
        / 1000.0
}

fn truth(job: u64, unit: u64) -> Digest {
    Digest::of(
        "sim truth",
        &[job.to_le_bytes(), unit.to_le_bytes()].concat(),
    )
}

/// Per unit in flight: who was given it, and what each delivered.
#[derive(Default)]
struct Flight {
    assigned: Vec<u32>,
    delivered: Vec<(u32, Digest, String)>,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    scheduler: Scheduler,
    peers: Vec<SimPeer>,
    by_id: HashMap<PeerId, u32>,
    flights: HashMap<(u64, u64), Flight>,
    accepted: BTreeSet<(u64, u64)>,
    units: u64,
    units_failed: u64,
    wrong: u64,
    executions: u64,
    half_at: Option<(u64, u64)>,
    jobs_left: u32,
    events: u64,
    valid_items: f64,
    sessions: Vec<SimSession>,
    /// Stage requests in flight: ticket → (session, peer, epoch, request).
    calls: HashMap<u64, (u32, u32, u32, Forward)>,
    next_ticket: u64,
    candidates: Vec<Candidate>,
}

struct SimSession {
    driver: Option<Driver>,
    started: u64,
    ended: Option<u64>,
    released: u64,
    wrong: u64,
    corrections: u64,
    failed: bool,
}

/// Run `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Result<Report, String> {
    let mut sim = Sim::new(scenario, seed);
    sim.start();
    sim.run()?;
    Ok(sim.report())
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario, seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let model = ModelId::of_bytes(b"sim model");
        let mut peers = Vec::new();
        let mut by_id = HashMap::new();
        let mut n: u64 = 0;
        for (g, group) in scenario.population.iter().enumerate() {
            for i in 0..group.count {
                n += 1;
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&n.to_le_bytes());
                key[8..16].copy_from_slice(&seed.to_le_bytes());
                let id = SecretKey::from_bytes(&key).public().peer_id();
                let network = match group.networks {
                    Some(k) => format!("g{g}-net{}", i % k.max(1)),
                    None => format!("net{n}"),
                };
                let [lo, hi] = group.ms_per_item;
                let class = format!("k0/embed/{}", group.backend);
                by_id.insert(id, peers.len() as u32);
                peers.push(SimPeer {
                    id,
                    key: SecretKey::from_bytes(&key),
                    group: g,
                    offer: Offer {
                        classes: BTreeMap::from([(KernelFamily::Embed, class)]),
                        models: vec![model],
                        score: 20.0,
                        network: Some(network),
                    },
                    ms_per_item: lo + (hi - lo) * rng.unit(),
                    online: true,
                    crashed: false,
                    busy: false,
                    epoch: 0,
                    valid: 0,
                    quarantined_at: None,
                });
            }
        }
        Self {
            scenario,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            scheduler: Scheduler::new(Policy {
                peers_max: peers.len().max(PEERS_MAX_DEFAULT),
                ..Policy::seeded(seed)
            }),
            peers,
            by_id,
            flights: HashMap::new(),
            accepted: BTreeSet::new(),
            units: 0,
            units_failed: 0,
            wrong: 0,
            executions: 0,
            half_at: None,
            jobs_left: scenario.workload.jobs,
            events: 0,
            valid_items: 0.0,
            sessions: Vec::new(),
            calls: HashMap::new(),
            next_ticket: 0,
            candidates: Vec::new(),
        }
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue
            .push(Reverse((self.now + delay, self.seq, event)));
    }

    fn latency(&mut self) -> u64 {
        let net = &self.scenario.network;
        net.latency_ms + (self.rng.unit() * net.jitter_ms as f64) as u64
    }

    fn start(&mut self) {
        let w = &self.scenario.workload;
        let model = ModelId::of_bytes(b"sim model");
        for job in 1..=u64::from(w.jobs) {
            let units = (0..w.units_per_job)
                .map(|u| UnitSpec {
                    input: Digest::of("sim input", &[job.to_le_bytes(), u.to_le_bytes()].concat()),
                    items: w.items_per_unit,
                })
                .collect();
            self.units += w.units_per_job;
            let out = self.scheduler.handle(
                0,
                Input::Submit(JobSpec {
                    id: job,
                    family: KernelFamily::Embed,
                    model,
                    replicas: w.replicas,
                    units,
                    submitter: None,
                }),
            );
            self.apply(out);
        }
        for p in 0..self.peers.len() as u32 {
            let delay = (self.rng.unit() * 1000.0) as u64;
            self.at(delay, Event::Ready(p, 0));
            let group = &self.scenario.population[self.peers[p as usize].group];
            if let Some(mean) = group.mean_online_s {
                let t = (self.rng.exp(mean) * 1000.0) as u64;
                self.at(t, Event::Leave(p));
            }
            if let Some(mean) = group.mean_crash_s {
                let t = (self.rng.exp(mean) * 1000.0) as u64;
                self.at(t, Event::Crash(p));
            }
        }
        self.at(TICK_MS, Event::Tick);
        if let Some(p) = &self.scenario.pipeline {
            self.sessions = (0..p.sessions)
                .map(|_| SimSession {
                    driver: None,
                    started: 0,
                    ended: None,
                    released: 0,
                    wrong: 0,
                    corrections: 0,
                    failed: false,
                })
                .collect();
            for i in 0..p.sessions {
                // After the peers have said hello, staggered over a second.
                let delay = 2000 + (self.rng.unit() * 1000.0) as u64;
                self.at(delay, Event::StartSession(i));
            }
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let limit = self.scenario.time_limit_s * 1000;
        while let Some(Reverse((t, _, event))) = self.queue.pop() {
            let sessions_left = self.sessions.iter().any(|s| s.ended.is_none());
            if (self.jobs_left == 0 && !sessions_left) || t > limit {
                break;
            }
            self.now = t;
            self.events += 1;
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick => {
                let out = self.scheduler.handle(self.now, Input::Tick);
                self.apply(out);
                self.candidates.clear();
                self.at(TICK_MS, Event::Tick);
            }
            Event::StartSession(i) => self.start_session(i),
            Event::StageAnswer(ticket) => self.stage_answer(ticket),
            Event::Ready(p, epoch) => {
                let peer = &self.peers[p as usize];
                if !peer.online || peer.crashed || peer.busy || peer.epoch != epoch {
                    return Ok(());
                }
                let input = Input::Ready {
                    peer: peer.id,
                    slots: 1,
                    until_ms: self.now + HOLD_MS,
                    offer: peer.offer.clone(),
                };
                let out = self.scheduler.handle(self.now, input);
                self.apply(out);
                if !self.peers[p as usize].busy {
                    // Answered empty after the hold; asks again.
                    self.at(HOLD_MS, Event::Ready(p, epoch));
                }
            }
            Event::Deliver {
                peer: p,
                epoch,
                job,
                unit,
            } => {
                let peer = &self.peers[p as usize];
                if peer.crashed || peer.epoch != epoch {
                    return Ok(());
                }
                if self.rng.unit() < self.scenario.network.loss {
                    self.at(REDELIVER_MS, event);
                    return Ok(());
                }
                let (digest, class) = self.answer(p, job, unit);
                let flight = self.flights.entry((job, unit)).or_default();
                let agrees_across = flight
                    .delivered
                    .iter()
                    .filter(|(_, d, c)| *c != class && *d == digest)
                    .map(|(q, _, _)| self.peers[*q as usize].id)
                    .collect();
                flight.delivered.push((p, digest, class.clone()));
                let peer_id = self.peers[p as usize].id;
                let group = self.peers[p as usize].group;
                let signature_ok =
                    self.scenario.population[group].behaviour != Behaviour::BadSignature;
                let input = Input::Delivered(Delivery {
                    peer: peer_id,
                    job,
                    unit,
                    signer: peer_id,
                    signature_ok,
                    subject: (job, unit),
                    input: Digest::of(
                        "sim input",
                        &[job.to_le_bytes(), unit.to_le_bytes()].concat(),
                    ),
                    output: digest,
                    output_ok: true,
                    class,
                    agrees_across,
                });
                self.executions += 1;
                let out = self.scheduler.handle(self.now, input);
                self.peers[p as usize].busy = false;
                self.apply(out);
                let latency = self.latency();
                self.at(latency, Event::Ready(p, epoch));
            }
            Event::Leave(p) => {
                let peer = &mut self.peers[p as usize];
                if !peer.online || peer.crashed {
                    return Ok(());
                }
                peer.online = false;
                peer.busy = false;
                peer.epoch += 1;
                let epoch = peer.epoch;
                let group = &self.scenario.population[peer.group];
                let back = (self.rng.exp(group.mean_offline_s) * 1000.0) as u64;
                self.at(LOST_AFTER_MS, Event::Lost(p, epoch));
                self.at(back.max(LOST_AFTER_MS + 1), Event::Join(p));
            }
            Event::Join(p) => {
                let peer = &mut self.peers[p as usize];
                if peer.crashed {
                    return Ok(());
                }
                peer.online = true;
                peer.epoch += 1;
                let epoch = peer.epoch;
                let group = &self.scenario.population[peer.group];
                if let Some(mean) = group.mean_online_s {
                    let t = (self.rng.exp(mean) * 1000.0) as u64;
                    self.at(t, Event::Leave(p));
                }
                self.at(0, Event::Ready(p, epoch));
            }
            Event::Crash(p) => {
                let peer = &mut self.peers[p as usize];
                if peer.crashed {
                    return Ok(());
                }
                peer.crashed = true;
                peer.online = false;
                peer.epoch += 1;
                let epoch = peer.epoch;
                self.at(LOST_AFTER_MS, Event::Lost(p, epoch));
            }
            Event::Lost(p, epoch) => {
                if self.peers[p as usize].epoch != epoch {
                    return Ok(());
                }
                let out = self
                    .scheduler
                    .handle(self.now, Input::PeerLost(self.peers[p as usize].id));
                self.apply(out);
                let id = self.peers[p as usize].id;
                for i in 0..self.sessions.len() as u32 {
                    self.stage_failed(i, id, "left the swarm");
                }
            }
        }
        Ok(())
    }

    /// What peer `p` answers for the unit: the truth, or a lie of its kind.
    fn answer(&mut self, p: u32, job: u64, unit: u64) -> (Digest, String) {
        let peer = &self.peers[p as usize];
        let class = peer.offer.classes[&KernelFamily::Embed].clone();
        let group = peer.group;
        let behaviour = &self.scenario.population[group].behaviour;
        let key = [job.to_le_bytes(), unit.to_le_bytes()].concat();
        let lie = match behaviour {
            Behaviour::Honest | Behaviour::BadSignature => false,
            Behaviour::Liar { probability } => self.rng.unit() < *probability,
            Behaviour::Adaptive { after_valid } => peer.valid >= *after_valid,
            Behaviour::Colluder { only_when_all } => {
                // Under adaptive replication a trusted colluder may hold a unit alone: it lies
                // then too, and a spot check may catch it.
                let alone_ok = self.scenario.workload.replicas.is_none();
                !only_when_all
                    || self.flights.get(&(job, unit)).is_some_and(|f| {
                        (f.assigned.len() >= 2 || alone_ok)
                            && f.assigned
                                .iter()
                                .all(|q| self.peers[*q as usize].group == group)
                    })
            }
        };
        let digest = if !lie {
            truth(job, unit)
        } else if matches!(behaviour, Behaviour::Colluder { .. }) {
            Digest::of(
                "sim collusion",
                &[key, (group as u64).to_le_bytes().to_vec()].concat(),
            )
        } else {
            Digest::of(
                "sim lie",
                &[key, u64::from(p).to_le_bytes().to_vec()].concat(),
            )
        };
        (digest, class)
    }

    fn apply(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Assign {
                    peer, job, unit, ..
                } => {
                    let p = self.by_id[&peer];
                    self.peers[p as usize].busy = true;
                    self.flights
                        .entry((job, unit))
                        .or_default()
                        .assigned
                        .push(p);
                    let items = f64::from(self.scenario.workload.items_per_unit);
                    let compute = (items * self.peers[p as usize].ms_per_item) as u64;
                    let delay = self.latency() + compute + self.latency();
                    let epoch = self.peers[p as usize].epoch;
                    self.at(
                        delay,
                        Event::Deliver {
                            peer: p,
                            epoch,
                            job,
                            unit,
                        },
                    );
                }
                Output::Accepted {
                    job, unit, digest, ..
                } => {
                    assert!(
                        self.accepted.insert((job, unit)),
                        "invariant: unit {job}/{unit} accepted twice"
                    );
                    if digest != truth(job, unit) {
                        self.wrong += 1;
                    }
                    // Invariant: a quorum backs it (fixed replication of 2 or more: two results
                    // that agree; adaptive: at least the one result of a trusted peer).
                    let backing = self.flights.get(&(job, unit)).map_or(0, |f| {
                        f.delivered.iter().filter(|(_, d, _)| *d == digest).count()
                    });
                    let needed = match self.scenario.workload.replicas {
                        Some(r) if r >= 2 => 2,
                        _ => 1,
                    };
                    assert!(
                        backing >= needed,
                        "invariant: unit {job}/{unit} accepted with {backing} results behind it"
                    );
                    // Late replicas of a decided unit need no record of it here.
                    self.flights.remove(&(job, unit));
                    if self.half_at.is_none() && self.accepted.len() as u64 * 2 >= self.units {
                        self.half_at = Some((self.executions, self.accepted.len() as u64));
                    }
                }
                Output::UnitFailed { job, unit, .. } => {
                    self.units_failed += 1;
                    self.flights.remove(&(job, unit));
                }
                Output::JobFinished { .. } => {
                    self.jobs_left = self.jobs_left.saturating_sub(1);
                }
                Output::Verdict {
                    peer, fault: None, ..
                } => {
                    let p = self.by_id[&peer];
                    self.peers[p as usize].valid += 1;
                    self.valid_items += f64::from(self.scenario.workload.items_per_unit);
                }
                Output::Ledger(LedgerOutput::Quarantined { peer, .. }) => {
                    let p = self.by_id[&peer];
                    let now = self.now;
                    self.peers[p as usize].quarantined_at.get_or_insert(now);
                }
                Output::Verdict { .. } | Output::Rejected { .. } | Output::Ledger(_) => {}
            }
        }
    }

    /// Peers that may serve stages now (refreshed each tick).
    fn stage_candidates(&mut self) -> Vec<Candidate> {
        if self.candidates.is_empty() {
            let now = self.now;
            self.candidates = self
                .peers
                .iter()
                .filter(|p| {
                    p.online && !p.crashed && !self.scheduler.standing(&p.id, now).quarantined
                })
                .map(|p| Candidate {
                    peer: p.id,
                    score: 1000.0 / p.ms_per_item,
                    memory_free_bytes: u64::MAX / 2,
                })
                .collect();
        }
        self.candidates.clone()
    }

    fn start_session(&mut self, i: u32) {
        let p = self
            .scenario
            .pipeline
            .clone()
            .expect("sessions come from [pipeline]");
        let candidates = self.stage_candidates();
        let verify = match p.verify.as_str() {
            "sampled" => Verify::Sampled,
            "after" => Verify::After,
            "off" => Verify::Off,
            _ => Verify::Window,
        };
        let mut session = SimSession {
            driver: None,
            started: self.now,
            ended: None,
            released: 0,
            wrong: 0,
            corrections: 0,
            failed: false,
        };
        match plan(&candidates, LAYERS, p.stages as usize, 1) {
            Ok(route) => {
                let prompt: Vec<u32> = (0..p.prompt_tokens).collect();
                let (driver, actions) = Driver::new(
                    u64::from(i) + 1,
                    ModelId::of_bytes(b"sim llm"),
                    route,
                    prompt,
                    p.tokens as usize,
                    u32::MAX,
                    1 << 20,
                    verify,
                    self.rng.next(),
                );
                session.driver = Some(driver);
                self.sessions[i as usize] = session;
                self.act(i, actions);
            }
            Err(_) => {
                session.ended = Some(self.now);
                session.failed = true;
                self.sessions[i as usize] = session;
            }
        }
    }

    fn act(&mut self, i: u32, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { peer, forward } => {
                    let p = self.by_id[&peer];
                    let rows = forward.input.rows() as f64;
                    let share = f64::from(forward.layers.1 - forward.layers.0) / f64::from(LAYERS);
                    let compute = (rows * share * self.peers[p as usize].ms_per_item) as u64;
                    let delay = self.latency() + compute + self.latency();
                    self.next_ticket += 1;
                    let epoch = self.peers[p as usize].epoch;
                    self.calls.insert(self.next_ticket, (i, p, epoch, forward));
                    self.at(delay, Event::StageAnswer(self.next_ticket));
                }
                Action::Token(token) => {
                    let prompt = self
                        .scenario
                        .pipeline
                        .as_ref()
                        .map_or(0, |p| p.prompt_tokens);
                    let session = &mut self.sessions[i as usize];
                    let position = u64::from(prompt) - 1 + session.released;
                    if token != fake_token(u64::from(i) + 1, position) {
                        session.wrong += 1;
                    }
                    session.released += 1;
                }
                Action::Correction(from) => {
                    let session = &mut self.sessions[i as usize];
                    session.corrections += session.released - from as u64;
                    session.released = from as u64;
                    session.wrong = 0;
                }
                Action::Fault { peer, .. } => {
                    let class = "k0/llm/sim".to_string();
                    let out = self.scheduler.handle(
                        self.now,
                        Input::StageVerdict {
                            peer,
                            class,
                            fault: Some(hearth_core::Fault::Mismatch),
                        },
                    );
                    self.apply(out);
                }
                Action::Finished { error, .. } => {
                    let session = &mut self.sessions[i as usize];
                    session.ended = Some(self.now);
                    session.failed = error.is_some();
                }
            }
        }
    }

    fn stage_answer(&mut self, ticket: u64) {
        let Some((i, p, epoch, forward)) = self.calls.remove(&ticket) else {
            return;
        };
        let peer = &self.peers[p as usize];
        if peer.crashed || peer.epoch != epoch {
            let id = peer.id;
            self.stage_failed(i, id, "no answer");
            return;
        }
        let lie = match &self.scenario.population[peer.group].behaviour {
            Behaviour::Honest | Behaviour::BadSignature | Behaviour::Colluder { .. } => false,
            Behaviour::Liar { probability } => self.rng.unit() < *probability,
            Behaviour::Adaptive { after_valid } => peer.valid >= *after_valid,
        };
        // A verifier replays under the session's check id; the activations are the session's.
        let session = hearth_core::pipeline::session_of(forward.session);
        let end = u64::from(forward.layers.1);
        let first = u64::from(forward.pos);
        let rows = forward.input.rows() as u64;
        // Each liar lies its own way (independent liars do not agree with each other).
        let shift: u32 = if lie { p + 1 } else { 0 };
        let output = if forward.layers.1 < LAYERS {
            let floats: Vec<f32> = (first..first + rows)
                .flat_map(|q| {
                    let v = fake_value(session, end, q) + shift as f32;
                    [v, v / 2.0]
                })
                .collect();
            StageResult::Hidden(StageData::hidden(rows as u32, &floats))
        } else if forward.all_positions {
            StageResult::NextEach(
                (first..first + rows)
                    .map(|q| {
                        let t = fake_token(session, q) + shift;
                        (t, vec![(t, 1.0)])
                    })
                    .collect(),
            )
        } else {
            // A lying last stage claims the honest logits beside its wrong token, as the node's
            // fault injection does: its own logits must prove nothing.
            let honest = fake_token(session, first + rows - 1);
            StageResult::Next {
                token: honest + shift,
                top: vec![(honest, 1.0)],
            }
        };
        let receipt = Receipt::sign(
            &peer.key,
            ReceiptBody {
                subject: Subject::Step {
                    session,
                    step: forward.step,
                    layer_start: forward.layers.0,
                },
                model: forward.model,
                input: forward.digest(),
                output: output.digest(),
                numeric_class: "k0/llm/sim".into(),
            },
        );
        let candidates = self.stage_candidates();
        let Some(driver) = self.sessions[i as usize].driver.as_mut() else {
            return;
        };
        let actions = driver.on_result(output, receipt, &candidates);
        self.act(i, actions);
    }

    /// A stage's peer of session `i` failed: the driver moves on without it.
    fn stage_failed(&mut self, i: u32, peer: PeerId, reason: &str) {
        if self.sessions[i as usize].ended.is_some() {
            return;
        }
        self.candidates.clear();
        let candidates = self.stage_candidates();
        let Some(driver) = self.sessions[i as usize].driver.as_mut() else {
            return;
        };
        let awaited = driver.awaiting() == Some(peer);
        let actions = driver.on_failure(peer, reason, &candidates);
        if awaited {
            self.calls.retain(|_, (s, _, _, _)| *s != i);
        }
        self.act(i, actions);
    }

    fn is_liar(&self, p: &SimPeer) -> bool {
        self.scenario.population[p.group].behaviour != Behaviour::Honest
    }

    fn report(&self) -> Report {
        let accepted = self.accepted.len() as u64;
        let (second_execs, second_units) = match self.half_at {
            Some((e, a)) => (self.executions - e, accepted - a),
            None => (0, 0),
        };
        let liars: Vec<&SimPeer> = self.peers.iter().filter(|p| self.is_liar(p)).collect();
        let times: Vec<f64> = liars
            .iter()
            .filter_map(|p| p.quarantined_at)
            .map(|t| t as f64 / 1000.0)
            .collect();
        let honest: Vec<&SimPeer> = self.peers.iter().filter(|p| !self.is_liar(p)).collect();
        let credit: f64 = honest
            .iter()
            .map(|p| self.scheduler.standing(&p.id, self.now).credit)
            .sum();
        let total_credit: f64 = self
            .peers
            .iter()
            .map(|p| self.scheduler.standing(&p.id, self.now).credit)
            .sum();
        assert!(
            (total_credit - self.valid_items).abs() < 1e-6,
            "invariant: credit {total_credit} granted for {} verified inputs",
            self.valid_items
        );
        assert!(
            self.jobs_left > 0 || accepted + self.units_failed == self.units,
            "invariant: units lost ({accepted} accepted + {} failed of {})",
            self.units_failed,
            self.units
        );
        let makespan = self.now as f64 / 1000.0;
        Report {
            scenario: self.scenario.name.clone(),
            seed: 0,
            peers: self.peers.len() as u64,
            units: self.units,
            units_accepted: accepted,
            units_failed: self.units_failed,
            wrong_accepted: self.wrong,
            executions: self.executions,
            executions_per_accepted_unit: self.executions as f64 / accepted.max(1) as f64,
            executions_per_accepted_unit_second_half: second_execs as f64
                / second_units.max(1) as f64,
            makespan_s: makespan,
            throughput_units_per_s: accepted as f64 / makespan.max(1e-3),
            liars: liars.len() as u64,
            liars_quarantined: times.len() as u64,
            honest_quarantined: honest.iter().filter(|p| p.quarantined_at.is_some()).count() as u64,
            mean_time_to_quarantine_s: (!times.is_empty())
                .then(|| times.iter().sum::<f64>() / times.len() as f64),
            max_time_to_quarantine_s: times.iter().copied().reduce(f64::max),
            credit_per_honest_peer: credit / honest.len().max(1) as f64,
            finished: self.jobs_left == 0,
            events: self.events,
            pipeline_sessions: self.sessions.len() as u64,
            pipeline_sessions_done: self
                .sessions
                .iter()
                .filter(|s| s.ended.is_some() && !s.failed)
                .count() as u64,
            pipeline_tokens: self.sessions.iter().map(|s| s.released).sum(),
            pipeline_wrong_tokens: self.sessions.iter().map(|s| s.wrong).sum(),
            pipeline_tokens_per_s: {
                let rates: Vec<f64> = self
                    .sessions
                    .iter()
                    .filter_map(|s| {
                        let end = s.ended.filter(|_| !s.failed)?;
                        Some(s.released as f64 / ((end - s.started) as f64 / 1000.0).max(1e-3))
                    })
                    .collect();
                rates.iter().sum::<f64>() / rates.len().max(1) as f64
            },
            pipeline_reroutes: self
                .sessions
                .iter()
                .filter_map(|s| s.driver.as_ref())
                .map(|d| d.reroutes.len() as u64)
                .sum(),
            pipeline_corrections: self.sessions.iter().map(|s| s.corrections).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(text: &str) -> Scenario {
        Scenario::from_toml(text).expect("scenario")
    }

    const SMALL: &str = r#"
name = "small"
[workload]
units_per_job = 2000
replicas = 2
[[population]]
count = 40
[[population]]
count = 10
behaviour = { kind = "liar", probability = 1.0 }
[[population]]
count = 5
behaviour = { kind = "bad-signature" }
"#;

    #[test]
    fn independent_liars_never_get_a_wrong_result_accepted() {
        let report = run(&scenario(SMALL), 7).expect("runs");
        assert!(report.finished, "{report:?}");
        assert_eq!(report.units_accepted, 2000);
        assert_eq!(report.wrong_accepted, 0);
        assert_eq!(
            report.liars_quarantined, 15,
            "liars and bad signers: {report:?}"
        );
        assert_eq!(report.honest_quarantined, 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_report() {
        let a = serde_json::to_string(&run(&scenario(SMALL), 3).expect("runs")).expect("json");
        let b = serde_json::to_string(&run(&scenario(SMALL), 3).expect("runs")).expect("json");
        assert_eq!(a, b);
        let c = serde_json::to_string(&run(&scenario(SMALL), 4).expect("runs")).expect("json");
        assert_ne!(a, c);
    }

    #[test]
    fn colluders_packed_into_few_networks_cannot_form_a_quorum() {
        let report = run(
            &scenario(
                r#"
name = "packed colluders"
[workload]
units_per_job = 20000
replicas = 2
[[population]]
count = 180
[[population]]
count = 20
networks = 2
behaviour = { kind = "colluder", only_when_all = true }
"#,
            ),
            5,
        )
        .expect("runs");
        assert!(report.finished, "{report:?}");
        assert_eq!(report.wrong_accepted, 0, "{report:?}");
    }

    #[test]
    fn pipelines_with_lying_stages_release_no_wrong_token() {
        let report = run(
            &scenario(
                r#"
name = "pipeline liars"
[workload]
units_per_job = 1
replicas = 2
[pipeline]
sessions = 20
tokens = 24
[[population]]
count = 40
[[population]]
count = 3
ms_per_item = [1.0, 1.0]
behaviour = { kind = "liar", probability = 1.0 }
"#,
            ),
            2,
        )
        .expect("runs");
        assert_eq!(report.pipeline_sessions_done, 20, "{report:?}");
        assert_eq!(report.pipeline_tokens, 20 * 24);
        assert_eq!(report.pipeline_wrong_tokens, 0, "{report:?}");
        assert!(
            report.pipeline_reroutes > 0,
            "no liar was ever on a route: {report:?}"
        );
        // Liars checking liars must not frame the honest: no honest peer is struck out.
        assert_eq!(report.honest_quarantined, 0, "{report:?}");
    }

    #[test]
    fn churn_and_crashes_lose_no_unit() {
        let report = run(
            &scenario(
                r#"
name = "churn"
[workload]
units_per_job = 1000
replicas = 2
[[population]]
count = 30
mean_online_s = 20.0
mean_offline_s = 10.0
[[population]]
count = 10
mean_crash_s = 15.0
"#,
            ),
            1,
        )
        .expect("runs");
        assert!(report.finished, "{report:?}");
        assert_eq!(report.units_accepted + report.units_failed, 1000);
        assert_eq!(report.wrong_accepted, 0);
    }
}
