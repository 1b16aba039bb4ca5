//! The node's side of sharded jobs: ask the coordinator for units, run them on an executor thread,
//! sign a receipt for each result, keep it in the outbox until the coordinator acknowledges it.
//!
//! ```text
//!  loop ──Fetch──▶ coordinator ──Assign──▶ loop ──unit──▶ executor thread (kernels)
//!  loop ◀──result── executor;  loop: sign, commit to outbox, ──Deliver──▶ coordinator
//!  coordinator ──Ack──▶ loop: remove from outbox
//! ```
//!
//! The outbox (redb, `outbox.redb` in the data folder) is written before a result is sent, so a
//! node that dies or loses the coordinator delivers it later, after it starts again or the
//! coordinator comes back.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_kernels::{Embedder, GgufModel, GgufTokenizer, Stage, generate_greedy};
use hearth_net::Network;
use hearth_net::RequestId;
use hearth_protocol::work::{
    Assignment, Completion, Task, UnitOutput, WorkRequest, WorkResponse, input_digest,
};
use hearth_protocol::{Capabilities, ModelId, PeerId, Receipt, ReceiptBody, SecretKey, Subject};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[cfg(feature = "fault-injection")]
use crate::Fault;
use crate::limits::{ANSWER_WAIT, EXECUTOR_QUEUE_MAX, FETCH_RETRY, REDELIVER_INTERVAL};
use crate::{Error, Result};

/// The outbox's file in the node's data folder.
pub const OUTBOX_FILE: &str = "outbox.redb";

/// Results from before a node served several coordinators, keyed (job, unit): delivered to the
/// first coordinator connected, as they were then.
const OUTBOX_LEGACY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("outbox");
/// Results keyed (coordinator, job, unit): each goes back to the coordinator that assigned it
/// (two swarms' job numbers are their own, and may be equal).
const OUTBOX: TableDefinition<(&[u8], u64, u64), &[u8]> = TableDefinition::new("outbox_for");

/// A finished result waiting for the coordinator's acknowledgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    job: u64,
    unit: u64,
    receipt: Receipt,
    output: UnitOutput,
}

/// An outbox entry: the result, and the coordinator it is owed to (`None`: an entry written
/// before outboxes were kept per coordinator, owed to whichever is connected first).
struct Owed {
    to: Option<PeerId>,
    pending: Pending,
}

struct Outbox {
    db: Database,
    path: PathBuf,
}

impl Outbox {
    fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(OUTBOX_FILE);
        let db = Database::create(&path).map_err(|e| outbox_error(&path, e))?;
        let tx = db.begin_write().map_err(|e| outbox_error(&path, e))?;
        tx.open_table(OUTBOX).map_err(|e| outbox_error(&path, e))?;
        tx.open_table(OUTBOX_LEGACY)
            .map_err(|e| outbox_error(&path, e))?;
        tx.commit().map_err(|e| outbox_error(&path, e))?;
        Ok(Self { db, path })
    }

    fn put(&self, to: &PeerId, pending: &Pending) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| outbox_error(&self.path, e);
        let bytes = postcard::to_stdvec(pending).map_err(|e| err(&e))?;
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(OUTBOX)
            .map_err(|e| err(&e))?
            .insert(
                (
                    to.to_multihash_bytes().as_slice(),
                    pending.job,
                    pending.unit,
                ),
                bytes.as_slice(),
            )
            .map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))
    }

    fn remove(&self, to: Option<&PeerId>, job: u64, unit: u64) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| outbox_error(&self.path, e);
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        match to {
            Some(to) => {
                tx.open_table(OUTBOX)
                    .map_err(|e| err(&e))?
                    .remove((to.to_multihash_bytes().as_slice(), job, unit))
                    .map_err(|e| err(&e))?;
            }
            None => {
                tx.open_table(OUTBOX_LEGACY)
                    .map_err(|e| err(&e))?
                    .remove((job, unit))
                    .map_err(|e| err(&e))?;
            }
        }
        tx.commit().map_err(|e| err(&e))
    }

    fn all(&self) -> Result<Vec<Owed>> {
        let err = |e: &dyn std::fmt::Display| outbox_error(&self.path, e);
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let mut out = Vec::new();
        let decode = |bytes: &[u8]| match postcard::from_bytes::<Pending>(bytes) {
            Ok(pending) => Some(pending),
            Err(error) => {
                tracing::warn!(%error, "unreadable outbox entry skipped");
                None
            }
        };
        let table = tx.open_table(OUTBOX).map_err(|e| err(&e))?;
        for item in table.iter().map_err(|e| err(&e))? {
            let (key, value) = item.map_err(|e| err(&e))?;
            let to = PeerId::from_multihash_bytes(key.value().0).ok();
            match (to, decode(value.value())) {
                (Some(to), Some(pending)) => out.push(Owed {
                    to: Some(to),
                    pending,
                }),
                (None, _) => tracing::warn!("outbox entry for an unreadable peer id skipped"),
                (_, None) => {}
            }
        }
        let table = tx.open_table(OUTBOX_LEGACY).map_err(|e| err(&e))?;
        for item in table.iter().map_err(|e| err(&e))? {
            let (_, value) = item.map_err(|e| err(&e))?;
            if let Some(pending) = decode(value.value()) {
                out.push(Owed { to: None, pending });
            }
        }
        Ok(out)
    }
}

