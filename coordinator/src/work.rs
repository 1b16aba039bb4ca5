//! The shell around the [`Scheduler`]: it checks the bytes (signatures, digests), journals every
//! input before acting on it, holds nodes' requests for work, and keeps the texts and outputs the
//! scheduler never sees.
//!
//! The scheduler's state moves on at once; what anyone outside sees of it (an assignment, an
//! acknowledged delivery, a job id, a status) is an [`Effect`] held until the journal's committer
//! has made the facts behind it durable, and released in order. A crash before then loses only
//! what nobody was told.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use hearth_net::Network;
use hearth_net::WorkChannel;
use hearth_protocol::work::{
    Assignment, UnitOutput, WorkRequest, WorkResponse, digest_canonical, input_digest,
};
use hearth_protocol::{KernelFamily, PeerId, Subject, UNIT_INPUT_BYTES_MAX, UNIT_ITEMS_MAX};
use serde_json::{Value, json};

use crate::journal::{Batch, JobKind, JobPayload, Journal, Record, StoredOutput, Ticket};
use crate::limits::{JOB_INPUTS_MAX, REPLICAS_MAX, SLOTS_PER_REQUEST_MAX, WORK_FETCH_HOLD_MS};
use crate::scheduler::{
    Delivery, Input, JobSpec, JobState, JobStatus, Offer, Output, Policy, Scheduler, UnitSpec,
    unit_size,
};
use crate::verifier::within_tolerance;

mod api;

use crate::{LedgerOutput, Registry, Result, Standing};
pub use api::{JobInput, JobView, Refused, SubmitJob, Unavailable, UnitView, output_lines};

/// What may happen only once the facts behind it are durable.
pub(crate) enum Effect {
    /// An answer to a node's request.
    Respond(WorkChannel, Box<WorkResponse>),
    /// A reply to the API (its value computed when the request came, sent after the commit).
    Reply(Box<dyn FnOnce() + Send>),
}

/// Facts handed to the committer and not yet known to be durable, for reads that must see them.
#[derive(Default)]
struct Uncommitted {
    accepted: Vec<(u64, u64)>,
    output: Option<(u64, u64, PeerId, StoredOutput)>,
}

pub(crate) struct Work {
    scheduler: Scheduler,
    journal: Journal,
    /// Held until their ticket is committed, in ticket order.
    effects: VecDeque<(Ticket, Effect)>,
    /// Facts in flight to the journal, by ticket.
    uncommitted: VecDeque<(Ticket, Uncommitted)>,
    payloads: BTreeMap<u64, JobPayload>,
    accepted: BTreeMap<(u64, u64), PeerId>,
    parked: BTreeMap<PeerId, (WorkChannel, u64)>,
    networks: BTreeMap<PeerId, String>,
    next_job: u64,
}

impl Work {
    /// Open the journal in `data_dir` and rebuild the scheduler from it.
    pub(crate) fn open(data_dir: &Path, replicas: Option<u32>, peers_max: usize) -> Result<Self> {
        Self::with_journal(Journal::open(data_dir)?, replicas, peers_max)
    }

    /// Rebuild the scheduler from `journal` (a coordinator group's leader's, replicated).
    pub(crate) fn with_journal(
        journal: Journal,
        replicas: Option<u32>,
        peers_max: usize,
    ) -> Result<Self> {
        Self::rebuild(journal, replicas, peers_max, true)
    }

    /// A coordinator group follower's replica, for the reads it answers: rebuilt from its journal
    /// as the leader's would be, quietly (it is rebuilt as the journal grows).
    pub(crate) fn replica(
        journal: Journal,
        replicas: Option<u32>,
        peers_max: usize,
    ) -> Result<Self> {
        Self::rebuild(journal, replicas, peers_max, false)
    }

