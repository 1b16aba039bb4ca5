//! The journal: every state change of sharded jobs, in redb, committed before anything is
//! acknowledged.
//!
//! The scheduler is deterministic, so the journal records its *inputs* (in order, with their
//! times) and rebuilds its state after a crash by replaying them. Beside the log it keeps what the
//! scheduler never sees: each job's payload (ids and texts) and each delivered output with its
//! receipt. Decisions are recorded too, as facts (`Accepted`), the first time they are made; a replay
//! that re-derives a decision finds its fact and writes nothing, so each accepted unit appears in
//! the log exactly once (`hearth coordinator journal` prints it).
//!
//! | table     | key                 | value |
//! |-----------|---------------------|-------|
//! | `log`     | sequence number     | [`Entry`] (postcard) |
//! | `jobs`    | job id              | [`JobPayload`] (postcard) |
//! | `outputs` | (job, unit, peer)   | [`StoredOutput`] (postcard) |
//! | `meta`    | name                | `secret`: the [`Secret`] behind every random check |
//!
//! Commits run on a thread of their own ([group commit](Journal::submit)): the event loop hands
//! each batch over and goes on; everything handed over while one commit runs goes into the next
//! one. A batch's [`Ticket`] says when it is durable ([`Journal::committed`]); whatever
//! acknowledges its facts waits for that.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use hearth_protocol::work::{Task, UnitOutput};
use hearth_protocol::{ModelId, PeerId, Receipt};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::scheduler::Input;
use crate::{Error, Result};

/// The journal's file in the coordinator's data folder.
pub const JOURNAL_FILE: &str = "journal.redb";

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const OUTPUTS: TableDefinition<(u64, u64, &[u8]), &[u8]> = TableDefinition::new("outputs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_SECRET: &str = "secret";
/// Meta key: the last [`Ticket`] committed, in the same transaction as its batch, so a reader
/// knows exactly which batches its snapshot holds.
const META_TICKET: &str = "ticket";

/// The coordinator's secret: 32 bytes drawn from the OS when its journal is made, kept in it, and
/// never sent anywhere. Every random choice that matters for trust (which units are spot-checked,
/// which pipeline windows are replayed and by whom) is drawn from a generator seeded by a key
/// derived from it, so no peer can predict them, and a coordinator restarted from its journal
/// replays the same draws.
#[derive(Clone)]
pub struct Secret {
    key: [u8; 32],
    /// The journal was begun by a version that seeded spot checks with a public constant: its
    /// log replays only with that seed, so the scheduler keeps it for this journal.
    legacy: bool,
}

/// Meta key marking a journal begun before it had a secret.
const META_LEGACY: &str = "legacy-spot-checks";

/// The spot-check seed every coordinator used before journals had a secret.
const LEGACY_SPOT_CHECK_SEED: u64 = 0x4845_4152_5448;

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// The scheduler's spot-check seed ([`crate::Policy::seed`]).
    pub fn spot_checks(&self) -> u64 {
        if self.legacy {
            return LEGACY_SPOT_CHECK_SEED;
        }
        self.seed("hearth scheduler spot checks", &[])
    }

    /// The key of the registry's table of peers ([`hearth_core::Registry::new`]).
    pub fn registry(&self) -> u64 {
        self.seed("hearth registry table", &[])
    }

    /// The seed of pipeline session `session`'s driver (which windows it samples, which peers
    /// verify them) in the coordinator's run `run`. Sessions do not outlive their coordinator's
    /// process (a restart ends them), so each run draws a fresh `run` from the OS and session ids,
    /// which start again at 1, never reuse a seed.
    pub fn session(&self, run: u64, session: u64) -> u64 {
        self.seed("hearth pipeline session checks", &[run, session])
    }

    /// A seed for the purpose named by `context`, about `ids`: a keyed BLAKE3 of both, so seeds for
    /// different purposes or ids tell nothing about one another or about the secret.
    fn seed(&self, context: &str, ids: &[u64]) -> u64 {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(context.as_bytes());
        hasher.update(&[0]);
        for id in ids {
            hasher.update(&id.to_le_bytes());
        }
        let bytes = hasher.finalize();
        u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 of 32 bytes"))
    }
}