fn outbox_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Outbox {
        path: path.into(),
        message: error.to_string(),
    }
}

/// A unit's result from the executor.
pub(crate) struct Finished {
    /// The coordinator that assigned it.
    from: PeerId,
    assignment: Assignment,
    output: std::result::Result<UnitOutput, String>,
}

/// The thread that runs units on the kernels, one at a time, with the models it has loaded.
struct Executor {
    models: HashMap<ModelId, PathBuf>,
    embedders: HashMap<ModelId, Embedder>,
    llms: HashMap<ModelId, (GgufTokenizer, Stage)>,
}

impl Executor {
    fn run(&mut self, assignment: &Assignment) -> std::result::Result<UnitOutput, String> {
        let path = self
            .models
            .get(&assignment.model)
            .ok_or_else(|| {
                format!(
                    "model {} is not in this node's models folder",
                    assignment.model
                )
            })?
            .clone();
        let device = hearth_kernels::compute_device();
        match &assignment.task {
            Task::Embed { texts } => {
                let embedder = match self.embedders.entry(assignment.model) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(v) => {
                        let dir = path.parent().unwrap_or(Path::new("."));
                        v.insert(Embedder::load(dir, &device).map_err(|e| e.to_string())?)
                    }
                };
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                embedder
                    .embed_each(&texts)
                    .map(UnitOutput::Embeddings)
                    .map_err(|e| e.to_string())
            }
            Task::Generate {
                prompts,
                max_tokens,
            } => {
                let (tokenizer, stage) = match self.llms.entry(assignment.model) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(v) => {
                        let model = GgufModel::open(&path).map_err(|e| e.to_string())?;
                        let tokenizer =
                            GgufTokenizer::from_model(&model).map_err(|e| e.to_string())?;
                        let stage = Stage::load(&model, 0..model.config.layers, &device)
                            .map_err(|e| e.to_string())?;
                        v.insert((tokenizer, stage))
                    }
                };
                let mut completions = Vec::new();
                for (session, prompt) in prompts.iter().enumerate() {
                    let ids = tokenizer.encode(prompt, false).map_err(|e| e.to_string())?;
                    let run = generate_greedy(
                        stage,
                        &tokenizer.ends,
                        &ids,
                        *max_tokens as usize,
                        session as u64,
                    )
                    .map_err(|e| e.to_string())?;
                    let text = tokenizer
                        .decode(&run.token_ids)
                        .map_err(|e| e.to_string())?;
                    completions.push(Completion {
                        token_ids: run.token_ids,
                        text,
                    });
                }
                Ok(UnitOutput::Completions(completions))
            }
        }
    }
}

/// Start the executor thread: units in, results out.
fn spawn_executor(
    models: HashMap<ModelId, PathBuf>,
    results: mpsc::Sender<Finished>,
    delay: Duration,
) -> std::sync::mpsc::SyncSender<(PeerId, Assignment)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(PeerId, Assignment)>(EXECUTOR_QUEUE_MAX);
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("hearth-executor".into())
        .spawn(move || {
            let _enter = span.enter();
            let mut executor = Executor {
                models,
                embedders: HashMap::new(),
                llms: HashMap::new(),
            };
            while let Ok((from, assignment)) = rx.recv() {
                let started = std::time::Instant::now();
                let output = executor.run(&assignment);
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                tracing::debug!(
                    job = assignment.job,
                    unit = assignment.unit,
                    ms = started.elapsed().as_millis() as u64,
                    ok = output.is_ok(),
                    "unit computed"
                );
                if results
                    .blocking_send(Finished {
                        from,
                        assignment,
                        output,
                    })
                    .is_err()
                {
                    break;
                }
            }
        })
        .expect("the executor thread starts");
    tx
}

