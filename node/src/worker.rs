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

const OUTBOX: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("outbox");

/// A finished result waiting for the coordinator's acknowledgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    job: u64,
    unit: u64,
    receipt: Receipt,
    output: UnitOutput,
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
        tx.commit().map_err(|e| outbox_error(&path, e))?;
        Ok(Self { db, path })
    }

    fn put(&self, pending: &Pending) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| outbox_error(&self.path, e);
        let bytes = postcard::to_stdvec(pending).map_err(|e| err(&e))?;
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(OUTBOX)
            .map_err(|e| err(&e))?
            .insert((pending.job, pending.unit), bytes.as_slice())
            .map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))
    }

    fn remove(&self, job: u64, unit: u64) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| outbox_error(&self.path, e);
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(OUTBOX)
            .map_err(|e| err(&e))?
            .remove((job, unit))
            .map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))
    }

    fn all(&self) -> Result<Vec<Pending>> {
        let err = |e: &dyn std::fmt::Display| outbox_error(&self.path, e);
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let table = tx.open_table(OUTBOX).map_err(|e| err(&e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| err(&e))? {
            let (_, value) = item.map_err(|e| err(&e))?;
            match postcard::from_bytes(value.value()) {
                Ok(pending) => out.push(pending),
                Err(error) => tracing::warn!(%error, "unreadable outbox entry skipped"),
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
) -> std::sync::mpsc::SyncSender<Assignment> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Assignment>(EXECUTOR_QUEUE_MAX);
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
            while let Ok(assignment) = rx.recv() {
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
                    .blocking_send(Finished { assignment, output })
                    .is_err()
                {
                    break;
                }
            }
        })
        .expect("the executor thread starts");
    tx
}