/// What a job computes, beyond what the scheduler knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// `hearth embed`.
    Embed,
    /// `hearth batch generate`.
    Generate {
        /// Tokens per prompt.
        max_tokens: u32,
    },
}

/// A job as submitted: ids, texts and how they were cut into units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPayload {
    /// The job id.
    pub id: u64,
    /// What it computes.
    pub kind: JobKind,
    /// The model.
    pub model: ModelId,
    /// Input ids, in order.
    pub ids: Vec<String>,
    /// Input texts, in order.
    pub texts: Vec<String>,
    /// Inputs per unit (the last unit may hold fewer).
    pub unit_size: u32,
    /// Input indices in unit order: unit `u` holds `order[u * unit_size..]`, up to `unit_size` of
    /// them. Inputs are ordered by length (stably), as sentence-transformers orders a batch, so a
    /// unit's texts are alike in length and a node can batch them without padding.
    pub order: Vec<u32>,
    /// Replicas asked for, if any.
    pub replicas: Option<u32>,
    /// When it was submitted (ms since the Unix epoch).
    pub submitted_ms: u64,
}

impl JobPayload {
    /// Units in the job.
    pub fn units(&self) -> u64 {
        (self.texts.len() as u64).div_ceil(u64::from(self.unit_size.max(1)))
    }

    /// The order that puts inputs of like length together: indices sorted by byte length, stably.
    pub fn order_by_length(texts: &[String]) -> Vec<u32> {
        let mut order: Vec<u32> = (0..texts.len() as u32).collect();
        order.sort_by_key(|&i| texts[i as usize].len());
        order
    }

    /// Input indices of unit `unit`, in the unit's order.
    pub fn inputs(&self, unit: u64) -> &[u32] {
        let size = self.unit_size.max(1) as usize;
        let start = (unit as usize).saturating_mul(size).min(self.order.len());
        &self.order[start..(start + size).min(self.order.len())]
    }

    /// The task of unit `unit`.
    pub fn task(&self, unit: u64) -> Task {
        let texts = self
            .inputs(unit)
            .iter()
            .map(|&i| self.texts[i as usize].clone())
            .collect();
        match self.kind {
            JobKind::Embed => Task::Embed { texts },
            JobKind::Generate { max_tokens } => Task::Generate {
                prompts: texts,
                max_tokens,
            },
        }
    }
}

/// A delivered result, kept until the job is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredOutput {
    /// The receipt it came with.
    pub receipt: Receipt,
    /// The output.
    pub output: UnitOutput,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When (ms since the Unix epoch).
    pub now_ms: u64,
    /// What.
    pub record: Record,
}

/// What a log entry records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// An input the scheduler handled.
    Input(Input),
    /// A unit was accepted with `peer`'s output: a fact, written once.
    Accepted {
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// Whose output.
        peer: PeerId,
    },
}

/// Writes to commit together.
#[derive(Default, Clone, Debug, Serialize, Deserialize)]
pub struct Batch {
    entries: Vec<Entry>,
    job: Option<JobPayload>,
    output: Option<(u64, u64, PeerId, StoredOutput)>,
}

impl Batch {
    /// Append a log entry.
    pub fn entry(&mut self, now_ms: u64, record: Record) -> &mut Self {
        self.entries.push(Entry { now_ms, record });
        self
    }

    /// Store a job's payload.
    pub fn job(&mut self, job: JobPayload) -> &mut Self {
        self.job = Some(job);
        self
    }

    /// Store a delivered output.
    pub fn output(&mut self, job: u64, unit: u64, peer: PeerId, output: StoredOutput) -> &mut Self {
        self.output = Some((job, unit, peer, output));
        self
    }

    /// The delivered output it stores, if any.
    pub fn stored_output(&self) -> Option<&(u64, u64, PeerId, StoredOutput)> {
        self.output.as_ref()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.job.is_none() && self.output.is_none()
    }
}

/// A coordinator group leader's commit: hands batches to Raft, returns once they are applied.
pub(crate) type Commit = Box<dyn FnMut(Vec<(Ticket, Batch)>) -> Result<()> + Send>;