/// The work half of the node's loop. A node may serve several coordinators (several `--join`):
/// it asks each for work while it has room, and keeps each one's results apart until that one
/// acknowledges them.
pub(crate) struct Worker {
    key: SecretKey,
    outbox: Outbox,
    executor: std::sync::mpsc::SyncSender<(PeerId, Assignment)>,
    /// Units handed to the executor and not finished, from every coordinator.
    busy: usize,
    slots: usize,
    /// Shutting down: ask for no more work; finish what is held and deliver the outbox.
    draining: bool,
    /// `--idle-only` and the host's owner is busy: ask for no more work for now.
    pub(crate) paused: bool,
    /// Units to hand back at the next poll, with why: assigned while paused, or past the node's
    /// slots (two coordinators answered at once).
    refusals: Vec<(PeerId, u64, u64, &'static str)>,
    /// Each coordinator's requests for work.
    asks: HashMap<PeerId, Asking>,
    /// Deliveries awaiting their answer: the outbox entry and when it was sent.
    deliveries: BTreeMap<RequestId, Delivery>,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
    #[cfg(feature = "fault-injection")]
    delivered: u32,
    #[cfg(feature = "fault-injection")]
    last: Option<(Receipt, UnitOutput)>,
}

/// The requests for work sent to one coordinator.
struct Asking {
    /// The request in flight, and when it was sent.
    fetch: Option<(RequestId, Instant)>,
    next_fetch: Instant,
    next_redeliver: Instant,
}

impl Asking {
    fn new(now: Instant) -> Self {
        Self {
            fetch: None,
            next_fetch: now,
            next_redeliver: now,
        }
    }
}

/// A result sent and not yet answered.
struct Delivery {
    /// The outbox key's coordinator (`None`: a legacy entry).
    owed: Option<PeerId>,
    /// Where it was sent.
    to: PeerId,
    job: u64,
    unit: u64,
    sent: Instant,
}

const PAUSED: &str = "paused: the host is busy with its owner's work";
const FULL: &str = "busy: this node's slots are taken by other work";

impl Worker {
    /// Open the outbox and start the executor; results arrive on the returned channel.
    pub(crate) fn start(
        key: SecretKey,
        data_dir: &Path,
        models: HashMap<ModelId, PathBuf>,
        slots: usize,
        #[cfg(feature = "fault-injection")] fault: Option<Fault>,
    ) -> Result<(Self, mpsc::Receiver<Finished>)> {
        let outbox = Outbox::open(data_dir)?;
        let waiting = outbox.all()?.len();
        if waiting > 0 {
            tracing::info!(results = waiting, "outbox holds results to deliver");
        }
        let (results_tx, results) = mpsc::channel(EXECUTOR_QUEUE_MAX);
        #[cfg(feature = "fault-injection")]
        let delay = if fault == Some(Fault::Slow) {
            crate::limits::FAULT_SLOW_DELAY
        } else {
            Duration::ZERO
        };
        #[cfg(not(feature = "fault-injection"))]
        let delay = Duration::ZERO;
        let executor = spawn_executor(models, results_tx, delay);
        Ok((
            Self {
                key,
                outbox,
                executor,
                busy: 0,
                slots: slots.max(1),
                draining: false,
                paused: false,
                refusals: Vec::new(),
                asks: HashMap::new(),
                deliveries: BTreeMap::new(),
                #[cfg(feature = "fault-injection")]
                fault,
                #[cfg(feature = "fault-injection")]
                delivered: 0,
                #[cfg(feature = "fault-injection")]
                last: None,
            },
            results,
        ))
    }

