//! `hearth-sim`: a deterministic discrete-event simulation of a Hearth swarm that drives Hearth's
//! real sans-IO cores ([`hearth_core`]) against up to 100,000 simulated peers, on a virtual clock.
//!
//! The simulator does what the coordinator's shell does, through the same code: peers advertise
//! every heartbeat into the real [`Registry`], which says when one goes silent (then the scheduler
//! hears [`Input::PeerLost`] and sessions route around it); they ask for work with the offer made
//! from what the registry holds ([`Offer::of`]); deliver results ([`Input::Delivered`], with the
//! marks the shell would set; a bad signature is a mark, not cryptography); pipeline sessions pick
//! their stages with the shell's [`candidates`], call a stage failed on the shell's
//! [`StepTimeouts`], and turn a caught stage into the shell's ledger input ([`stage_fault`]). Peers
//! are honest, liars with a probability, adaptive liars that turn once trusted, or colluders
//! returning one shared wrong answer; groups can churn, crash, and be spread over or packed into
//! networks. The simulated model ([`model`]) computes each layer from its input, so a lie anywhere
//! in a route reaches the tokens. The same scenario and seed give the same report.

mod model;
mod peers;
mod pipeline;
pub mod plot;
mod queue;
mod report;
mod scenario;
mod truth;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hearth_core::limits::{PEERS_MAX_DEFAULT, WORK_FETCH_HOLD_MS};
use hearth_core::pipeline::{Candidate, Driver, StepTimeouts};
use hearth_core::registry::{Input as RegistryInput, Output as RegistryOutput};
use hearth_core::scheduler::{Input, Output};
use hearth_core::{
    Delivery, JobSpec, LedgerOutput, Offer, PeerHash, PeerMap, Policy, Registry, Scheduler,
    UnitSpec,
};
use hearth_protocol::SecretKey;
use hearth_protocol::work::Forward;
use hearth_protocol::{Advert, Backend, Capabilities, Digest, KernelFamily, ModelId, PeerId};
use peers::*;
use queue::Queue;
pub use report::{Report, StagesCaught};
pub use scenario::{Behaviour, Group, Network, Pipeline, Scenario, ScenarioError, Workload};
use truth::*;

/// Virtual milliseconds between ticks of the registry and the scheduler.
const TICK_MS: u64 = 1000;
/// How often a node advertises (the node's default heartbeat).
const HEARTBEAT_MS: u32 = 2000;
/// How long a node waits before sending a lost delivery again (its outbox).
const REDELIVER_MS: u64 = 2_000;
/// How long a node waits to ask again when the coordinator has not heard its advert yet.
const UNKNOWN_RETRY_MS: u64 = 500;

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
    /// The peer's heartbeat advert arrives (if it is still up in `epoch`).
    Advert(u32, u32),
    /// A pipeline session starts.
    StartSession(u32),
    /// A stage's answer arrives.
    StageAnswer(u64),
}

/// Per unit in flight: who was given it, and what each delivered.
#[derive(Default)]
struct Flight {
    assigned: Vec<u32>,
    delivered: Vec<(u32, Digest, Arc<str>)>,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    rng: Rng,
    now: u64,
    queue: Queue<Event>,
    scheduler: Scheduler,
    registry: Registry,
    peers: Vec<SimPeer>,
    by_id: PeerMap<u32>,
    flights: HashMap<(u64, u64), Flight, PeerHash>,
    accepted: AcceptedUnits,
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
    /// Steps in flight per session, as the coordinator's shell keeps them.
    timeouts: StepTimeouts,
    /// Stages caught lying, by where they sat in the route.
    caught: StagesCaught,
}

struct SimSession {
    driver: Option<Driver>,
    started: u64,
    ended: Option<u64>,
    released: u64,
    /// The tokens an honest route gives, as far as released.
    expected: Vec<u32>,
    wrong: u64,
    corrections: u64,
    failed: bool,
}