/// The place of a batch in commit order: batch `n` is durable once [`Journal::committed`] is at
/// least `n`. Tickets start at 1; 0 means "nothing yet".
pub type Ticket = u64;

/// The open journal: reads on the caller's thread, writes on the committer's.
pub struct Journal {
    db: Arc<Database>,
    path: PathBuf,
    secret: Secret,
    /// Batches to the committer, at most [`JOURNAL_QUEUE_MAX`] waiting; `None` once closed.
    batches: Option<mpsc::SyncSender<(Ticket, Batch)>>,
    committer: Option<std::thread::JoinHandle<()>>,
    progress: Arc<Progress>,
    /// The last ticket handed out.
    submitted: Ticket,
}

/// How far the committer has come, shared with it.
struct Progress {
    state: Mutex<Committed>,
    /// For threads that wait ([`Journal::flush`]).
    changed: Condvar,
    /// For the event loop ([`Journal::notified`]).
    notify: tokio::sync::Notify,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Committed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Committed {
    upto: Ticket,
    failed: Option<String>,
    /// Transactions committed since the journal was opened.
    transactions: u64,
}

/// The committer's half: the database and the next sequence number of the log.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    next_seq: u64,
}

impl Writer {
    /// Write `batches` in one transaction, in order.
    fn commit(&mut self, batches: &[(Ticket, Batch)]) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| db_error(&self.path, e);
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        self.next_seq = write_batches(&tx, &self.path, Some(self.next_seq), batches)?;
        tx.commit().map_err(|e| err(&e))
    }

    /// The committer thread: take a batch, then everything else already waiting, commit them
    /// together, say so; until the journal is closed or a commit fails (then nothing more is
    /// written: the coordinator stops).
    fn run(self, batches: mpsc::Receiver<(Ticket, Batch)>, progress: Arc<Progress>) {
        let mut writer = self;
        run_committer(batches, progress, move |group| writer.commit(&group));
    }
}

/// The committer thread's loop: take a batch, then everything else already waiting, `commit`
/// them together, say so; until the journal is closed or a commit fails.
fn run_committer(
    batches: mpsc::Receiver<(Ticket, Batch)>,
    progress: Arc<Progress>,
    mut commit: impl FnMut(Vec<(Ticket, Batch)>) -> Result<()>,
) {
    {
        while let Ok(first) = batches.recv() {
            let mut group = vec![first];
            group.extend(batches.try_iter().take(GROUP_COMMIT_BATCHES_MAX - 1));
            let last = group.last().map_or(0, |(ticket, _)| *ticket);
            let result = commit(group);
            let mut state = progress.lock();
            match result {
                Ok(()) => {
                    state.upto = last;
                    state.transactions += 1;
                }
                Err(error) => state.failed = Some(error.to_string()),
            }
            let failed = state.failed.is_some();
            drop(state);
            progress.changed.notify_all();
            progress.notify.notify_one();
            if failed {
                return;
            }
        }
    }
}

/// Write `batches` into `tx`, in order, the log's entries from sequence number `seq` on (`None`:
/// after the log's last); the next sequence number after them. A coordinator group's members
/// write what Raft committed through this too, in the transaction that records it applied.
pub(crate) fn write_batches(
    tx: &redb::WriteTransaction,
    path: &Path,
    seq: Option<u64>,
    batches: &[(Ticket, Batch)],
) -> Result<u64> {
    let err = |e: &dyn std::fmt::Display| db_error(path, e);
    let mut seq = match seq {
        Some(seq) => seq,
        None => {
            let log = tx.open_table(LOG).map_err(|e| err(&e))?;
            let last = log.last().map_err(|e| err(&e))?;
            last.map_or(0, |(k, _)| k.value() + 1)
        }
    };
    {
        let mut log = tx.open_table(LOG).map_err(|e| err(&e))?;
        let mut jobs = tx.open_table(JOBS).map_err(|e| err(&e))?;
        let mut outputs = tx.open_table(OUTPUTS).map_err(|e| err(&e))?;
        for (_, batch) in batches {
            // The job first: a replay that meets its `Submit` entry finds its payload.
            if let Some(job) = &batch.job {
                let bytes = postcard::to_stdvec(job).map_err(|e| err(&e))?;
                jobs.insert(job.id, bytes.as_slice()).map_err(|e| err(&e))?;
            }
            for entry in &batch.entries {
                let bytes = postcard::to_stdvec(entry).map_err(|e| err(&e))?;
                log.insert(seq, bytes.as_slice()).map_err(|e| err(&e))?;
                seq += 1;
            }
            if let Some((job, unit, peer, output)) = &batch.output {
                let bytes = postcard::to_stdvec(output).map_err(|e| err(&e))?;
                let key = peer.to_multihash_bytes();
                outputs
                    .insert((*job, *unit, key.as_slice()), bytes.as_slice())
                    .map_err(|e| err(&e))?;
            }
        }
    }
    if let Some((last, _)) = batches.last() {
        let mut meta = tx.open_table(META).map_err(|e| err(&e))?;
        meta.insert(META_TICKET, last.to_le_bytes().as_slice())
            .map_err(|e| err(&e))?;
    }
    Ok(seq)
}