    /// Ask each connected coordinator (`coordinators`, in join order) for work while there is
    /// room, and redeliver what the outbox owes it.
    pub(crate) fn poll(&mut self, net: &mut Network, coordinators: &[PeerId]) -> Result<()> {
        let Some(&first) = coordinators.first() else {
            return Ok(());
        };
        #[cfg(feature = "fault-injection")]
        if self.fault == Some(Fault::Flood) {
            for _ in 0..200 {
                net.request(&first, WorkRequest::Fetch { slots: 1 });
            }
            return Ok(());
        }
        let mut kept = Vec::new();
        for (to, job, unit, reason) in self.refusals.drain(..) {
            if coordinators.contains(&to) {
                net.request(
                    &to,
                    WorkRequest::Refuse {
                        job,
                        unit,
                        reason: reason.into(),
                    },
                );
            } else {
                kept.push((to, job, unit, reason));
            }
        }
        self.refusals = kept;
        let now = Instant::now();
        // The work protocol waits long for answers (a pipeline stage's long prefill); requests to
        // the coordinator are not left hanging that long: past ANSWER_WAIT they are asked again
        // (a late answer to the old one is then ignored; its units are reassigned).
        self.deliveries
            .retain(|_, d| now.duration_since(d.sent) <= ANSWER_WAIT);
        for &coordinator in coordinators {
            let asking = self
                .asks
                .entry(coordinator)
                .or_insert_with(|| Asking::new(now));
            if asking
                .fetch
                .is_some_and(|(_, sent)| now.duration_since(sent) > ANSWER_WAIT)
            {
                tracing::debug!(%coordinator, "no answer to a request for work; asking again");
                asking.fetch = None;
            }
            // Each coordinator is asked for the free slots: when two answer at once, the units
            // past the slots are handed back (`FULL`) rather than one swarm waiting on the other's
            // held request.
            if !self.draining
                && !self.paused
                && asking.fetch.is_none()
                && self.busy < self.slots
                && now >= asking.next_fetch
            {
                let slots = (self.slots - self.busy) as u32;
                let id = net.request(&coordinator, WorkRequest::Fetch { slots });
                asking.fetch = Some((id, now));
            }
        }
        let mut owed: Vec<Owed> = Vec::new();
        let mut due: Vec<PeerId> = Vec::new();
        for &coordinator in coordinators {
            let asking = self.asks.get_mut(&coordinator).expect("inserted above");
            if now >= asking.next_redeliver
                && !self.deliveries.values().any(|d| d.to == coordinator)
            {
                asking.next_redeliver = now + REDELIVER_INTERVAL;
                due.push(coordinator);
            }
        }
        if !due.is_empty() {
            owed.extend(self.outbox.all()?.into_iter().filter(|o| {
                // Legacy entries go to the first coordinator connected.
                due.contains(&o.to.unwrap_or(first))
            }));
        }
        for o in owed {
            let to = o.to.unwrap_or(first);
            self.send(net, o.to, to, o.pending);
        }
        Ok(())
    }

    fn send(&mut self, net: &mut Network, owed: Option<PeerId>, to: PeerId, pending: Pending) {
        let (job, unit) = (pending.job, pending.unit);
        if self
            .deliveries
            .values()
            .any(|d| d.owed == owed && (d.job, d.unit) == (job, unit))
        {
            return;
        }
        let id = net.request(
            &to,
            WorkRequest::Deliver {
                job,
                unit,
                receipt: pending.receipt,
                output: pending.output.canonical(),
            },
        );
        self.deliveries.insert(
            id,
            Delivery {
                owed,
                to,
                job,
                unit,
                sent: Instant::now(),
            },
        );
    }

    /// Stop asking for work: what is running finishes and the outbox is delivered (SIGTERM).
    pub(crate) fn drain(&mut self) -> Result<(usize, usize)> {
        self.draining = true;
        Ok((self.busy, self.outbox.all()?.len()))
    }

    /// Nothing running, nothing undelivered.
    pub(crate) fn drained(&self) -> Result<bool> {
        Ok(self.busy == 0 && self.deliveries.is_empty() && self.outbox.all()?.is_empty())
    }

    /// A unit finished on the executor: sign, commit to the outbox, deliver to the coordinator
    /// that assigned it if it is connected (`connected`).
    pub(crate) fn finished(
        &mut self,
        net: &mut Network,
        connected: &[PeerId],
        caps: &Capabilities,
        finished: Finished,
    ) -> Result<()> {
        self.busy = self.busy.saturating_sub(1);
        let (from, a) = (finished.from, finished.assignment);
        let online = connected.contains(&from);
        let output = match finished.output {
            Ok(output) => output,
            Err(reason) => {
                tracing::warn!(job = a.job, unit = a.unit, %reason, "unit refused");
                if online {
                    net.request(
                        &from,
                        WorkRequest::Refuse {
                            job: a.job,
                            unit: a.unit,
                            reason,
                        },
                    );
                }
                return Ok(());
            }
        };
        let class = caps
            .numeric_class
            .get(&a.task.family())
            .cloned()
            .unwrap_or_default();
        let body = ReceiptBody {
            subject: Subject::Unit {
                job: a.job,
                unit: a.unit,
            },
            model: a.model,
            input: input_digest(a.job, a.unit, &a.model, &a.task),
            output: output.digest(),
            numeric_class: class,
        };
        let receipt = Receipt::sign(&self.key, body);
        #[cfg(feature = "fault-injection")]
        let (receipt, output) = self.inject(receipt, output);
        let pending = Pending {
            job: a.job,
            unit: a.unit,
            receipt,
            output,
        };
        self.outbox.put(&from, &pending)?;
        if online {
            self.send(net, Some(from), from, pending);
        } else {
            tracing::info!(
                job = a.job,
                unit = a.unit,
                coordinator = %from,
                "its coordinator is not connected; result kept in the outbox"
            );
        }
        Ok(())
    }