    fn rebuild(
        journal: Journal,
        replicas: Option<u32>,
        peers_max: usize,
        log: bool,
    ) -> Result<Self> {
        let policy = Policy {
            replicas,
            peers_max,
            ..Policy::seeded(journal.secret().spot_checks())
        };
        let payloads: BTreeMap<u64, JobPayload> =
            journal.jobs()?.into_iter().map(|j| (j.id, j)).collect();
        let mut work = Self {
            scheduler: Scheduler::new(policy),
            next_job: payloads.keys().next_back().map_or(1, |id| id + 1),
            payloads,
            journal,
            effects: VecDeque::new(),
            uncommitted: VecDeque::new(),
            accepted: BTreeMap::new(),
            parked: BTreeMap::new(),
            networks: BTreeMap::new(),
        };
        let entries = work.journal.entries()?;
        let mut facts = BTreeMap::new();
        let mut inputs = 0;
        for entry in &entries {
            if let Record::Accepted { job, unit, peer } = entry.record {
                facts.insert((job, unit), peer);
            }
        }
        for entry in entries {
            let Record::Input(input) = entry.record else {
                continue;
            };
            inputs += 1;
            for output in work.scheduler.handle(entry.now_ms, input) {
                if let Output::Accepted {
                    job, unit, peer, ..
                } = output
                {
                    if facts.get(&(job, unit)) != Some(&peer) {
                        tracing::error!(
                            job,
                            unit,
                            "replay accepted a unit the journal has no record of accepting"
                        );
                    }
                    work.accepted.insert((job, unit), peer);
                }
            }
        }
        work.scheduler.forget_waiting();
        if inputs > 0 && log {
            tracing::info!(
                inputs,
                jobs = work.payloads.len(),
                units_accepted = work.accepted.len(),
                "journal replayed"
            );
        }
        Ok(work)
    }

    /// Handle `input` at `now_ms`: run the scheduler, hand the input (and `batch`, and any new
    /// decisions) to the journal, and act on the outputs once they are committed.
    fn step(
        &mut self,
        net: &mut Network,
        now_ms: u64,
        input: Input,
        batch: Batch,
        always_log: bool,
    ) -> Result<Vec<Output>> {
        let outputs = self.record(now_ms, input, batch, always_log)?;
        self.act(net, &outputs);
        Ok(outputs)
    }

    /// The scheduler's half of [`Self::step`]: handle `input` and hand it to the journal with its
    /// decisions.
    fn record(
        &mut self,
        now_ms: u64,
        input: Input,
        mut batch: Batch,
        always_log: bool,
    ) -> Result<Vec<Output>> {
        let outputs = self.scheduler.handle(now_ms, input.clone());
        // Only a tick may go unlogged when it changed nothing: every other input changes state
        // that a replay must reproduce, outputs or not.
        if always_log || !outputs.is_empty() {
            batch.entry(now_ms, Record::Input(input));
        }
        let mut fresh = Uncommitted {
            output: batch.stored_output().cloned(),
            ..Uncommitted::default()
        };
        for output in &outputs {
            if let Output::Accepted {
                job, unit, peer, ..
            } = output
            {
                fresh.accepted.push((*job, *unit));
                batch.entry(
                    now_ms,
                    Record::Accepted {
                        job: *job,
                        unit: *unit,
                        peer: *peer,
                    },
                );
            }
        }
        if let Some(ticket) = self.journal.submit(batch)?
            && (fresh.output.is_some() || !fresh.accepted.is_empty())
        {
            self.uncommitted.push_back((ticket, fresh));
        }
        Ok(outputs)
    }

    /// Do `effect` once everything handed to the journal so far is durable (at once if it is).
    pub(crate) fn after_commit(&mut self, net: &mut Network, effect: Effect) {
        let ticket = self.journal.submitted();
        let durable = self.journal.committed().is_ok_and(|upto| upto >= ticket);
        if durable && self.effects.is_empty() {
            run(net, effect);
        } else {
            self.effects.push_back((ticket, effect));
        }
    }

    /// Answer a node once everything so far is durable.
    fn respond(&mut self, net: &mut Network, channel: WorkChannel, response: WorkResponse) {
        self.after_commit(net, Effect::Respond(channel, Box::new(response)));
    }

