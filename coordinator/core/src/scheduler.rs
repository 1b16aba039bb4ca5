//! The scheduler: which peer runs which unit, when a unit is done, and what each peer has earned.
//!
//! A sans-IO state machine (`handle(now_ms, input) -> outputs`). It knows jobs as lists of units (an
//! input digest and an item count each), never their texts, and results as digests, never their
//! bytes: the shell keeps the bytes and the journal. It owns the [`Ledger`] and applies the
//! [`verifier`](crate::verifier)'s rules to every result.
//!
//! - **Pull.** A node asks for work ([`Input::Ready`]); the scheduler answers with
//!   [`Output::Assign`]s in the same call, or remembers the peer as waiting until `until_ms` and
//!   assigns as soon as something fits (a new job, a reopened unit, a quarantine that ended).
//! - **Replicas.** Each unit runs on `r` distinct peers: the job's `--replicas`, else the policy's,
//!   else adaptive (the ledger decides at the unit's first assignment: a trusted peer not drawn for
//!   a spot check runs it alone, anyone else with a second replica). Replicas prefer peers of
//!   distinct networks. Disagreement adds replicas, up to [`REPLICAS_EXTRA_MAX`] beyond `r`; then
//!   the unit fails.
//! - **Deadlines** come from the peer's score and the unit's size ([`deadline_ms`]); a missed one,
//!   a refusal or a lost peer reopens the unit, up to [`ASSIGNMENTS_MAX`] assignments per unit.
//! - **Determinism.** Given the same inputs in the same order, the same outputs: randomness comes
//!   from the policy's seed, and wherever a choice scans a table it orders explicitly (the peer
//!   tables are hash maps keyed by that seed). The shell journals the inputs and replays them
//!   after a crash to rebuild this state exactly.

mod few;
mod networks;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hearth_protocol::{Capabilities, Digest, KernelFamily, ModelId, PeerId};
use serde::{Deserialize, Serialize};

use crate::ledger::{Fault, Ledger, LedgerInput, LedgerOutput, Replication, Standing};
use crate::limits::{
    ASSIGNMENTS_MAX, DEADLINE_MIN_MS, DEADLINE_SLACK, ITEM_MS_AT_REFERENCE, PEERS_MAX_DEFAULT,
    REFERENCE_SCORE, REPLICAS_EXTRA_MAX, UNIT_ITEMS_DEFAULT_MAX, UNIT_TARGET_MS,
};
use crate::peer_hash::{PeerHash, PeerMap};
use crate::verifier::{Outcome, best_group, loser_fault, quorum};
use few::Few;
use networks::{NetId, Networks};

/// A unit as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    /// The input digest every receipt for it must carry.
    pub input: Digest,
    /// Inputs in the unit (the measure of its work and its credit).
    pub items: u32,
}

/// A job as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Its id, given by the shell.
    pub id: u64,
    /// Which kernels run it.
    pub family: KernelFamily,
    /// The model, by file digest.
    pub model: ModelId,
    /// Replicas per unit; `None` for the scheduler's policy.
    pub replicas: Option<u32>,
    /// The units, in order.
    pub units: Vec<UnitSpec>,
    /// The co-op member who submitted it (its API key's member), for the fair share.
    pub submitter: Option<PeerId>,
}

/// What a peer offers when it asks for work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// Its numeric class per kernel family (a family it lacks, it cannot run).
    pub classes: BTreeMap<KernelFamily, String>,
    /// Models it holds.
    pub models: Vec<ModelId>,
    /// Its benchmark score (higher is faster).
    pub score: f64,
    /// The network it is on (for spreading replicas), if known.
    pub network: Option<String>,
}

impl Offer {
    /// What a peer offers: what it advertised (`capabilities`, from the registry) and the network
    /// its connection comes from, as the shell knows it.
    pub fn of(capabilities: &Capabilities, network: Option<String>) -> Self {
        Self {
            classes: capabilities.numeric_class.clone(),
            models: capabilities.models.clone(),
            score: capabilities.score,
            network,
        }
    }
}

/// A result as delivered, after the shell's checks of the bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Who delivered it (the connection's authenticated identity).
    pub peer: PeerId,
    /// The job and unit it was delivered for.
    pub job: u64,
    /// See `job`.
    pub unit: u64,
    /// The receipt's signer.
    pub signer: PeerId,
    /// Whether the receipt's signature verified (checked by the shell, over the receipt's bytes).
    pub signature_ok: bool,
    /// The job and unit the receipt names.
    pub subject: (u64, u64),
    /// The receipt's input digest.
    pub input: Digest,
    /// The receipt's output digest.
    pub output: Digest,
    /// Whether the delivered bytes hash to `output` and fit the task (checked by the shell).
    pub output_ok: bool,
    /// The receipt's numeric class.
    pub class: Arc<str>,
    /// Earlier results of other classes this one agrees with (the shell's tolerance check).
    pub agrees_across: BTreeSet<PeerId>,
}