/// The work half of the node's loop.
pub(crate) struct Worker {
    key: SecretKey,
    outbox: Outbox,
    executor: std::sync::mpsc::SyncSender<Assignment>,
    /// Units handed to the executor and not finished.
    busy: usize,
    slots: usize,
    /// Shutting down: ask for no more work; finish what is held and deliver the outbox.
    draining: bool,
    /// `--idle-only` and the host's owner is busy: ask for no more work for now.
    pub(crate) paused: bool,
    /// Units assigned while paused, to hand back at the next poll.
    refusals: Vec<(u64, u64)>,
    /// The request for work in flight, and when it was sent.
    fetch: Option<(RequestId, Instant)>,
    next_fetch: Instant,
    /// Deliveries awaiting their answer: the unit, and when it was sent.
    deliveries: BTreeMap<RequestId, (u64, u64, Instant)>,
    next_redeliver: Instant,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
    #[cfg(feature = "fault-injection")]
    delivered: u32,
    #[cfg(feature = "fault-injection")]
    last: Option<(Receipt, UnitOutput)>,
}

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
        let now = Instant::now();
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
                fetch: None,
                next_fetch: now,
                deliveries: BTreeMap::new(),
                next_redeliver: now,
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

    /// Ask for work and redeliver the outbox when there is room and a coordinator to ask.
    pub(crate) fn poll(&mut self, net: &mut Network, coordinator: Option<PeerId>) -> Result<()> {
        let Some(coordinator) = coordinator else {
            return Ok(());
        };
        #[cfg(feature = "fault-injection")]
        if self.fault == Some(Fault::Flood) {
            for _ in 0..200 {
                net.request(&coordinator, WorkRequest::Fetch { slots: 1 });
            }
            return Ok(());
        }
        for (job, unit) in self.refusals.drain(..) {
            net.request(
                &coordinator,
                WorkRequest::Refuse {
                    job,
                    unit,
                    reason: "paused: the host is busy with its owner's work".into(),
                },
            );
        }
        let now = Instant::now();
        // The work protocol waits long for answers (a pipeline stage's long prefill); requests to
        // the coordinator are not left hanging that long: past ANSWER_WAIT they are asked again
        // (a late answer to the old one is then ignored; its units are reassigned).
        if self
            .fetch
            .is_some_and(|(_, sent)| now.duration_since(sent) > ANSWER_WAIT)
        {
            tracing::debug!("no answer to a request for work; asking again");
            self.fetch = None;
        }
        self.deliveries
            .retain(|_, (_, _, sent)| now.duration_since(*sent) <= ANSWER_WAIT);
        if !self.draining
            && !self.paused
            && self.fetch.is_none()
            && self.busy < self.slots
            && now >= self.next_fetch
        {
            let slots = (self.slots - self.busy) as u32;
            let id = net.request(&coordinator, WorkRequest::Fetch { slots });
            self.fetch = Some((id, now));
        }
        if self.deliveries.is_empty() && now >= self.next_redeliver {
            self.next_redeliver = now + REDELIVER_INTERVAL;
            for pending in self.outbox.all()? {
                self.send(net, &coordinator, pending);
            }
        }
        Ok(())
    }

    fn send(&mut self, net: &mut Network, coordinator: &PeerId, pending: Pending) {
        let (job, unit) = (pending.job, pending.unit);
        if self
            .deliveries
            .values()
            .any(|&(j, u, _)| (j, u) == (job, unit))
        {
            return;
        }
        let id = net.request(
            coordinator,
            WorkRequest::Deliver {
                job,
                unit,
                receipt: pending.receipt,
                output: pending.output.canonical(),
            },
        );
        self.deliveries.insert(id, (job, unit, Instant::now()));
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

    /// A unit finished on the executor: sign, commit to the outbox, deliver.
    pub(crate) fn finished(
        &mut self,
        net: &mut Network,
        coordinator: Option<PeerId>,
        caps: &Capabilities,
        finished: Finished,
    ) -> Result<()> {
        self.busy = self.busy.saturating_sub(1);
        let a = finished.assignment;
        let output = match finished.output {
            Ok(output) => output,
            Err(reason) => {
                tracing::warn!(job = a.job, unit = a.unit, %reason, "unit refused");
                if let Some(coordinator) = coordinator {
                    net.request(
                        &coordinator,
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
        self.outbox.put(&pending)?;
        match coordinator {
            Some(coordinator) => self.send(net, &coordinator, pending),
            None => tracing::info!(
                job = a.job,
                unit = a.unit,
                "no coordinator connected; result kept in the outbox"
            ),
        }
        Ok(())
    }

    /// The answer to one of our requests.
    pub(crate) fn response(
        &mut self,
        id: RequestId,
        response: std::result::Result<WorkResponse, String>,
    ) -> Result<()> {
        if let Some((fetch, sent)) = self.fetch
            && fetch == id
        {
            self.fetch = None;
            match response {
                // A fetch held by the coordinator may be answered after the node paused: hand
                // those units back at once rather than take the machine from its owner.
                Ok(WorkResponse::Assign(units)) if self.paused => {
                    self.refusals.extend(units.iter().map(|a| (a.job, a.unit)));
                }
                Ok(WorkResponse::Assign(units)) if !units.is_empty() => {
                    for assignment in units {
                        tracing::debug!(job = assignment.job, unit = assignment.unit, "assigned");
                        self.busy += 1;
                        if self.executor.try_send(assignment).is_err() {
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
                        self.next_fetch = Instant::now() + FETCH_RETRY;
                    }
                }
                Ok(other) => {
                    tracing::debug!(?other, "unexpected answer to a fetch");
                    self.next_fetch = Instant::now() + FETCH_RETRY;
                }
                Err(error) => {
                    tracing::debug!(%error, "fetch failed; retrying");
                    self.next_fetch = Instant::now() + FETCH_RETRY;
                }
            }
            return Ok(());
        }
        let Some((job, unit, _)) = self.deliveries.remove(&id) else {
            return Ok(());
        };
        match response {
            Ok(WorkResponse::Ack) => {
                tracing::info!(job, unit, "result acknowledged");
                self.outbox.remove(job, unit)?;
                #[cfg(feature = "fault-injection")]
                self.count_delivery();
            }
            Ok(WorkResponse::Rejected(reason)) => {
                tracing::warn!(job, unit, %reason, "result rejected by the coordinator");
                self.outbox.remove(job, unit)?;
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
                self.next_redeliver = Instant::now() + REDELIVER_INTERVAL;
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