impl SimSession {
    /// A session not started yet (its driver comes with its route), from `started`.
    fn new(started: u64) -> Self {
        Self {
            driver: None,
            started,
            ended: None,
            released: 0,
            expected: Vec::new(),
            wrong: 0,
            corrections: 0,
            failed: false,
        }
    }
}

/// Run `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    let mut sim = Sim::new(scenario, seed);
    sim.start();
    sim.run();
    let report = sim.report();
    // Freeing ten million units takes seconds: let another thread do it while the report goes out.
    let scheduler = std::mem::replace(&mut sim.scheduler, Scheduler::new(Policy::seeded(0)));
    std::thread::spawn(move || drop(scheduler));
    report
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario, seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut peers = Vec::new();
        let mut by_id = PeerHash::new(seed).map();
        let mut n: u64 = 0;
        for (g, group) in scenario.population.iter().enumerate() {
            for i in 0..group.count {
                n += 1;
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&n.to_le_bytes());
                bytes[8..16].copy_from_slice(&seed.to_le_bytes());
                let key = SecretKey::from_bytes(&bytes);
                let id = key.public().peer_id();
                let network = match group.networks {
                    Some(k) => format!("g{g}-net{}", i % k.max(1)),
                    None => format!("net{n}"),
                };
                let [lo, hi] = group.ms_per_item;
                let ms_per_item = lo + (hi - lo) * rng.unit();
                let class = format!("k0/embed/{}", group.backend);
                by_id.insert(id, peers.len() as u32);
                peers.push(SimPeer {
                    id,
                    key: Box::new(key),
                    group: g,
                    capabilities: Box::new(capabilities(&class, ms_per_item)),
                    network,
                    class: class.into(),
                    offer: None,
                    adverts: 0,
                    ms_per_item,
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
            queue: Queue::new(),
            scheduler: Scheduler::new(Policy {
                peers_max: peers.len().max(PEERS_MAX_DEFAULT),
                ..Policy::seeded(seed)
            }),
            registry: Registry::new(peers.len().max(PEERS_MAX_DEFAULT), seed),
            peers,
            by_id,
            flights: HashMap::with_hasher(PeerHash::new(seed)),
            accepted: AcceptedUnits::default(),
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
            timeouts: StepTimeouts::default(),
            caught: StagesCaught::default(),
        }
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.queue.push(self.now + delay, event);
    }

    fn latency(&mut self) -> u64 {
        let net = &self.scenario.network;
        net.latency_ms + (self.rng.unit() * net.jitter_ms as f64) as u64
    }

    fn start(&mut self) {
        let w = &self.scenario.workload;
        let model = embed_model();
        for job in 1..=u64::from(w.jobs) {
            let units = (0..w.units_per_job)
                .map(|u| UnitSpec {
                    input: named(INPUT, job, u, 0),
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
            // Its first advert, then its first request once the advert is in.
            let delay = (self.rng.unit() * 1000.0) as u64;
            self.at(delay, Event::Advert(p, 0));
            let latency = self.latency();
            self.at(delay + latency, Event::Ready(p, 0));
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
            self.sessions = (0..p.sessions).map(|_| SimSession::new(0)).collect();
            for i in 0..p.sessions {
                // After the peers have said hello, staggered over a second.
                let delay = 2000 + (self.rng.unit() * 1000.0) as u64;
                self.at(delay, Event::StartSession(i));
            }
        }
    }

    fn run(&mut self) {
        let limit = self.scenario.time_limit_s * 1000;
        while let Some((t, event)) = self.queue.pop() {
            let sessions_left = self.sessions.iter().any(|s| s.ended.is_none());
            if (self.jobs_left == 0 && !sessions_left) || t > limit {
                break;
            }
            self.now = t;
            self.events += 1;
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick => {
                let out = self.scheduler.handle(self.now, Input::Tick);
                self.apply(out);
                self.candidates.clear();
                // As the coordinator's shell: a peer the registry calls offline is lost to the
                // scheduler and to every session routed through it.
                for output in self.registry.handle(self.now, RegistryInput::Tick) {
                    if let RegistryOutput::Offline { peer, .. } = output {
                        let out = self.scheduler.handle(self.now, Input::PeerLost(peer));
                        self.apply(out);
                        for i in 0..self.sessions.len() as u32 {
                            self.stage_failed(i, peer, "left the swarm");
                        }
                    }
                }
                for (session, budget) in self.timeouts.late(self.now) {
                    let i = session as u32;
                    let awaited = self.sessions[i as usize]
                        .driver
                        .as_ref()
                        .and_then(Driver::awaiting);
                    if let Some(peer) = awaited {
                        let reason = format!("no answer within {budget} ms");
                        self.stage_failed(i, peer, &reason);
                    }
                }
                self.at(TICK_MS, Event::Tick);
            }
            Event::Advert(p, epoch) => {
                let peer = &mut self.peers[p as usize];
                if !peer.online || peer.crashed || peer.epoch != epoch {
                    return;
                }
                peer.adverts += 1;
                let advert = Advert {
                    seq: peer.adverts,
                    heartbeat_interval_ms: HEARTBEAT_MS,
                    capabilities: (*peer.capabilities).clone(),
                    stage_sessions: 0,
                    bytes_received: 0,
                    held: Vec::new(),
                    links: Vec::new(),
                    reachability: Default::default(),
                    serves: Vec::new(),
                    fetching: Vec::new(),
                };
                let input = RegistryInput::Advert {
                    from: peer.id,
                    advert: Box::new(advert),
                };
                self.registry.handle(self.now, input);
                self.at(u64::from(HEARTBEAT_MS), Event::Advert(p, epoch));
            }
            Event::StartSession(i) => self.start_session(i),
            Event::StageAnswer(ticket) => self.stage_answer(ticket),
            Event::Ready(p, epoch) => {
                let peer = &self.peers[p as usize];
                if !peer.online || peer.crashed || peer.busy || peer.epoch != epoch {
                    return;
                }
                // As the coordinator's shell: the offer is what the registry holds of the peer.
                let Some(capabilities) = self.registry.capabilities(&peer.id) else {
                    self.at(UNKNOWN_RETRY_MS, Event::Ready(p, epoch));
                    return;
                };
                let offer = match &peer.offer {
                    Some(offer) => offer.clone(),
                    None => Arc::new(Offer::of(capabilities, Some(peer.network.clone()))),
                };
                self.peers[p as usize].offer = Some(offer.clone());
                let peer = &self.peers[p as usize];
                let input = Input::Ready {
                    peer: peer.id,
                    slots: 1,
                    until_ms: self.now + WORK_FETCH_HOLD_MS,
                    offer,
                };
                let out = self.scheduler.handle(self.now, input);
                self.apply(out);
                if !self.peers[p as usize].busy {
                    // Answered empty after the hold; asks again.
                    self.at(WORK_FETCH_HOLD_MS, Event::Ready(p, epoch));
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
                    return;
                }
                if self.rng.unit() < self.scenario.network.loss {
                    self.at(REDELIVER_MS, event);
                    return;
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
                    input: named(INPUT, job, unit, 0),
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
                    return;
                }
                peer.online = false;
                peer.busy = false;
                // Its adverts stop: the registry notices, as a coordinator would.
                peer.epoch += 1;
                let group = &self.scenario.population[peer.group];
                let back = (self.rng.exp(group.mean_offline_s) * 1000.0) as u64;
                self.at(back.max(1), Event::Join(p));
            }
            Event::Join(p) => {
                let peer = &mut self.peers[p as usize];
                if peer.crashed {
                    return;
                }
                peer.online = true;
                peer.epoch += 1;
                let epoch = peer.epoch;
                let group = &self.scenario.population[peer.group];
                if let Some(mean) = group.mean_online_s {
                    let t = (self.rng.exp(mean) * 1000.0) as u64;
                    self.at(t, Event::Leave(p));
                }
                self.at(0, Event::Advert(p, epoch));
                let latency = self.latency();
                self.at(latency, Event::Ready(p, epoch));
            }
            Event::Crash(p) => {
                let peer = &mut self.peers[p as usize];
                if peer.crashed {
                    return;
                }
                peer.crashed = true;
                peer.online = false;
                peer.epoch += 1;
            }
        }
    }

    /// What peer `p` answers for the unit: the truth, or a lie of its kind.
    fn answer(&mut self, p: u32, job: u64, unit: u64) -> (Digest, Arc<str>) {
        let peer = &self.peers[p as usize];
        let class = peer.class.clone();
        let group = peer.group;
        let behaviour = &self.scenario.population[group].behaviour;
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
            named(COLLUSION, job, unit, group as u64)
        } else {
            named(LIE, job, unit, u64::from(p))
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
                        self.accepted.insert(job, unit),
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
                    if self.half_at.is_none() && self.accepted.len() * 2 >= self.units {
                        self.half_at = Some((self.executions, self.accepted.len()));
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

    fn is_liar(&self, p: &SimPeer) -> bool {
        self.scenario.population[p.group].behaviour != Behaviour::Honest
    }

    fn report(&self) -> Report {
        let accepted = self.accepted.len();
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
            pipeline_caught: self.caught,
            ledger_evictions: self.scheduler.ledger_evictions(),
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
        let report = run(&scenario(SMALL), 7);
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
        let a = serde_json::to_string(&run(&scenario(SMALL), 3)).expect("json");
        let b = serde_json::to_string(&run(&scenario(SMALL), 3)).expect("json");
        assert_eq!(a, b);
        let c = serde_json::to_string(&run(&scenario(SMALL), 4)).expect("json");
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
        );
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
        );
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

    /// A route whose middle stage lies: the fastest peer takes the first layers, the liar (second
    /// fastest) the middle ones, an honest peer the last. The liar nudges activations by far less
    /// than the cross-class margin.
    fn middle_liar(verify: &str) -> Report {
        let text = format!(
            r#"
name = "middle liar"
[workload]
units_per_job = 1
replicas = 2
[pipeline]
sessions = 10
tokens = 24
stages = 3
verify = "{verify}"
[[population]]
count = 1
ms_per_item = [1.0, 1.0]
[[population]]
count = 1
ms_per_item = [1.5, 1.5]
behaviour = {{ kind = "liar", probability = 1.0 }}
[[population]]
count = 20
"#
        );
        run(&scenario(&text), 9)
    }

    #[test]
    fn a_lying_middle_stage_reaches_the_tokens_and_is_caught() {
        // Unchecked, its nudged activations reach the tokens.
        let off = middle_liar("off");
        assert_eq!(off.pipeline_sessions_done, 10, "{off:?}");
        assert!(
            off.pipeline_wrong_tokens > 0,
            "wrong activations never reached a token: {off:?}"
        );
        assert_eq!(off.pipeline_caught, StagesCaught::default());
        // Checked, it is caught in the middle of the route and no wrong token is released.
        let checked = middle_liar("window");
        assert_eq!(checked.pipeline_sessions_done, 10, "{checked:?}");
        assert_eq!(checked.pipeline_tokens, 10 * 24);
        assert_eq!(checked.pipeline_wrong_tokens, 0, "{checked:?}");
        assert!(checked.pipeline_caught.middle > 0, "{checked:?}");
        assert_eq!(
            (checked.pipeline_caught.first, checked.pipeline_caught.last),
            (0, 0),
            "only the liar is caught: {checked:?}"
        );
        assert_eq!(checked.liars_quarantined, 1, "{checked:?}");
        assert_eq!(checked.honest_quarantined, 0, "{checked:?}");
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
        );
        assert!(report.finished, "{report:?}");
        assert_eq!(report.units_accepted + report.units_failed, 1000);
        assert_eq!(report.wrong_accepted, 0);
    }
}