/// An event for the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// A new job.
    Submit(JobSpec),
    /// `peer` asks for up to `slots` units, and will wait for them until `until_ms`.
    Ready {
        /// The peer.
        peer: PeerId,
        /// Units it can take.
        slots: u32,
        /// When its request expires (the shell then answers it empty).
        until_ms: u64,
        /// What it can run. Shared: a shell that keeps a peer's offer while the peer's adverts
        /// do not change hands the same one over again, and the scheduler keeps it as it is.
        offer: Arc<Offer>,
    },
    /// A result arrived.
    Delivered(Delivery),
    /// `peer` cannot run its assignment of this unit.
    Refused {
        /// The peer.
        peer: PeerId,
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
    },
    /// `peer` left the swarm: its assignments reopen.
    PeerLost(PeerId),
    /// Stop a job.
    Cancel(u64),
    /// Time passed: deadlines.
    Tick,
    /// A pipeline stage's result was judged (by the session driver's checks).
    StageVerdict {
        /// The peer.
        peer: PeerId,
        /// Its numeric class.
        class: String,
        /// `None` for a result that checked out.
        fault: Option<Fault>,
    },
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// No unit given out yet.
    Queued,
    /// Units running.
    Running,
    /// Every unit accepted.
    Done,
    /// Every unit finished and at least one failed.
    Failed,
    /// Cancelled by its submitter.
    Cancelled,
}

impl JobState {
    /// Whether nothing more will happen to the job.
    pub fn finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// A unit's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitState {
    /// Waiting for a peer.
    Pending,
    /// Assigned to at least one peer, not decided.
    Running,
    /// A quorum agreed.
    Done,
    /// No quorum within the replica cap, or too many failed assignments.
    Failed,
}

/// What the shell must do or know.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send this unit to `peer` (answering its waiting request).
    Assign {
        /// The peer.
        peer: PeerId,
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// Milliseconds it has.
        deadline_ms: u64,
    },
    /// The unit is decided: `peer`'s output (digest `digest`) is the unit's result.
    Accepted {
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// Whose delivered output to keep.
        peer: PeerId,
        /// Its digest.
        digest: Digest,
    },
    /// The unit failed.
    UnitFailed {
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// Why.
        reason: String,
    },
    /// The job finished (done, failed or cancelled).
    JobFinished {
        /// The job.
        job: u64,
        /// How.
        state: JobState,
    },
    /// A delivery was refused; `fault` says whether it counts against the peer.
    Rejected {
        /// The peer.
        peer: PeerId,
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// Why, for logs and the node.
        reason: String,
    },
    /// A result was judged (for logs and the dashboard).
    Verdict {
        /// The peer.
        peer: PeerId,
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// `None` for a valid result.
        fault: Option<Fault>,
    },
    /// The ledger changed a peer's standing.
    Ledger(LedgerOutput),
}

/// A unit's progress, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnitStatus {
    /// Its index in the job.
    pub id: u64,
    /// Its state.
    pub state: UnitState,
    /// Results delivered for it (valid or not).
    pub executions: u32,
    /// Replicas it is meant to have now (grows on disagreement).
    pub replicas: u32,
    /// Peers running it now.
    pub running: Vec<PeerId>,
    /// Peers whose results were accepted.
    pub accepted: Vec<PeerId>,
}

/// A job's progress, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobStatus {
    /// The job.
    pub id: u64,
    /// Its state.
    pub state: JobState,
    /// Units in it.
    pub units_total: u64,
    /// Units accepted.
    pub units_done: u64,
    /// Units failed.
    pub units_failed: u64,
    /// Units assigned and not decided.
    pub units_running: u64,
    /// Results delivered, over all units.
    pub executions: u64,
    /// Results rejected (faults), over all units.
    pub rejected: u64,
}

#[derive(Clone, Debug)]
struct Assignment {
    deadline_at_ms: u64,
}

#[derive(Clone, Debug)]
struct Unit {
    spec: UnitSpec,
    /// Replicas wanted; 0 until the first assignment decides it.
    target: u32,
    /// The quorum, fixed at the first assignment.
    quorum: u32,
    /// Replicas wanted at the first assignment, so the cap is relative to it.
    initial_target: u32,
    running: Few<Assignment>,
    /// Results judged so far. Once the unit is accepted only the accepted group is kept (losers
    /// have been judged), so a finished unit costs its few agreeing results and no more.
    outcomes: Vec<Outcome>,
    /// Peers that ran (or were given) it, who must not get it again (emptied once decided).
    tried: Few<()>,
    /// Once accepted: how many results agree, the first that many of `outcomes` (all of them).
    accepted: Option<usize>,
    failed: bool,
    assignments: u32,
    executions: u32,
    rejected: u32,
}

impl Unit {
    fn decided(&self) -> bool {
        self.accepted.is_some() || self.failed
    }

    fn needed(&self) -> u32 {
        if self.decided() {
            return 0;
        }
        if self.target == 0 {
            return 1;
        }
        let have = self.outcomes.len() as u32 + self.running.len() as u32;
        self.target.saturating_sub(have)
    }

    fn state(&self) -> UnitState {
        if self.accepted.is_some() {
            UnitState::Done
        } else if self.failed {
            UnitState::Failed
        } else if self.running.is_empty() && self.outcomes.is_empty() {
            UnitState::Pending
        } else {
            UnitState::Running
        }
    }
}