    /// The answer to one of our requests.
    pub(crate) fn response(
        &mut self,
        id: RequestId,
        response: std::result::Result<WorkResponse, String>,
    ) -> Result<()> {
        let asked = self
            .asks
            .iter_mut()
            .find(|(_, a)| a.fetch.is_some_and(|(fetch, _)| fetch == id));
        if let Some((&from, asking)) = asked {
            let (_, sent) = asking.fetch.take().expect("found by it");
            let retry = |asking: &mut Asking| asking.next_fetch = Instant::now() + FETCH_RETRY;
            match response {
                // A fetch held by the coordinator may be answered after the node paused: hand
                // those units back at once rather than take the machine from its owner.
                Ok(WorkResponse::Assign(units)) if self.paused => {
                    self.refusals
                        .extend(units.iter().map(|a| (from, a.job, a.unit, PAUSED)));
                }
                Ok(WorkResponse::Assign(units)) if !units.is_empty() => {
                    for assignment in units {
                        if self.busy >= self.slots {
                            tracing::debug!(job = assignment.job, unit = assignment.unit, coordinator = %from, "assigned past the node's slots; handed back");
                            self.refusals
                                .push((from, assignment.job, assignment.unit, FULL));
                            continue;
                        }
                        tracing::debug!(job = assignment.job, unit = assignment.unit, coordinator = %from, "assigned");
                        self.busy += 1;
                        if self.executor.try_send((from, assignment)).is_err() {
                            self.busy -= 1;
                            tracing::warn!(
                                "executor queue full; unit dropped (it will be reassigned)"
                            );
                        }
                    }
                }
                // Answered empty at once (the coordinator has not heard our advert yet): wait a
                // moment rather than ask again in a loop. Empty after a held request: ask again.
                Ok(WorkResponse::Assign(_)) => {
                    if sent.elapsed() < FETCH_RETRY {
                        retry(asking);
                    }
                }
                Ok(other) => {
                    tracing::debug!(?other, "unexpected answer to a fetch");
                    retry(asking);
                }
                Err(error) => {
                    tracing::debug!(%error, "fetch failed; retrying");
                    retry(asking);
                }
            }
            return Ok(());
        }
        let Some(d) = self.deliveries.remove(&id) else {
            return Ok(());
        };
        let (job, unit) = (d.job, d.unit);
        match response {
            Ok(WorkResponse::Ack) => {
                tracing::info!(job, unit, "result acknowledged");
                self.outbox.remove(d.owed.as_ref(), job, unit)?;
                #[cfg(feature = "fault-injection")]
                self.count_delivery();
            }
            Ok(WorkResponse::Rejected(reason)) => {
                tracing::warn!(job, unit, %reason, "result rejected by the coordinator");
                self.outbox.remove(d.owed.as_ref(), job, unit)?;
                #[cfg(feature = "fault-injection")]
                self.count_delivery();
            }
            Ok(
                WorkResponse::Assign(_)
                | WorkResponse::Forwarded { .. }
                | WorkResponse::Kept(_)
                | WorkResponse::Checked { .. }
                | WorkResponse::Prepared { .. }
                | WorkResponse::Weights { .. },
            ) => {}
            Err(error) => {
                tracing::info!(job, unit, %error, "delivery failed; result kept in the outbox");
                if let Some(asking) = self.asks.get_mut(&d.to) {
                    asking.next_redeliver = Instant::now() + REDELIVER_INTERVAL;
                }
            }
        }
        Ok(())
    }