    /// Resolves when the journal's committer has made progress: then call [`Self::released`].
    pub(crate) fn committing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.journal.notified()
    }

    /// Release the effects whose facts are now durable; an error if the journal failed.
    pub(crate) fn released(&mut self, net: &mut Network) -> Result<()> {
        let upto = self.journal.committed()?;
        while self.uncommitted.front().is_some_and(|(t, _)| *t <= upto) {
            self.uncommitted.pop_front();
        }
        while self.effects.front().is_some_and(|(t, _)| *t <= upto) {
            if let Some((_, effect)) = self.effects.pop_front() {
                run(net, effect);
            }
        }
        Ok(())
    }

    /// Wait until everything handed to the journal is durable and release what waited for it
    /// (on shutdown).
    pub(crate) fn flush(&mut self, net: &mut Network) -> Result<()> {
        self.journal.flush()?;
        self.released(net)
    }

    /// The outputs delivered for one unit, by peer: the journal's, and those still on their way
    /// into it.
    fn outputs(&self, job: u64, unit: u64) -> Result<Vec<(PeerId, StoredOutput)>> {
        let (ticket, committed) = self.journal.outputs_at(job, unit)?;
        let mut outputs: BTreeMap<PeerId, StoredOutput> = committed.into_iter().collect();
        for (t, fresh) in &self.uncommitted {
            if let Some((j, u, peer, output)) = &fresh.output
                && *t > ticket
                && (*j, *u) == (job, unit)
            {
                outputs.insert(*peer, output.clone());
            }
        }
        Ok(outputs.into_iter().collect())
    }

    /// The secret behind this coordinator's random checks, from its journal.
    pub(crate) fn secret(&self) -> &crate::journal::Secret {
        self.journal.secret()
    }

    fn act(&mut self, net: &mut Network, outputs: &[Output]) {
        let mut assignments: BTreeMap<PeerId, Vec<Assignment>> = BTreeMap::new();
        for output in outputs {
            match output {
                Output::Assign {
                    peer,
                    job,
                    unit,
                    deadline_ms,
                } => {
                    let Some(payload) = self.payloads.get(job) else {
                        continue;
                    };
                    assignments.entry(*peer).or_default().push(Assignment {
                        job: *job,
                        unit: *unit,
                        model: payload.model,
                        task: payload.task(*unit),
                        deadline_ms: *deadline_ms,
                    });
                }
                Output::Accepted {
                    job, unit, peer, ..
                } => {
                    self.accepted.insert((*job, *unit), *peer);
                }
                Output::UnitFailed { job, unit, reason } => {
                    tracing::warn!(job, unit, %reason, "unit failed");
                }
                Output::JobFinished { job, state } => {
                    tracing::info!(job, ?state, "job finished");
                }
                Output::Rejected {
                    peer,
                    job,
                    unit,
                    reason,
                } => {
                    tracing::warn!(%peer, job, unit, %reason, "result rejected");
                }
                Output::Verdict {
                    peer,
                    job,
                    unit,
                    fault,
                } => match fault {
                    None => tracing::debug!(%peer, job, unit, "result valid"),
                    Some(fault) => tracing::info!(%peer, job, unit, ?fault, "result invalid"),
                },
                Output::Ledger(LedgerOutput::Quarantined {
                    peer,
                    until_ms,
                    reason,
                }) => tracing::warn!(%peer, until_ms, %reason, "peer quarantined"),
                Output::Ledger(LedgerOutput::Trusted { peer, class }) => {
                    tracing::info!(%peer, %class, "peer trusted to run units alone");
                }
                Output::Ledger(LedgerOutput::LostTrust { peer, class }) => {
                    tracing::info!(%peer, %class, "peer lost trust");
                }
            }
        }
        for (peer, units) in assignments {
            match self.parked.remove(&peer) {
                Some((channel, _)) => {
                    tracing::debug!(%peer, units = units.len(), "assigned");
                    self.respond(net, channel, WorkResponse::Assign(units));
                }
                None => tracing::warn!(%peer, "assignment for a peer with no request held"),
            }
        }
    }

    /// Record the network a peer connects from (replicas prefer distinct ones).
    pub(crate) fn connected(&mut self, peer: PeerId, network: String) {
        self.networks.insert(peer, network);
    }

    pub(crate) fn submit(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        now_ms: u64,
        request: SubmitJob,
    ) -> std::result::Result<Result<u64>, Refused> {
        let kind = match (request.kind.as_str(), request.max_tokens) {
            ("embed", _) => JobKind::Embed,
            ("generate", Some(max_tokens))
                if (1..=hearth_protocol::GENERATE_TOKENS_MAX).contains(&max_tokens) =>
            {
                JobKind::Generate { max_tokens }
            }
            ("generate", _) => return Err(Refused::MaxTokens),
            (other, _) => return Err(Refused::Kind(other.into())),
        };
        if request.inputs.is_empty() {
            return Err(Refused::NoInputs);
        }
        if request.inputs.len() > JOB_INPUTS_MAX {
            return Err(Refused::TooManyInputs);
        }
        if let Some(r) = request.replicas
            && !(1..=REPLICAS_MAX).contains(&r)
        {
            return Err(Refused::Replicas);
        }
        let unit_size = match request.unit_size {
            Some(n) if (1..=UNIT_ITEMS_MAX as u32).contains(&n) => n,
            Some(_) => return Err(Refused::UnitSize),
            None => {
                let mut scores: Vec<f64> = registry
                    .entries(now_ms)
                    .iter()
                    .filter(|p| p.online)
                    .map(|p| p.capabilities.score)
                    .collect();
                scores.sort_by(f64::total_cmp);
                let median = scores.get(scores.len() / 2).copied().unwrap_or(0.0);
                unit_size(median) as u32
            }
        };
        let (ids, texts): (Vec<String>, Vec<String>) = request
            .inputs
            .into_iter()
            .map(|i| (i.id.to_string(), i.text))
            .unzip();
        let id = self.next_job;
        let payload = JobPayload {
            id,
            kind,
            model: request.model,
            ids,
            order: JobPayload::order_by_length(&texts),
            texts,
            unit_size,
            replicas: request.replicas,
            submitted_ms: now_ms,
        };
        let mut units = Vec::new();
        for unit in 0..payload.units() {
            let task = payload.task(unit);
            if task.input_bytes() > UNIT_INPUT_BYTES_MAX {
                return Err(Refused::UnitTooLarge(unit));
            }
            units.push(UnitSpec {
                input: input_digest(id, unit, &payload.model, &task),
                items: task.items() as u32,
            });
        }
        let spec = JobSpec {
            id,
            family: match kind {
                JobKind::Embed => KernelFamily::Embed,
                JobKind::Generate { .. } => KernelFamily::Llm,
            },
            model: payload.model,
            replicas: request.replicas,
            units,
            submitter: request.submitter,
        };
        self.next_job += 1;
        let mut batch = Batch::default();
        batch.job(payload.clone());
        self.payloads.insert(id, payload);
        tracing::info!(
            job = id,
            units = spec.units.len(),
            unit_size,
            "job submitted"
        );
        Ok(self
            .step(net, now_ms, Input::Submit(spec), batch, true)
            .map(|_| id))
    }

    pub(crate) fn cancel(&mut self, net: &mut Network, now_ms: u64, job: u64) -> Result<bool> {
        if !self.payloads.contains_key(&job) {
            return Ok(false);
        }
        self.step(net, now_ms, Input::Cancel(job), Batch::default(), true)?;
        Ok(true)
    }

    pub(crate) fn tick(&mut self, net: &mut Network, now_ms: u64) -> Result<()> {
        self.step(net, now_ms, Input::Tick, Batch::default(), false)?;
        let expired: Vec<PeerId> = self
            .parked
            .iter()
            .filter(|(_, (_, until))| *until <= now_ms)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            if let Some((channel, _)) = self.parked.remove(&peer) {
                self.respond(net, channel, WorkResponse::Assign(Vec::new()));
            }
        }
        Ok(())
    }

    pub(crate) fn peer_lost(&mut self, net: &mut Network, now_ms: u64, peer: PeerId) -> Result<()> {
        self.parked.remove(&peer);
        // Logged even when nothing follows at once: it reopens the peer's units, which a replay
        // must see before any later assignment of them.
        self.step(net, now_ms, Input::PeerLost(peer), Batch::default(), true)
            .map(drop)
    }

    pub(crate) fn on_request(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        now_ms: u64,
        peer: PeerId,
        request: WorkRequest,
        channel: WorkChannel,
    ) -> Result<()> {
        match request {
            WorkRequest::Fetch { slots } => {
                let Some(capabilities) = registry.capabilities(&peer) else {
                    // Not heard on gossip yet: nothing to match it by. It asks again shortly.
                    self.respond(net, channel, WorkResponse::Assign(Vec::new()));
                    return Ok(());
                };
                let offer =
                    std::sync::Arc::new(Offer::of(capabilities, self.networks.get(&peer).cloned()));
                if let Some((old, _)) = self.parked.remove(&peer) {
                    self.respond(net, old, WorkResponse::Assign(Vec::new()));
                }
                let until_ms = now_ms + WORK_FETCH_HOLD_MS;
                self.parked.insert(peer, (channel, until_ms));
                let input = Input::Ready {
                    peer,
                    slots: slots.clamp(1, SLOTS_PER_REQUEST_MAX),
                    until_ms,
                    offer,
                };
                self.step(net, now_ms, input, Batch::default(), true)?;
            }
            WorkRequest::Forward(_)
            | WorkRequest::EndSession { .. }
            | WorkRequest::Route(_)
            | WorkRequest::Chain(_)
            | WorkRequest::Kept { .. }
            | WorkRequest::Check(_)
            | WorkRequest::Prepare(_)
            | WorkRequest::Weights { .. } => {
                self.respond(
                    net,
                    channel,
                    WorkResponse::Rejected("a coordinator runs no pipeline stages".into()),
                );
            }
            WorkRequest::Report(_) | WorkRequest::Broken { .. } | WorkRequest::BadWeights(_) => {
                self.respond(
                    net,
                    channel,
                    WorkResponse::Rejected("no such session, or not a stage of it".into()),
                );
            }
            WorkRequest::Refuse { job, unit, reason } => {
                tracing::info!(%peer, job, unit, %reason, "unit refused");
                let input = Input::Refused { peer, job, unit };
                self.step(net, now_ms, input, Batch::default(), true)?;
                self.respond(net, channel, WorkResponse::Ack);
            }
            WorkRequest::Deliver {
                job,
                unit,
                receipt,
                output,
            } => {
                let Some(payload) = self.payloads.get(&job) else {
                    self.respond(net, channel, WorkResponse::Rejected("no such job".into()));
                    return Ok(());
                };
                if unit >= payload.units() {
                    self.respond(net, channel, WorkResponse::Rejected("no such unit".into()));
                    return Ok(());
                }
                // The bytes are checked here, in the shell, and the scheduler gets the marks: the
                // signature first, then the output bytes' digest, and only then are they parsed.
                let task = payload.task(unit);
                let signature_ok = receipt.verify().is_ok();
                let parsed = (signature_ok && digest_canonical(&output) == receipt.body.output)
                    .then(|| UnitOutput::from_canonical(&output).ok())
                    .flatten()
                    .filter(|o| o.fits(&task));
                let output_ok = parsed.is_some() && receipt.body.model == payload.model;
                let subject = match receipt.body.subject {
                    Subject::Unit { job, unit } => (job, unit),
                    Subject::Step { .. } => (u64::MAX, u64::MAX),
                };
                let class = receipt.body.numeric_class.clone();
                let agrees_across = if let (Some(output), true) = (&parsed, output_ok) {
                    self.outputs(job, unit)?
                        .into_iter()
                        .filter(|(p, o)| {
                            *p != peer
                                && o.receipt.body.numeric_class != class
                                && within_tolerance(&o.output, output)
                        })
                        .map(|(p, _)| p)
                        .collect()
                } else {
                    Default::default()
                };
                let delivery = Delivery {
                    peer,
                    job,
                    unit,
                    signer: receipt.peer_id(),
                    signature_ok,
                    subject,
                    input: receipt.body.input,
                    output: receipt.body.output,
                    output_ok,
                    class: class.as_str().into(),
                    agrees_across,
                };
                let mut batch = Batch::default();
                if let (Some(output), true) = (parsed, output_ok) {
                    batch.output(job, unit, peer, StoredOutput { receipt, output });
                }
                let outputs = self.step(net, now_ms, Input::Delivered(delivery), batch, true)?;
                let rejected = outputs.iter().find_map(|o| match o {
                    Output::Rejected {
                        peer: p,
                        job: j,
                        unit: u,
                        reason,
                    } if (*p, *j, *u) == (peer, job, unit) => Some(reason.clone()),
                    _ => None,
                });
                self.respond(
                    net,
                    channel,
                    rejected.map_or(WorkResponse::Ack, WorkResponse::Rejected),
                );
            }
        }
        Ok(())
    }

    /// A ledger verdict from outside the scheduler's own checks: a pipeline stage caught
    /// returning wrong results (`crate::pipeline::stage_fault`: a strike, since its outputs are
    /// compared by tolerance, not digest), or a holder that served model bytes that do not verify
    /// (`crate::pipeline::weights_fault`: the evidence was checked; quarantined).
    pub(crate) fn verdict(&mut self, net: &mut Network, now_ms: u64, input: Input) -> Result<()> {
        self.step(net, now_ms, input, Batch::default(), true)
            .map(drop)
    }

    pub(crate) fn standing(&self, peer: &PeerId, now_ms: u64) -> Standing {
        self.scheduler.standing(peer, now_ms)
    }

    pub(crate) fn jobs(&self) -> Vec<JobStatus> {
        self.scheduler.jobs()
    }

    /// `GET /v1/jobs/{id}`: the status, with each unit when `units` (and, per unit, how many times
    /// the journal records it accepted: `journal_accepts`, which must be 1 for a done unit).
    pub(crate) fn status(&self, id: u64, units: bool) -> Result<Option<JobView>> {
        let (Some(status), Some(payload)) = (self.scheduler.job(id), self.payloads.get(&id)) else {
            return Ok(None);
        };
        let units = if units {
            let mut accepts: BTreeMap<u64, u32> = BTreeMap::new();
            let (ticket, entries) = self.journal.entries_at()?;
            for entry in entries {
                if let Record::Accepted { job, unit, .. } = entry.record
                    && job == id
                {
                    *accepts.entry(unit).or_default() += 1;
                }
            }
            // And those on their way into it: the status is of now, and is sent once they are in.
            for (_, fresh) in self.uncommitted.iter().filter(|(t, _)| *t > ticket) {
                for &(job, unit) in &fresh.accepted {
                    if job == id {
                        *accepts.entry(unit).or_default() += 1;
                    }
                }
            }
            let units = self.scheduler.units(id).unwrap_or_default();
            Some(
                units
                    .into_iter()
                    .map(|unit| UnitView {
                        journal_accepts: accepts.get(&unit.id).copied().unwrap_or(0),
                        unit,
                    })
                    .collect(),
            )
        } else {
            None
        };
        Ok(Some(JobView {
            status,
            kind: match payload.kind {
                JobKind::Embed => "embed",
                JobKind::Generate { .. } => "generate",
            },
            model: payload.model,
            inputs: payload.texts.len(),
            unit_size: payload.unit_size,
            replicas: payload.replicas,
            submitted_ms: payload.submitted_ms,
            units,
        }))
    }

    fn accepted_outputs(
        &self,
        id: u64,
    ) -> std::result::Result<(&JobPayload, Vec<StoredOutput>), Unavailable> {
        let status = self.scheduler.job(id).ok_or(Unavailable::NotFound)?;
        let payload = self.payloads.get(&id).ok_or(Unavailable::NotFound)?;
        if status.state != JobState::Done {
            return Err(Unavailable::NotDone(status.state));
        }
        let mut outputs = Vec::new();
        for unit in 0..payload.units() {
            let peer = self.accepted.get(&(id, unit)).ok_or_else(|| {
                Unavailable::Journal(format!("unit {unit} is done but has no accepted output"))
            })?;
            let stored = self
                .outputs(id, unit)
                .map_err(|e| Unavailable::Journal(e.to_string()))?
                .into_iter()
                .find(|(p, _)| p == peer)
                .map(|(_, o)| o)
                .ok_or_else(|| Unavailable::Journal(format!("unit {unit}'s output is missing")))?;
            outputs.push(stored);
        }
        Ok((payload, outputs))
    }

    /// Job `id`'s output lines, or its receipts' (`GET /v1/jobs/{id}/output`, `…/receipts`).
    pub(crate) fn lines(
        &self,
        id: u64,
        receipts: bool,
    ) -> std::result::Result<String, Unavailable> {
        if receipts {
            self.receipts(id)
        } else {
            self.output(id)
        }
    }

    /// `GET /v1/jobs/{id}/output`: one JSON line per input, in input order.
    pub(crate) fn output(&self, id: u64) -> std::result::Result<String, Unavailable> {
        let (payload, outputs) = self.accepted_outputs(id)?;
        let mut lines: Vec<String> = vec![String::new(); payload.texts.len()];
        for (unit, stored) in outputs.iter().enumerate() {
            let inputs = payload.inputs(unit as u64);
            let ids: Vec<String> = inputs
                .iter()
                .map(|&i| payload.ids[i as usize].clone())
                .collect();
            let mut text = String::new();
            output_lines(&ids, &stored.output, &mut text);
            for (&i, line) in inputs.iter().zip(text.lines()) {
                lines[i as usize] = format!("{line}\n");
            }
        }
        Ok(lines.concat())
    }

    /// `GET /v1/jobs/{id}/receipts`: one JSON line per unit with its signed receipt.
    pub(crate) fn receipts(&self, id: u64) -> std::result::Result<String, Unavailable> {
        let (payload, outputs) = self.accepted_outputs(id)?;
        let mut text = String::new();
        for (unit, stored) in outputs.iter().enumerate() {
            let inputs = payload.inputs(unit as u64);
            let input_ids: Vec<Value> = inputs
                .iter()
                .map(|&i| serde_json::from_str(&payload.ids[i as usize]).unwrap_or(Value::Null))
                .collect();
            let line = json!({
                "job": id,
                "unit": unit,
                "input_ids": input_ids,
                "input_lines": inputs.iter().map(|&i| i + 1).collect::<Vec<u32>>(),
                "receipt": stored.receipt,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        Ok(text)
    }
}

fn run(net: &mut Network, effect: Effect) {
    match effect {
        Effect::Respond(channel, response) => {
            if !net.respond(channel, *response) {
                tracing::debug!("peer gone before its answer was sent");
            }
        }
        Effect::Reply(reply) => reply(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use hearth_protocol::{Digest, KernelFamily, ModelId, PeerId, SecretKey};

    use super::*;
    use crate::journal::JOURNAL_FILE;

    /// Units in the test job: after the first few dozen (while the peers earn trust) each one is a
    /// spot-check decision, so chance agreement between two secrets cannot pass.
    const UNITS: u64 = 1_500;

    fn peer(n: u8) -> PeerId {
        SecretKey::from_bytes(&[n; 32]).public().peer_id()
    }

    fn input(unit: u64) -> Digest {
        Digest::of("input", &unit.to_le_bytes())
    }

    fn submit() -> Input {
        Input::Submit(JobSpec {
            id: 1,
            family: KernelFamily::Embed,
            model: ModelId::of_bytes(b"embedder"),
            replicas: None,
            units: (0..UNITS)
                .map(|u| UnitSpec {
                    input: input(u),
                    items: 1,
                })
                .collect(),
            submitter: None,
        })
    }

    /// Three honest peers, each asking for one unit a round and answering it at once; returns
    /// every assignment made, in order: the scheduler's decisions, spot checks included.
    fn rounds(work: &mut Work, now_ms: &mut u64, count: usize) -> Vec<(u64, PeerId)> {
        let mut decisions = Vec::new();
        for _ in 0..count {
            for n in 1..=3u8 {
                let p = peer(n);
                let ready = Input::Ready {
                    peer: p,
                    slots: 1,
                    until_ms: *now_ms + 10_000,
                    offer: std::sync::Arc::new(Offer {
                        classes: BTreeMap::from([(KernelFamily::Embed, "k0/embed/test".into())]),
                        models: vec![ModelId::of_bytes(b"embedder")],
                        score: 20.0,
                        network: Some(format!("net-{n}")),
                    }),
                };
                let outputs = work
                    .record(*now_ms, ready, Batch::default(), true)
                    .expect("commit");
                for output in outputs {
                    let Output::Assign {
                        peer, job, unit, ..
                    } = output
                    else {
                        continue;
                    };
                    decisions.push((unit, peer));
                    let delivery = Delivery {
                        peer,
                        job,
                        unit,
                        signer: peer,
                        signature_ok: true,
                        subject: (job, unit),
                        input: input(unit),
                        output: Digest::of("truth", &unit.to_le_bytes()),
                        output_ok: true,
                        class: "k0/embed/test".into(),
                        agrees_across: BTreeSet::new(),
                    };
                    work.record(*now_ms, Input::Delivered(delivery), Batch::default(), true)
                        .expect("commit");
                }
            }
            *now_ms += 10;
        }
        decisions
    }

    /// Units that went to more than one peer although a trusted peer could have run them alone.
    fn checked(decisions: &[(u64, PeerId)]) -> BTreeSet<u64> {
        let mut peers: BTreeMap<u64, BTreeSet<PeerId>> = BTreeMap::new();
        for (unit, peer) in decisions {
            peers.entry(*unit).or_default().insert(*peer);
        }
        // The first units run replicated while the peers are new; count from the point all three
        // could be trusted.
        peers
            .into_iter()
            .filter(|(unit, peers)| *unit >= 100 && peers.len() > 1)
            .map(|(unit, _)| unit)
            .collect()
    }

    #[test]
    fn spot_checks_come_from_the_journals_secret_unpredictable_and_replayed() {
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        // Coordinator B starts from a copy of A's new journal: the same secret, run without a
        // restart, for what A must draw again after its own.
        drop(Work::open(dirs[0].path(), None, crate::PEERS_MAX_DEFAULT).expect("open A"));
        std::fs::copy(
            dirs[0].path().join(JOURNAL_FILE),
            dirs[1].path().join(JOURNAL_FILE),
        )
        .expect("copy journal");
        let total_rounds = UNITS as usize;

        let run = |dir: &Path, restart_after: Option<usize>| {
            let mut work = Work::open(dir, None, crate::PEERS_MAX_DEFAULT).expect("open");
            let mut now_ms = 1_000;
            work.record(now_ms, submit(), Batch::default(), true)
                .expect("submit");
            let mut decisions = Vec::new();
            if let Some(first) = restart_after {
                decisions.extend(rounds(&mut work, &mut now_ms, first));
                let seed = work.secret().spot_checks();
                drop(work);
                work = Work::open(dir, None, crate::PEERS_MAX_DEFAULT).expect("reopen");
                assert_eq!(work.secret().spot_checks(), seed, "the secret is kept");
                decisions.extend(rounds(&mut work, &mut now_ms, total_rounds - first));
            } else {
                decisions.extend(rounds(&mut work, &mut now_ms, total_rounds));
            }
            work.journal.flush().expect("flush");
            let accepted: BTreeSet<u64> = work
                .journal
                .entries()
                .expect("entries")
                .iter()
                .filter_map(|e| match e.record {
                    Record::Accepted { unit, .. } => Some(unit),
                    _ => None,
                })
                .collect();
            assert_eq!(accepted.len() as u64, UNITS, "every unit accepted");
            decisions
        };
        let a = run(dirs[0].path(), Some(total_rounds / 3));
        let b = run(dirs[1].path(), None);
        let c = run(dirs[2].path(), None);

        let decided = a.iter().filter(|(unit, _)| *unit >= 100).count();
        assert!(decided >= 1_000, "only {decided} decisions");
        let (checked_a, checked_c) = (checked(&a), checked(&c));
        assert!(
            checked_a.len() > 50 && checked_c.len() > 50,
            "spot checks happen: {} and {}",
            checked_a.len(),
            checked_c.len()
        );
        assert_ne!(
            checked_a, checked_c,
            "two coordinators started the same way check different units"
        );
        assert_eq!(a, b, "a restarted coordinator draws what it drew before");
    }
}