#[derive(Clone, Debug)]
struct Job {
    spec: JobSpec,
    units: Vec<Unit>,
    /// Units that need another replica (kept so matching never scans finished units).
    open: BTreeSet<u64>,
    state: JobState,
    done: u64,
    failed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Waiting {
    slots: u32,
    until_ms: u64,
}

/// What a peer offered last, shared (not copied) by every match it is part of, with its network's
/// id.
#[derive(Clone, Debug)]
struct Offered {
    offer: Arc<Offer>,
    net: Option<NetId>,
}

/// Scheduler policy. There is no default: the seed must come from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Replicas per unit for jobs that do not say; `None` for adaptive replication.
    pub replicas: Option<u32>,
    /// Seed of the generator behind spot checks. Whoever knows it can tell which units will be
    /// checked, so the coordinator draws it from the OS and keeps it in its journal (a restart
    /// replays the same draws); a simulation passes its own.
    pub seed: u64,
    /// Peers whose offers and standing are remembered: size it for the swarm, or reputation is
    /// forgotten ([`Scheduler::ledger_evictions`]). See [`PEERS_MAX_DEFAULT`] for what it costs.
    pub peers_max: usize,
}

impl Policy {
    /// Adaptive replication with spot checks drawn from `seed`, for up to [`PEERS_MAX_DEFAULT`]
    /// peers.
    pub fn seeded(seed: u64) -> Self {
        Self {
            replicas: None,
            seed,
            peers_max: PEERS_MAX_DEFAULT,
        }
    }
}

/// The scheduler, verifier and ledger of sharded jobs, as one deterministic state machine.
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    rng: u64,
    jobs: BTreeMap<u64, Job>,
    waiting: BTreeMap<PeerId, Waiting>,
    /// What each peer offered last (its classes and network outlive its request).
    offers: PeerMap<Offered>,
    /// Whether units opened since waiting peers were last offered work.
    work_added: bool,
    /// Peers known and units running per network, and units running in all, for fair shares.
    networks: Networks,
    running_total: u64,
    /// Units running per submitter (`None`: keys without a member), for the fair share.
    running_by_submitter: BTreeMap<Option<PeerId>, u32>,
    /// Where each peer's assignments are, so losing a peer costs its units, not a scan.
    assigned: PeerMap<Units>,
    ledger: Ledger,
    /// The numeric classes results name, each stored once.
    classes: Classes,
}

/// The (job, unit)s assigned to one peer: a few, so a vector (kept when emptied, for the next).
#[derive(Debug, Default)]
struct Units(Vec<(u64, u64)>);

impl Units {
    /// Add one; false if it was there.
    fn insert(&mut self, unit: (u64, u64)) -> bool {
        if self.0.contains(&unit) {
            return false;
        }
        self.0.push(unit);
        true
    }