    /// How long the loop may sleep before [`Worker::poll`] has something to do.
    pub(crate) fn poll_interval() -> Duration {
        Duration::from_millis(200)
    }
}

#[cfg(feature = "fault-injection")]
impl Worker {
    /// Misbehave as `--fault` says: the swarm must catch each of these.
    fn inject(&mut self, receipt: Receipt, output: UnitOutput) -> (Receipt, UnitOutput) {
        match self.fault {
            Some(Fault::WrongOutput) => {
                let output = match output {
                    UnitOutput::Embeddings(mut vectors) => {
                        for v in &mut vectors {
                            if let Some(x) = v.first_mut() {
                                *x += 0.01;
                            }
                        }
                        UnitOutput::Embeddings(vectors)
                    }
                    UnitOutput::Completions(mut completions) => {
                        for c in &mut completions {
                            if let Some(t) = c.token_ids.last_mut() {
                                *t = t.wrapping_add(1) % 49_152;
                            }
                        }
                        UnitOutput::Completions(completions)
                    }
                };
                // Signed honestly over the wrong numbers: plausible, and only replicas can tell.
                let mut body = receipt.body;
                body.output = output.digest();
                (Receipt::sign(&self.key, body), output)
            }
            Some(Fault::BadSignature) => {
                let mut receipt = receipt;
                receipt.signature.0[0] ^= 0x01;
                (receipt, output)
            }
            Some(Fault::Replay) => match self.last.replace((receipt.clone(), output.clone())) {
                Some(old) => old,
                None => (receipt, output),
            },
            // `slow` is the executor's delay; `crash-after` acts on acknowledgements; `flood`
            // acts when asking for work.
            Some(
                Fault::Slow
                | Fault::CrashAfter(_)
                | Fault::Flood
                | Fault::Delay(_)
                | Fault::CorruptWeights,
            )
            | None => (receipt, output),
        }
    }

    fn count_delivery(&mut self) {
        self.delivered += 1;
        if let Some(Fault::CrashAfter(n)) = self.fault
            && self.delivered >= n
        {
            tracing::warn!(delivered = self.delivered, "fault injection: crashing now");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::Digest;

    fn pending(key: &SecretKey, job: u64, unit: u64, value: f32) -> Pending {
        let output = UnitOutput::Embeddings(vec![vec![value]]);
        let body = ReceiptBody {
            subject: Subject::Unit { job, unit },
            model: ModelId(Digest([1; 32])),
            input: Digest([2; 32]),
            output: output.digest(),
            numeric_class: Default::default(),
        };
        Pending {
            job,
            unit,
            receipt: Receipt::sign(key, body),
            output,
        }
    }

    /// Two swarms number their jobs alike: the same (job, unit) owed to two coordinators is two
    /// entries, and acknowledging one leaves the other. An entry from before outboxes were kept
    /// per coordinator is still read, owed to whichever coordinator comes first.
    #[test]
    fn the_outbox_keeps_each_coordinators_results_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::from_bytes(&[3; 32]);
        let a = SecretKey::from_bytes(&[4; 32]).public().peer_id();
        let b = SecretKey::from_bytes(&[5; 32]).public().peer_id();
        let outbox = Outbox::open(dir.path()).expect("open");
        outbox.put(&a, &pending(&key, 1, 0, 0.5)).expect("put");
        outbox.put(&b, &pending(&key, 1, 0, 0.25)).expect("put");
        let legacy = pending(&key, 7, 3, 1.0);
        let tx = outbox.db.begin_write().expect("write");
        tx.open_table(OUTBOX_LEGACY)
            .expect("table")
            .insert(
                (7, 3),
                postcard::to_stdvec(&legacy).expect("encode").as_slice(),
            )
            .expect("insert");
        tx.commit().expect("commit");

        let owed = |outbox: &Outbox| -> Vec<(Option<PeerId>, u64, u64)> {
            let mut all: Vec<_> = outbox
                .all()
                .expect("all")
                .into_iter()
                .map(|o| (o.to, o.pending.job, o.pending.unit))
                .collect();
            all.sort_by_key(|(to, job, unit)| (to.map(|p| p.to_string()), *job, *unit));
            all
        };
        let mut want = vec![(Some(a), 1, 0), (Some(b), 1, 0), (None, 7, 3)];
        want.sort_by_key(|(to, job, unit)| (to.map(|p| p.to_string()), *job, *unit));
        assert_eq!(owed(&outbox), want);
        let by_b = outbox.all().expect("all");
        let value = by_b
            .iter()
            .find(|o| o.to == Some(b))
            .map(|o| o.pending.output.clone());
        assert_eq!(value, Some(UnitOutput::Embeddings(vec![vec![0.25]])));

        outbox.remove(Some(&a), 1, 0).expect("remove");
        outbox.remove(None, 7, 3).expect("remove");
        drop(outbox);
        let reopened = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(owed(&reopened), vec![(Some(b), 1, 0)]);
    }
}