/// Store `secret` as the journal's, in `tx`: a coordinator group's members all keep the secret the
/// group was founded with, so whichever leads draws the same checks.
pub(crate) fn write_secret(
    tx: &redb::WriteTransaction,
    path: &Path,
    secret: &[u8; 32],
) -> Result<()> {
    let mut meta = tx.open_table(META).map_err(|e| db_error(path, e))?;
    meta.insert(META_SECRET, secret.as_slice())
        .map_err(|e| db_error(path, e))?;
    Ok(())
}

/// At most this many batches go into one commit, so one transaction stays bounded however far
/// the committer fell behind.
pub const GROUP_COMMIT_BATCHES_MAX: usize = 4_096;

/// At most this many batches wait for the committer. Past it, handing one over waits (the event
/// loop slows to the disk's pace) rather than holding ever more in memory.
pub const JOURNAL_QUEUE_MAX: usize = 2 * GROUP_COMMIT_BATCHES_MAX;

fn db_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Journal {
        path: path.into(),
        message: error.to_string(),
    }
}

impl Journal {
    /// Open (or create) the journal in `data_dir`. A new journal gets a [`Secret`] drawn from the
    /// OS, committed before anything else can be.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(JOURNAL_FILE);
        let db = Database::create(&path).map_err(|e| db_error(&path, e))?;
        Self::start(Arc::new(db), path, None)
    }

    /// The journal of a coordinator group's leader, in the database its Raft state shares:
    /// `commit` hands each group of batches to Raft and returns once a quorum has them and this
    /// member applied them (through [`write_batches`]). Its secret is the group's, applied from
    /// the log; a journal without one is refused.
    pub(crate) fn replicated(db: Arc<Database>, path: PathBuf, commit: Commit) -> Result<Self> {
        {
            let tx = db.begin_read().map_err(|e| db_error(&path, e))?;
            let has_secret = match tx.open_table(META) {
                Ok(meta) => meta
                    .get(META_SECRET)
                    .map_err(|e| db_error(&path, e))?
                    .is_some(),
                Err(_) => false,
            };
            if !has_secret {
                return Err(db_error(
                    &path,
                    "the group's secret has not been applied yet",
                ));
            }
        }
        Self::start(db, path, Some(commit))
    }

    fn start(db: Arc<Database>, path: PathBuf, replicated: Option<Commit>) -> Result<Self> {
        let tx = db.begin_write().map_err(|e| db_error(&path, e))?;
        let ticket;
        let (next_seq, secret) = {
            tx.open_table(JOBS).map_err(|e| db_error(&path, e))?;
            tx.open_table(OUTPUTS).map_err(|e| db_error(&path, e))?;
            let log = tx.open_table(LOG).map_err(|e| db_error(&path, e))?;
            let last = log.last().map_err(|e| db_error(&path, e))?;
            let mut meta = tx.open_table(META).map_err(|e| db_error(&path, e))?;
            let stored = meta
                .get(META_SECRET)
                .map_err(|e| db_error(&path, e))?
                .map(|v| <[u8; 32]>::try_from(v.value()));
            let secret = match stored {
                Some(Ok(bytes)) => bytes,
                Some(Err(_)) => return Err(db_error(&path, "its secret is not 32 bytes")),
                None => {
                    let mut bytes = [0u8; 32];
                    getrandom::fill(&mut bytes)
                        .map_err(|e| db_error(&path, format!("no OS randomness: {e}")))?;
                    meta.insert(META_SECRET, bytes.as_slice())
                        .map_err(|e| db_error(&path, e))?;
                    if last.is_some() {
                        meta.insert(META_LEGACY, [1u8].as_slice())
                            .map_err(|e| db_error(&path, e))?;
                    }
                    bytes
                }
            };
            ticket = read_ticket(&meta, &path)?;
            let legacy = meta
                .get(META_LEGACY)
                .map_err(|e| db_error(&path, e))?
                .is_some();
            if legacy {
                tracing::warn!(path = %path.display(), "journal begun by an older version: its spot checks keep the old public seed (predictable by peers) so its log replays; a new data folder gets a secret one");
            }
            (
                last.map_or(0, |(k, _)| k.value() + 1),
                Secret {
                    key: secret,
                    legacy,
                },
            )
        };
        tx.commit().map_err(|e| db_error(&path, e))?;
        let progress = Arc::new(Progress {
            state: Mutex::new(Committed {
                upto: ticket,
                failed: None,
                transactions: 0,
            }),
            changed: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        });
        let writer = Writer {
            db: db.clone(),
            path: path.clone(),
            next_seq,
        };
        let (batches, receiver) = mpsc::sync_channel(JOURNAL_QUEUE_MAX);
        let shared = progress.clone();
        let committer = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || match replicated {
                Some(commit) => run_committer(receiver, shared, commit),
                None => writer.run(receiver, shared),
            })
            .map_err(|e| db_error(&path, format!("no committer thread: {e}")))?;
        Ok(Self {
            db,
            path,
            secret,
            batches: Some(batches),
            committer: Some(committer),
            progress,
            submitted: ticket,
        })
    }

    /// The secret behind this coordinator's random checks.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Hand `batch` to the committer and go on; `None` when there is nothing to write. Only once
    /// [`Self::committed`] reaches the ticket may its effects be acknowledged.
    pub fn submit(&mut self, batch: Batch) -> Result<Option<Ticket>> {
        if batch.is_empty() {
            return Ok(None);
        }
        self.committed()?;
        let ticket = self.submitted + 1;
        let sent = self
            .batches
            .as_ref()
            .is_some_and(|batches| batches.send((ticket, batch)).is_ok());
        if !sent {
            return Err(db_error(&self.path, "its committer has stopped"));
        }
        self.submitted = ticket;
        Ok(Some(ticket))
    }

    /// The last ticket handed out (0 before any).
    pub fn submitted(&self) -> Ticket {
        self.submitted
    }

    /// The last ticket committed durably, or the error that stopped the committer.
    pub fn committed(&self) -> Result<Ticket> {
        let state = self.progress.lock();
        match &state.failed {
            Some(message) => Err(db_error(&self.path, message)),
            None => Ok(state.upto),
        }
    }

    /// Transactions committed since the journal was opened (each holds one or more batches).
    pub fn transactions(&self) -> u64 {
        self.progress.lock().transactions
    }

    /// Resolves when the committer has made progress (or failed) since it last resolved.
    pub fn notified(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let progress = self.progress.clone();
        async move { progress.notify.notified().await }
    }

    /// Block until everything submitted so far is durable.
    pub fn flush(&self) -> Result<()> {
        let mut state = self.progress.lock();
        while state.failed.is_none() && state.upto < self.submitted {
            state = self
                .progress
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        self.committed().map(drop)
    }

    /// Commit `batch` and wait until it is durable.
    pub fn commit(&mut self, batch: Batch) -> Result<()> {
        self.submit(batch)?;
        self.flush()
    }

    /// A read of one snapshot, with the last ticket the snapshot holds.
    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<(Ticket, T)> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let meta = tx.open_table(META).map_err(|e| self.fail(e))?;
        let ticket = read_ticket(&meta, &self.path)?;
        Ok((ticket, f(&tx)?))
    }

    /// The journal's error for `error`, naming its file.
    fn fail(&self, error: impl std::fmt::Display) -> Error {
        db_error(&self.path, error)
    }

    /// Every log entry, in order.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        self.entries_at().map(|(_, entries)| entries)
    }

    /// Every committed log entry, in order, and the last ticket they include.
    pub fn entries_at(&self) -> Result<(Ticket, Vec<Entry>)> {
        self.read(|tx| {
            let log = tx.open_table(LOG).map_err(|e| self.fail(e))?;
            let mut entries = Vec::new();
            for item in log.iter().map_err(|e| self.fail(e))? {
                let (_, value) = item.map_err(|e| self.fail(e))?;
                entries.push(postcard::from_bytes(value.value()).map_err(|e| self.fail(e))?);
            }
            Ok(entries)
        })
    }

    /// Every job's payload.
    pub fn jobs(&self) -> Result<Vec<JobPayload>> {
        let (_, jobs) = self.read(|tx| {
            let jobs = tx.open_table(JOBS).map_err(|e| self.fail(e))?;
            let mut out = Vec::new();
            for item in jobs.iter().map_err(|e| self.fail(e))? {
                let (_, value) = item.map_err(|e| self.fail(e))?;
                out.push(postcard::from_bytes(value.value()).map_err(|e| self.fail(e))?);
            }
            Ok(out)
        })?;
        Ok(jobs)
    }

    /// The outputs delivered for one unit, by peer.
    pub fn outputs(&self, job: u64, unit: u64) -> Result<Vec<(PeerId, StoredOutput)>> {
        self.outputs_at(job, unit).map(|(_, outputs)| outputs)
    }

    /// The committed outputs delivered for one unit, by peer, and the last ticket they include.
    pub fn outputs_at(&self, job: u64, unit: u64) -> Result<(Ticket, Vec<(PeerId, StoredOutput)>)> {
        self.read(|tx| {
            let outputs = tx.open_table(OUTPUTS).map_err(|e| self.fail(e))?;
            let low: (u64, u64, &[u8]) = (job, unit, &[]);
            let high: (u64, u64, &[u8]) = (job, unit + 1, &[]);
            let mut out = Vec::new();
            for item in outputs.range(low..high).map_err(|e| self.fail(e))? {
                let (key, value) = item.map_err(|e| self.fail(e))?;
                let peer = PeerId::from_multihash_bytes(key.value().2).map_err(|e| self.fail(e))?;
                let output = postcard::from_bytes(value.value()).map_err(|e| self.fail(e))?;
                out.push((peer, output));
            }
            Ok(out)
        })
    }
}