    /// Take one out; false if it was not there.
    fn remove(&mut self, unit: &(u64, u64)) -> bool {
        match self.0.iter().position(|u| u == unit) {
            Some(i) => {
                self.0.swap_remove(i);
                true
            }
            None => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.0.iter()
    }

    /// All of them, in (job, unit) order.
    fn sorted(mut self) -> Vec<(u64, u64)> {
        self.0.sort_unstable();
        self.0
    }
}

/// Interned class names: a result keeps a shared pointer, not a string of its own.
#[derive(Debug, Default)]
struct Classes(BTreeSet<Arc<str>>);

impl Classes {
    fn intern(&mut self, class: Arc<str>) -> Arc<str> {
        if let Some(known) = self.0.get(&class) {
            return known.clone();
        }
        // Bounded by what peers may name: past it, classes are no longer shared (still correct).
        if self.0.len() < CLASSES_INTERNED_MAX {
            self.0.insert(class.clone());
        }
        class
    }
}

/// Distinct numeric class names the scheduler shares between results.
const CLASSES_INTERNED_MAX: usize = 1024;

/// Milliseconds to allow a peer of `score` for `items` inputs.
pub fn deadline_ms(items: u32, score: f64) -> u64 {
    let speed = (score / REFERENCE_SCORE).clamp(0.01, 100.0);
    let expected = f64::from(items) * ITEM_MS_AT_REFERENCE / speed;
    DEADLINE_MIN_MS.max((expected * DEADLINE_SLACK) as u64)
}

/// Inputs per unit when the submitter does not say: about [`UNIT_TARGET_MS`] of work on a peer of
/// `score` (the median of the swarm's), within 1..=[`UNIT_ITEMS_DEFAULT_MAX`].
pub fn unit_size(score: f64) -> usize {
    let speed = (score / REFERENCE_SCORE).clamp(0.01, 100.0);
    let items = (UNIT_TARGET_MS as f64 * speed / ITEM_MS_AT_REFERENCE) as usize;
    items.clamp(1, UNIT_ITEMS_DEFAULT_MAX)
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            rng: policy.seed | 1,
            jobs: BTreeMap::new(),
            waiting: BTreeMap::new(),
            offers: PeerHash::new(policy.seed).map(),
            work_added: false,
            networks: Networks::default(),
            running_total: 0,
            running_by_submitter: BTreeMap::new(),
            assigned: PeerHash::new(policy.seed).map(),
            ledger: Ledger::new(policy.peers_max, policy.seed),
            classes: Classes::default(),
        }
    }

    /// Apply one event at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        let ready = match &input {
            Input::Ready { peer, .. } => Some(*peer),
            _ => None,
        };
        if matches!(input, Input::Tick | Input::Submit(_)) {
            self.work_added = true;
        }
        match input {
            Input::Submit(spec) => self.submit(spec, &mut out),
            Input::Ready {
                peer,
                slots,
                until_ms,
                offer,
            } => {
                if self.offers.len() >= self.policy.peers_max && !self.offers.contains_key(&peer) {
                    // Forget a peer with no work out (the least, for a choice that does not
                    // depend on the table's order), so the table stays bounded.
                    let idle = self
                        .offers
                        .keys()
                        .filter(|p| self.assigned.get(p).is_none_or(Units::is_empty))
                        .min()
                        .copied();
                    if let Some(idle) = idle {
                        self.forget_offer(&idle);
                    }
                }
                // A peer asking again mostly offers what it offered last: keep that as it is.
                let same = self
                    .offers
                    .get(&peer)
                    .is_some_and(|o| Arc::ptr_eq(&o.offer, &offer) || *o.offer == *offer);
                if !same {
                    self.forget_offer(&peer);
                    let net = offer.network.as_deref().map(|n| self.networks.join(n));
                    self.offers.insert(peer, Offered { offer, net });
                }
                self.waiting.insert(
                    peer,
                    Waiting {
                        slots: slots.max(1),
                        until_ms,
                    },
                );
            }
            Input::Delivered(delivery) => self.deliver(now_ms, delivery, &mut out),
            Input::Refused { peer, job, unit } => {
                if self.unassign(peer, job, unit) {
                    // It computed nothing, so it may take the unit again later (a paused
                    // `--idle-only` node hands units back); the assignment still counts towards
                    // the cap, so a peer that always refuses cannot hold a unit open for ever.
                    if let Some(u) = self.unit_mut(job, unit) {
                        u.tried.remove(&peer);
                    }
                    self.reopen(job, unit, &mut out);
                }
            }
            Input::PeerLost(peer) => {
                self.waiting.remove(&peer);
                for (job, unit) in self.assigned.remove(&peer).unwrap_or_default().sorted() {
                    self.untrack(&peer, job);
                    if let Some(u) = self.unit_mut(job, unit) {
                        u.running.remove(&peer);
                    }
                    self.reopen(job, unit, &mut out);
                }
            }
            Input::Cancel(job) => self.cancel(job, &mut out),
            Input::Tick => self.expire(now_ms, &mut out),
            Input::StageVerdict { peer, class, fault } => {
                let input = match fault {
                    Some(fault) => LedgerInput::Fault {
                        peer,
                        class: class.into(),
                        fault,
                    },
                    None => LedgerInput::Valid {
                        peer,
                        class: class.into(),
                        credit: 0.0,
                    },
                };
                out.extend(
                    self.ledger
                        .handle(now_ms, input)
                        .into_iter()
                        .map(Output::Ledger),
                );
            }
        }
        // A peer that asks is offered work at once; the others only when work was added since they
        // last looked (or time passed), and only until the work added is given out. With a hundred
        // thousand peers waiting, trying them all on every event would cost more than the work.
        // Quarantined peers are not kept waiting at all (they ask again after their hold).
        if let Some(peer) = ready {
            self.dispatch_peer(now_ms, peer, &mut out);
        }
        if self.work_added {
            self.work_added = false;
            self.dispatch(now_ms, &mut out);
        }
        out
    }

    /// Drop `peer`'s offer and its count in its network.
    fn forget_offer(&mut self, peer: &PeerId) {
        if let Some(net) = self.offers.remove(peer).and_then(|o| o.net) {
            self.networks.leave(net);
        }
    }

    /// One of `peer`'s assignments, of job `job`, ended.
    fn untrack(&mut self, peer: &PeerId, job: u64) {
        self.running_total = self.running_total.saturating_sub(1);
        let submitter = self.jobs.get(&job).and_then(|j| j.spec.submitter);
        if let Some(n) = self.running_by_submitter.get_mut(&submitter) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running_by_submitter.remove(&submitter);
            }
        }
        if let Some(net) = self.offers.get(peer).and_then(|o| o.net) {
            self.networks.stop(net);
        }
    }

    /// Forget every waiting peer: after a restart no request is held any more.
    pub fn forget_waiting(&mut self) {
        self.waiting.clear();
    }

    /// A job's progress.
    pub fn job(&self, id: u64) -> Option<JobStatus> {
        let job = self.jobs.get(&id)?;
        Some(JobStatus {
            id,
            state: job.state,
            units_total: job.units.len() as u64,
            units_done: job.done,
            units_failed: job.failed,
            units_running: job
                .units
                .iter()
                .filter(|u| u.state() == UnitState::Running)
                .count() as u64,
            executions: job.units.iter().map(|u| u64::from(u.executions)).sum(),
            rejected: job.units.iter().map(|u| u64::from(u.rejected)).sum(),
        })
    }

    /// Every job's progress, oldest first.
    pub fn jobs(&self) -> Vec<JobStatus> {
        self.jobs.keys().filter_map(|&id| self.job(id)).collect()
    }

    /// Each unit of a job.
    pub fn units(&self, id: u64) -> Option<Vec<UnitStatus>> {
        let job = self.jobs.get(&id)?;
        Some(
            job.units
                .iter()
                .enumerate()
                .map(|(i, u)| UnitStatus {
                    id: i as u64,
                    state: u.state(),
                    executions: u.executions,
                    replicas: u.target,
                    running: u.running.keys().copied().collect(),
                    accepted: u
                        .accepted
                        .map_or(&[][..], |n| &u.outcomes[..n])
                        .iter()
                        .map(|o| o.peer)
                        .collect(),
                })
                .collect(),
        )
    }

    /// Peers the ledger forgot to make room ([`Ledger::evictions`]).
    pub fn ledger_evictions(&self) -> u64 {
        self.ledger.evictions()
    }

    /// A peer's standing in the ledger.
    pub fn standing(&self, peer: &PeerId, now_ms: u64) -> Standing {
        self.ledger.standing(peer, now_ms)
    }

    fn unit_mut(&mut self, job: u64, unit: u64) -> Option<&mut Unit> {
        self.jobs
            .get_mut(&job)
            .and_then(|j| j.units.get_mut(usize::try_from(unit).ok()?))
    }

    fn draw(&mut self) -> f64 {
        // splitmix64: small, seedable, and the same everywhere.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn submit(&mut self, mut spec: JobSpec, out: &mut Vec<Output>) {
        if self.jobs.contains_key(&spec.id) {
            return;
        }
        // The units' specs move into the units: a job of millions is not held twice.
        let units: Vec<Unit> = std::mem::take(&mut spec.units)
            .into_iter()
            .map(|spec| Unit {
                spec,
                target: 0,
                quorum: 0,
                initial_target: 0,
                running: Few::default(),
                outcomes: Vec::new(),
                tried: Few::default(),
                accepted: None,
                failed: false,
                assignments: 0,
                executions: 0,
                rejected: 0,
            })
            .collect();
        let open = (0..units.len() as u64).collect();
        let id = spec.id;
        let empty = units.is_empty();
        self.jobs.insert(
            id,
            Job {
                spec,
                units,
                open,
                state: JobState::Queued,
                done: 0,
                failed: 0,
            },
        );
        if empty {
            self.finish_if_complete(id, out);
        }
    }

    fn cancel(&mut self, id: u64, out: &mut Vec<Output>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state.finished() {
            return;
        }
        job.state = JobState::Cancelled;
        job.open.clear();
        let mut released = Vec::new();
        for (i, unit) in job.units.iter_mut().enumerate() {
            for peer in unit.running.take_keys() {
                if let Some(set) = self.assigned.get_mut(&peer)
                    && set.remove(&(id, i as u64))
                {
                    released.push(peer);
                }
            }
        }
        for peer in released {
            self.untrack(&peer, id);
        }
        out.push(Output::JobFinished {
            job: id,
            state: JobState::Cancelled,
        });
    }

    fn unassign(&mut self, peer: PeerId, job: u64, unit: u64) -> bool {
        if let Some(set) = self.assigned.get_mut(&peer) {
            // An emptied list stays (with its room) for the peer's next unit.
            let removed = set.remove(&(job, unit));
            if removed {
                self.untrack(&peer, job);
            }
        }
        self.unit_mut(job, unit)
            .is_some_and(|u| u.running.remove(&peer).is_some())
    }

    /// After an assignment ended without a result: put the unit back in the open set, or fail it.
    fn reopen(&mut self, job_id: u64, unit_id: u64, out: &mut Vec<Output>) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.state.finished() {
            return;
        }
        let Some(unit) = job.units.get_mut(unit_id as usize) else {
            return;
        };
        if unit.decided() {
            return;
        }
        if unit.assignments >= ASSIGNMENTS_MAX && unit.running.is_empty() {
            self.fail(
                job_id,
                unit_id,
                format!("{ASSIGNMENTS_MAX} assignments without a quorum"),
                out,
            );
            return;
        }
        if unit.needed() > 0 {
            job.open.insert(unit_id);
            self.work_added = true;
        }
    }

    fn fail(&mut self, job_id: u64, unit_id: u64, reason: String, out: &mut Vec<Output>) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let unit = &mut job.units[unit_id as usize];
        unit.failed = true;
        // Its results were all judged; nothing more is asked of them.
        unit.outcomes = Vec::new();
        unit.tried = Few::default();
        job.failed += 1;
        job.open.remove(&unit_id);
        let running: Vec<PeerId> = unit.running.take_keys();
        for peer in running {
            if let Some(set) = self.assigned.get_mut(&peer)
                && set.remove(&(job_id, unit_id))
            {
                self.untrack(&peer, job_id);
            }
        }
        out.push(Output::UnitFailed {
            job: job_id,
            unit: unit_id,
            reason,
        });
        self.finish_if_complete(job_id, out);
    }

    fn finish_if_complete(&mut self, job_id: u64, out: &mut Vec<Output>) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.state.finished() || job.done + job.failed < job.units.len() as u64 {
            return;
        }
        job.state = if job.failed > 0 {
            JobState::Failed
        } else {
            JobState::Done
        };
        out.push(Output::JobFinished {
            job: job_id,
            state: job.state,
        });
    }

    fn expire(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let mut late = Vec::new();
        for (&peer, units) in &self.assigned {
            for &(job, unit) in units.iter() {
                let deadline = self.jobs.get(&job).and_then(|j| {
                    j.units
                        .get(unit as usize)
                        .and_then(|u| u.running.get(&peer))
                        .map(|a| a.deadline_at_ms)
                });
                if deadline.is_some_and(|d| d <= now_ms) {
                    late.push((peer, job, unit));
                }
            }
        }
        // In (peer, job, unit) order, whatever the table's.
        late.sort_unstable();
        for (peer, job, unit) in late {
            self.unassign(peer, job, unit);
            let class = self.class_of(job, &peer);
            out.extend(
                self.ledger
                    .handle(
                        now_ms,
                        LedgerInput::Fault {
                            peer,
                            class: class.into(),
                            fault: Fault::Timeout,
                        },
                    )
                    .into_iter()
                    .map(Output::Ledger),
            );
            out.push(Output::Verdict {
                peer,
                job,
                unit,
                fault: Some(Fault::Timeout),
            });
            self.reopen(job, unit, out);
        }
        self.waiting.retain(|_, w| w.until_ms > now_ms);
    }

    fn class_of(&self, job: u64, peer: &PeerId) -> String {
        let family = self.jobs.get(&job).map(|j| j.spec.family);
        self.offers
            .get(peer)
            .and_then(|o| family.and_then(|f| o.offer.classes.get(&f)).cloned())
            .unwrap_or_else(|| "unknown".into())
    }

    fn judge_fault(
        &mut self,
        now_ms: u64,
        (peer, job, unit): (PeerId, u64, u64),
        class: Arc<str>,
        fault: Fault,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Verdict {
            peer,
            job,
            unit,
            fault: Some(fault),
        });
        out.extend(
            self.ledger
                .handle(now_ms, LedgerInput::Fault { peer, class, fault })
                .into_iter()
                .map(Output::Ledger),
        );
    }

    fn deliver(&mut self, now_ms: u64, d: Delivery, out: &mut Vec<Output>) {
        let reject = |out: &mut Vec<Output>, reason: &str| {
            out.push(Output::Rejected {
                peer: d.peer,
                job: d.job,
                unit: d.unit,
                reason: reason.into(),
            });
        };
        let Some(unit) = self.unit_mut(d.job, d.unit) else {
            return reject(out, "no such unit");
        };
        if unit.outcomes.iter().any(|o| o.peer == d.peer) {
            // A redelivery from an outbox whose acknowledgement was lost: already counted.
            return;
        }
        let expected_input = unit.spec.input;
        let items = unit.spec.items;
        if !unit.running.contains(&d.peer) {
            return reject(
                out,
                "unit not assigned to this peer (late, cancelled or reassigned)",
            );
        }
        self.unassign(d.peer, d.job, d.unit);
        let class = self.classes.intern(d.class.clone());
        let unit = self.unit_mut(d.job, d.unit).expect("checked above");
        unit.executions += 1;

        let receipt_problem = if !d.signature_ok {
            Some("receipt signature does not verify")
        } else if d.signer != d.peer {
            Some("receipt signed by another peer")
        } else if d.subject != (d.job, d.unit) {
            Some("receipt is for another unit")
        } else if d.input != expected_input {
            Some("receipt's input digest is not this unit's")
        } else if !d.output_ok {
            Some("output does not match the receipt's digest or the task")
        } else {
            None
        };
        if let Some(problem) = receipt_problem {
            unit.rejected += 1;
            reject(out, problem);
            self.judge_fault(
                now_ms,
                (d.peer, d.job, d.unit),
                d.class.clone(),
                Fault::BadReceipt,
                out,
            );
            self.reopen(d.job, d.unit, out);
            return;
        }

        let outcome = Outcome {
            peer: d.peer,
            digest: d.output,
            class,
            agrees_across: d.agrees_across,
        };
        if unit.outcomes.capacity() == unit.outcomes.len() {
            // Room for the replicas still to come, not the four a push would make.
            let more = (unit.target as usize).saturating_sub(unit.outcomes.len());
            unit.outcomes.reserve_exact(more.max(1));
        }
        unit.outcomes.push(outcome);
        let index = unit.outcomes.len() - 1;

        if let Some(group) = unit.accepted {
            // A late replica of a decided unit: judged against the accepted group, kept beside
            // it if it agrees, dropped once judged if not.
            let members: Vec<&Outcome> = unit.outcomes[..group].iter().collect();
            let new = &unit.outcomes[index];
            if crate::verifier::agree(members[0], new) {
                unit.accepted = Some(group + 1);
                self.valid(now_ms, d.peer, d.job, d.unit, items, out);
            } else {
                let fault = loser_fault(new, &members);
                let new = unit.outcomes.pop().expect("pushed above");
                unit.rejected += 1;
                self.judge_fault(now_ms, (d.peer, d.job, d.unit), new.class, fault, out);
            }
            return;
        }
        self.decide(now_ms, d.job, d.unit, out);
    }

    fn decide(&mut self, now_ms: u64, job_id: u64, unit_id: u64, out: &mut Vec<Output>) {
        let unit = self.unit_mut(job_id, unit_id).expect("caller checked");
        let group = best_group(&unit.outcomes);
        if group.len() as u32 >= unit.quorum.max(1) {
            let members: Vec<&Outcome> = group.iter().map(|&k| &unit.outcomes[k]).collect();
            let rep = members[0].clone();
            let losers: Vec<(PeerId, Arc<str>, Fault)> = unit
                .outcomes
                .iter()
                .enumerate()
                .filter(|(k, _)| !group.contains(k))
                .map(|(_, o)| (o.peer, o.class.clone(), loser_fault(o, &members)))
                .collect();
            let winners: Vec<PeerId> = members.iter().map(|o| o.peer).collect();
            unit.rejected += losers.len() as u32;
            // Keep only what a late replica is judged against and the API lists: the group, in
            // its order, in a vector of just its size.
            if group.iter().enumerate().all(|(i, &k)| i == k) {
                unit.outcomes.truncate(group.len());
                unit.outcomes.shrink_to_fit();
            } else {
                let mut all: Vec<Option<Outcome>> = std::mem::take(&mut unit.outcomes)
                    .into_iter()
                    .map(Some)
                    .collect();
                let mut kept = Vec::with_capacity(group.len());
                kept.extend(group.iter().filter_map(|&k| all[k].take()));
                unit.outcomes = kept;
            }
            unit.accepted = Some(group.len());
            unit.tried = Few::default();
            let items = unit.spec.items;
            let job = self.jobs.get_mut(&job_id).expect("caller checked");
            job.done += 1;
            job.open.remove(&unit_id);
            out.push(Output::Accepted {
                job: job_id,
                unit: unit_id,
                peer: rep.peer,
                digest: rep.digest,
            });
            for peer in winners {
                self.valid(now_ms, peer, job_id, unit_id, items, out);
            }
            for (peer, class, fault) in losers {
                self.judge_fault(now_ms, (peer, job_id, unit_id), class, fault, out);
            }
            self.finish_if_complete(job_id, out);
            return;
        }
        // No quorum yet. If every replica is in, disagreement: add one, up to the cap.
        if unit.running.is_empty() && unit.outcomes.len() as u32 >= unit.target {
            if unit.target >= unit.initial_target + REPLICAS_EXTRA_MAX {
                let reason = format!(
                    "{} results, no {} of them agree",
                    unit.outcomes.len(),
                    unit.quorum
                );
                self.fail(job_id, unit_id, reason, out);
                return;
            }
            unit.target += 1;
            if unit.quorum < 2 {
                // A lone trusted result that a spot check contradicted needs a real quorum now.
                unit.quorum = 2;
                unit.target = unit.target.max(3);
            }
        }
        self.reopen(job_id, unit_id, out);
    }

    fn valid(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        job: u64,
        unit: u64,
        items: u32,
        out: &mut Vec<Output>,
    ) {
        let class = self
            .jobs
            .get(&job)
            .and_then(|j| j.units.get(unit as usize))
            .and_then(|u| u.outcomes.iter().find(|o| o.peer == peer))
            .map_or_else(|| Arc::from(""), |o| o.class.clone());
        out.push(Output::Verdict {
            peer,
            job,
            unit,
            fault: None,
        });
        out.extend(
            self.ledger
                .handle(
                    now_ms,
                    LedgerInput::Valid {
                        peer,
                        class,
                        credit: f64::from(items),
                    },
                )
                .into_iter()
                .map(Output::Ledger),
        );
    }

    /// Give waiting peers what fits them.
    fn dispatch(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.waiting.is_empty() || self.jobs.values().all(|j| j.open.is_empty()) {
            return;
        }
        let peers: Vec<PeerId> = self.waiting.keys().copied().collect();
        for peer in peers {
            // Once the work added is given out, the rest have nothing to look at.
            if self.jobs.values().all(|j| j.open.is_empty()) {
                break;
            }
            self.dispatch_peer(now_ms, peer, out);
        }
    }

    /// Give one waiting peer what fits it.
    fn dispatch_peer(&mut self, now_ms: u64, peer: PeerId, out: &mut Vec<Output>) {
        let Some(waiting) = self.waiting.get(&peer).copied() else {
            return;
        };
        if waiting.until_ms <= now_ms {
            return;
        }
        if self.ledger.quarantined(&peer, now_ms) {
            // Nothing for it until its quarantine ends, and it asks again after its hold: kept
            // waiting, the quarantined would be tried (and refused) for every unit reopened.
            self.waiting.remove(&peer);
            return;
        }
        let Some(offered) = self.offers.get(&peer).cloned() else {
            return;
        };
        let mut given = 0;
        while given < waiting.slots {
            let Some((job, unit)) = self.pick(now_ms, &peer, &offered) else {
                break;
            };
            self.assign(now_ms, peer, &offered, job, unit, out);
            given += 1;
        }
        if given > 0 {
            // Its request is answered; it asks again when it has room.
            self.waiting.remove(&peer);
        }
    }

    /// A submitter's weight in the fair share: `1 + log2(1 + credit)` for a member (the verified work
    /// its own nodes contributed), 1 for keys without a member.
    fn weight(&self, submitter: Option<PeerId>, now_ms: u64) -> f64 {
        submitter.map_or(1.0, |p| {
            1.0 + (1.0 + self.ledger.standing(&p, now_ms).credit.max(0.0)).log2()
        })
    }

    /// The order jobs are served in: the submitter with the fewest units running per unit of weight
    /// first (credit-weighted fair share), then the oldest job. With one submitter, oldest first.
    fn fair_order(&self, now_ms: u64) -> Vec<u64> {
        let mut order: Vec<(f64, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.state.finished() && !j.open.is_empty())
            .map(|(&id, j)| {
                let s = j.spec.submitter;
                let running = f64::from(self.running_by_submitter.get(&s).copied().unwrap_or(0));
                (running / self.weight(s, now_ms), id)
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        order.into_iter().map(|(_, id)| id).collect()
    }

    /// The first open unit `peer` may run: jobs in [`Self::fair_order`], a unit it has not run, of a
    /// model it holds; first looking for units none of whose peers share its network.
    fn pick(&mut self, now_ms: u64, peer: &PeerId, offered: &Offered) -> Option<(u64, u64)> {
        let offer = &offered.offer;
        // No network runs more than its fair share of units: a network crowded with identities
        // (cheap Sybils behind one address) gets no more replica slots than any other.
        if let Some(net) = offered.net {
            let networks = self.networks.live().max(1) as u64;
            let cap = ((self.running_total + 1) / networks).max(1);
            if u64::from(self.networks.running(net)) >= cap {
                return None;
            }
        }
        let mut fallback = None;
        let mut last_resort = None;
        // One job (the common case) needs no ordering, nor the allocation of one.
        let (single, many);
        let order: &[u64] = if self.jobs.len() == 1 {
            single = [*self.jobs.keys().next().expect("one job")];
            &single
        } else {
            many = self.fair_order(now_ms);
            &many
        };
        for &job_id in order {
            let job = &self.jobs[&job_id];
            let Some(class) = offer.classes.get(&job.spec.family) else {
                continue;
            };
            if !offer.models.contains(&job.spec.model) {
                continue;
            }
            if self.ledger.replication(peer, class, now_ms, 1.0) == Replication::Refuse {
                return None;
            }
            let crowded = |net: Option<NetId>| net.is_some_and(|n| self.networks.peers(n) > 1);
            let mine_crowded = crowded(offered.net);
            for &unit_id in &job.open {
                let unit = &job.units[unit_id as usize];
                if unit.tried.contains(peer) || unit.needed() == 0 {
                    continue;
                }
                let others = || {
                    unit.running
                        .keys()
                        .chain(unit.outcomes.iter().map(|o| &o.peer))
                        .map(|p| self.offers.get(p).and_then(|o| o.net))
                };
                let shares_network =
                    offered.net.is_some() && others().any(|net| net == offered.net);
                // A unit already holding a replica from a crowded network (several identities
                // behind one address) gets its others from uncrowded ones where it can, so a
                // handful of Sybil-packed networks cannot make up a quorum among themselves.
                let crowded_pair = mine_crowded && others().any(crowded);
                if !shares_network && !crowded_pair {
                    return Some((job_id, unit_id));
                }
                if !shares_network {
                    fallback.get_or_insert((job_id, unit_id));
                } else {
                    last_resort.get_or_insert((job_id, unit_id));
                }
            }
        }
        fallback.or(last_resort)
    }

    fn assign(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        offered: &Offered,
        job_id: u64,
        unit_id: u64,
        out: &mut Vec<Output>,
    ) {
        let offer = &offered.offer;
        let family = self.jobs[&job_id].spec.family;
        let class = offer.classes.get(&family).cloned().unwrap_or_default();
        let job_replicas = self.jobs[&job_id].spec.replicas.or(self.policy.replicas);
        let first = self.jobs[&job_id].units[unit_id as usize].target == 0;
        let draw = if first && job_replicas.is_none() {
            self.draw()
        } else {
            0.0
        };
        let adaptive = if first && job_replicas.is_none() {
            match self.ledger.replication(&peer, &class, now_ms, draw) {
                Replication::Single => 1,
                Replication::Replicate | Replication::Refuse => 2,
            }
        } else {
            0
        };
        let job = self.jobs.get_mut(&job_id).expect("picked");
        if job.state == JobState::Queued {
            job.state = JobState::Running;
        }
        let unit = &mut job.units[unit_id as usize];
        if first {
            let target = job_replicas.map_or(adaptive, |r| r.max(1));
            unit.target = target;
            unit.initial_target = target;
            unit.quorum = quorum(target);
        }
        let deadline = deadline_ms(unit.spec.items, offer.score);
        unit.running.insert(
            peer,
            Assignment {
                deadline_at_ms: now_ms + deadline,
            },
        );
        unit.tried.insert(peer, ());
        unit.assignments += 1;
        if unit.needed() == 0 {
            job.open.remove(&unit_id);
        }
        if self
            .assigned
            .entry(peer)
            .or_default()
            .insert((job_id, unit_id))
        {
            self.running_total += 1;
            if let Some(net) = offered.net {
                self.networks.start(net);
            }
            let submitter = self.jobs.get(&job_id).and_then(|j| j.spec.submitter);
            *self.running_by_submitter.entry(submitter).or_default() += 1;
        }
        out.push(Output::Assign {
            peer,
            job: job_id,
            unit: unit_id,
            deadline_ms: deadline,
        });
    }
}