/// The last ticket committed, from the meta table (0 in a journal that has none yet).
fn read_ticket(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
) -> Result<Ticket> {
    match meta.get(META_TICKET).map_err(|e| db_error(path, e))? {
        None => Ok(0),
        Some(value) => <[u8; 8]>::try_from(value.value())
            .map(u64::from_le_bytes)
            .map_err(|_| db_error(path, "its ticket is not 8 bytes")),
    }
}

impl Drop for Journal {
    /// Close: the committer writes what it was handed, then stops.
    fn drop(&mut self) {
        self.batches = None;
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::{Digest, ReceiptBody, SecretKey, Subject};

    use super::*;

    #[test]
    fn what_is_committed_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::from_bytes(&[5; 32]);
        let peer = key.public().peer_id();
        let payload = JobPayload {
            id: 7,
            kind: JobKind::Embed,
            model: ModelId::of_bytes(b"m"),
            ids: vec!["a".into(), "b".into(), "c".into()],
            texts: vec!["xx".into(), "y".into(), "zzz".into()],
            unit_size: 2,
            order: JobPayload::order_by_length(&["xx".into(), "y".into(), "zzz".into()]),
            replicas: Some(2),
            submitted_ms: 1,
        };
        assert_eq!(payload.units(), 2);
        assert_eq!(payload.inputs(0), [1, 0], "shortest first");
        assert_eq!(payload.inputs(1), [2]);
        let output = UnitOutput::Embeddings(vec![vec![1.0]]);
        let stored = StoredOutput {
            receipt: Receipt::sign(
                &key,
                ReceiptBody {
                    subject: Subject::Unit { job: 7, unit: 1 },
                    model: payload.model,
                    input: Digest::of("i", b""),
                    output: output.digest(),
                    numeric_class: "c".into(),
                },
            ),
            output,
        };
        {
            let mut journal = Journal::open(dir.path()).expect("open");
            let mut batch = Batch::default();
            batch
                .job(payload.clone())
                .entry(5, Record::Input(Input::Tick));
            journal.commit(batch).expect("commit");
            let mut batch = Batch::default();
            batch.output(7, 1, peer, stored.clone()).entry(
                6,
                Record::Accepted {
                    job: 7,
                    unit: 1,
                    peer,
                },
            );
            journal.commit(batch).expect("commit");
        }
        let mut journal = Journal::open(dir.path()).expect("reopen");
        assert_eq!(journal.jobs().expect("jobs"), vec![payload]);
        let entries = journal.entries().expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].now_ms, 6);
        assert_eq!(
            journal.outputs(7, 1).expect("outputs"),
            vec![(peer, stored)]
        );
        assert!(journal.outputs(7, 0).expect("outputs").is_empty());
        let mut batch = Batch::default();
        batch.entry(9, Record::Input(Input::Cancel(7)));
        journal.commit(batch).expect("append after reopen");
        assert_eq!(journal.entries().expect("entries").len(), 3);
    }

    #[test]
    fn batches_handed_over_while_a_commit_runs_share_the_next_one_in_order() {
        const BATCHES: u64 = 2_000;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = Journal::open(dir.path()).expect("open");
        let mut last = 0;
        for n in 0..BATCHES {
            let mut batch = Batch::default();
            batch.entry(n, Record::Input(Input::Cancel(n)));
            last = journal.submit(batch).expect("submit").expect("a ticket");
        }
        assert_eq!(last, BATCHES);
        journal.flush().expect("flush");
        assert_eq!(journal.committed().expect("committed"), BATCHES);
        let (ticket, entries) = journal.entries_at().expect("entries");
        assert_eq!(ticket, BATCHES, "the snapshot says what it holds");
        let times: Vec<u64> = entries.iter().map(|e| e.now_ms).collect();
        assert_eq!(times, (0..BATCHES).collect::<Vec<_>>(), "all, in order");
        let transactions = journal.transactions();
        assert!(
            transactions < BATCHES / 2,
            "{transactions} transactions for {BATCHES} batches: no group commit"
        );
        // Tickets go on across a restart, so a reader's snapshot never looks older than it is.
        drop(journal);
        let mut journal = Journal::open(dir.path()).expect("reopen");
        assert_eq!(journal.committed().expect("committed"), BATCHES);
        let mut batch = Batch::default();
        batch.entry(0, Record::Input(Input::Tick));
        assert_eq!(journal.submit(batch).expect("submit"), Some(BATCHES + 1));
    }

    #[test]
    fn a_journal_begun_without_a_secret_keeps_the_seed_its_log_was_made_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = Journal::open(dir.path()).expect("open");
        assert_ne!(fresh.secret().spot_checks(), LEGACY_SPOT_CHECK_SEED);
        let mut journal = fresh;
        let mut batch = Batch::default();
        batch.entry(1, Record::Input(Input::Tick));
        journal.commit(batch).expect("commit");
        // What an older version left: a log, and no secret.
        let tx = journal.db.begin_write().expect("write");
        tx.open_table(META)
            .expect("meta")
            .remove(META_SECRET)
            .expect("remove");
        tx.commit().expect("commit");
        drop(journal);
        let old = Journal::open(dir.path()).expect("reopen");
        assert_eq!(old.secret().spot_checks(), LEGACY_SPOT_CHECK_SEED);
        drop(old);
        let again = Journal::open(dir.path()).expect("reopen again");
        assert_eq!(again.secret().spot_checks(), LEGACY_SPOT_CHECK_SEED, "kept");
    }
}
