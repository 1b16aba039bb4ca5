//! The node's side of pipelined inference: it serves whatever layer ranges the coordinator asks
//! for, loading only those layers, keeping a KV cache per session, and signing each step.
//!
//! Steps run on their own thread (a step is milliseconds; a sharded unit may be seconds, and must
//! not hold a pipeline up). The loop hands a step over with a key and gets the answer back with the
//! same key, so it can reply on the request's channel.

mod cache;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use candle_core::Tensor;
use hearth_kernels::{GgufModel, Stage, StageInput, StageOutput};
use hearth_protocol::work::{Forward, StageData, StageResult, TOP_LOGITS_MAX, WorkResponse};
use hearth_protocol::{ModelId, Receipt, ReceiptBody, SecretKey, Subject};
use tokio::sync::mpsc;

#[cfg(feature = "fault-injection")]
use crate::Fault;
use crate::limits::{
    STAGE_BATCH_MAX, STAGE_BATCH_ROWS_MAX, STAGE_CACHE_BYTES_MAX, STAGE_QUEUE_MAX,
};
use cache::Cache;

/// What the loop asks of the stage thread.
pub(crate) enum StageJob {
    /// Run a step; answer with this key (keys increase with every step the loop queues).
    Forward(u64, Box<Forward>),
    /// Wake up: a session was ended ([`Ends`]).
    End,
}

/// Sessions ended by their coordinator, shared by the event loop (which records each end at once,
/// with the key of the next step it will queue) and the stage thread (which frees the session
/// before its next job, and refuses the session's steps queued before the end). So a session that
/// ends stops costing the node at once, not after every step queued for it has run.
#[derive(Debug, Default)]
pub(crate) struct Ends {
    /// Session → the first step key queued after it ended.
    ended: std::sync::Mutex<HashMap<u64, u64>>,
}

impl Ends {
    /// `session` ended; steps queued from now get keys from `next_key` on.
    pub(crate) fn end(&self, session: u64, next_key: u64) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.insert(session, next_key);
    }

    fn take(&self) -> HashMap<u64, u64> {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *ended)
    }
}

/// A loaded range of one model's layers.
type RangeKey = (ModelId, u32, u32);

/// Models held in part (fetched from peers), shared with the event loop that fetches them.
pub(crate) type Partials = std::sync::Arc<std::sync::Mutex<HashMap<ModelId, crate::prepare::Held>>>;

struct Server {
    key: SecretKey,
    class: String,
    models: HashMap<ModelId, PathBuf>,
    partials: Partials,
    stages: HashMap<RangeKey, Stage>,
    /// `--max-memory`: bytes the loaded ranges may take, about.
    max_memory: Option<u64>,
    /// What is loaded and used when: the eviction decisions.
    cache: Cache<RangeKey>,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
}

impl Server {
    fn stage(&mut self, f: &Forward, now_ms: u64) -> Result<&mut Stage, String> {
        let key = (f.model, f.layers.0, f.layers.1);
        if !self.stages.contains_key(&key) {
            let model = match self.models.get(&f.model) {
                Some(path) => GgufModel::open(path).map_err(|e| e.to_string())?,
                None => {
                    // Held in part: only stages within a range fetched whole (every other byte
                    // of the file is a hole).
                    let held = self
                        .partials
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&f.model)
                        .cloned()
                        .ok_or_else(|| format!("model {} is not on this node", f.model))?;
                    if !crate::prepare::covers(&held.layers, f.layers) {
                        return Err(format!(
                            "layers {}..{} of model {} are not held here (held: {:?}); the coordinator prepares a stage before routing it",
                            f.layers.0, f.layers.1, f.model, held.layers
                        ));
                    }
                    GgufModel::open_as(&held.path, f.model).map_err(|e| e.to_string())?
                }
            };
            let path = model.path().to_path_buf();
            let (start, end) = (f.layers.0 as usize, f.layers.1 as usize);
            if start >= end || end > model.config.layers {
                return Err(format!(
                    "layers {start}..{end} are not a range of the model's {}",
                    model.config.layers
                ));
            }
            // What the range takes: the bytes of its tensors (its layers, and the embedding or
            // head an end holds), from the tensor table.
            let file = std::fs::metadata(&path).map_or(0, |m| m.len());
            let size = model
                .stage_ranges(file, start..end)
                .iter()
                .map(|r| r.end - r.start)
                .sum::<u64>()
                .saturating_sub(model.header_bytes());
            // Make room (least recently used ranges first) before loading.
            let evicted = self
                .cache
                .admit(key, size, self.max_memory, now_ms)
                .map_err(|e| format!("layers {start}..{end} {e}"))?;
            for range in evicted {
                tracing::info!(model = %range.0, layers = ?(range.1..range.2), "stage unloaded to make room");
                self.stages.remove(&range);
            }
            let stage = match Stage::load(&model, start..end, &hearth_kernels::compute_device()) {
                Ok(stage) => stage,
                Err(e) => {
                    self.cache.unload(&key);
                    return Err(e.to_string());
                }
            };
            tracing::info!(model = %f.model, layers = ?(start..end), "stage loaded");
            self.stages.insert(key, stage);
        }
        Ok(self.stages.get_mut(&key).expect("loaded above"))
    }

    fn expire(&mut self, now_ms: u64) {
        for (range, session) in self.cache.expire(now_ms) {
            if let Some(stage) = self.stages.get_mut(&range) {
                stage.end_session(session);
            }
        }
    }

    /// Run steps for one layer range (all of `fs` name the same model and layers, each a
    /// different session) as one batch; one answer per step, in order.
    fn forward_batch(&mut self, fs: &[&Forward], now_ms: u64) -> Vec<Result<StageResult, String>> {
        self.expire(now_ms);
        let first = fs.first().expect("a batch has steps");
        let stage = match self.stage(first, now_ms) {
            Ok(stage) => stage,
            Err(e) => return fs.iter().map(|_| Err(e.clone())).collect(),
        };
        let hidden = stage.config().hidden;
        let mut answers: Vec<Option<Result<StageResult, String>>> = vec![None; fs.len()];
        let mut items = Vec::with_capacity(fs.len());
        let mut ran = Vec::with_capacity(fs.len());
        for (i, f) in fs.iter().enumerate() {
            match stage_input(f, hidden) {
                Ok(input) => {
                    items.push((f.session, input, f.pos as usize, f.all_positions));
                    ran.push(i);
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        let outputs = stage.forward_batch(items);
        for (i, output) in ran.into_iter().zip(outputs) {
            let f = fs[i];
            let result = output
                .map_err(|e| e.to_string())
                .and_then(|output| stage_result(f, output));
            if result.is_ok() {
                self.cache
                    .touch((f.model, f.layers.0, f.layers.1), f.session, now_ms);
            }
            #[cfg(feature = "fault-injection")]
            let result = result.map(|r| self.inject(r));
            answers[i] = Some(result);
        }
        self.bound_caches();
        answers.into_iter().map(|a| a.expect("answered")).collect()
    }

    /// Keep every KV cache together under [`STAGE_CACHE_BYTES_MAX`]: drop the least recently used
    /// sessions first (a dropped session's driver replays it elsewhere if it comes back).
    fn bound_caches(&mut self) {
        loop {
            let all: Vec<(RangeKey, u64, usize)> = self
                .stages
                .iter()
                .flat_map(|(range, stage)| {
                    stage
                        .cache_bytes()
                        .into_iter()
                        .map(move |(session, bytes)| (*range, session, bytes))
                })
                .collect();
            let total: usize = all.iter().map(|(_, _, b)| b).sum();
            if total <= STAGE_CACHE_BYTES_MAX || all.len() <= 1 {
                return;
            }
            let keys: Vec<(RangeKey, u64)> = all.iter().map(|(r, s, _)| (*r, *s)).collect();
            let Some((range, session)) = self.cache.evict_oldest(&keys) else {
                return;
            };
            let bytes = all
                .iter()
                .find(|(r, s, _)| (*r, *s) == (range, session))
                .map_or(0, |(_, _, b)| *b);
            tracing::info!(
                session,
                bytes,
                total,
                "KV caches over their bound; oldest session dropped"
            );
            if let Some(stage) = self.stages.get_mut(&range) {
                stage.end_session(session);
            }
        }
    }

    fn end(&mut self, session: u64) {
        for stage in self.stages.values_mut() {
            stage.end_session(session);
        }
        self.cache.end(session);
    }

    fn sign(&self, f: &Forward, output: &StageResult) -> Receipt {
        // A stage on candle does not compute its class's bits (nor batch-invariantly): say so,
        // so no one holds its replays to the class's exactness.
        let batch_invariant = self
            .stages
            .get(&(f.model, f.layers.0, f.layers.1))
            .is_some_and(Stage::batch_invariant);
        let numeric_class = if batch_invariant {
            // Hearth's CPU kernels: the CPU class's bits, on a GPU node too (a model candle
            // does not run is computed on its CPU).
            hearth_kernels::batch_invariant_llm_class()
        } else {
            format!("{}{}", self.class, hearth_kernels::CANDLE_STAGE_SUFFIX)
        };
        Receipt::sign(
            &self.key,
            ReceiptBody {
                subject: Subject::Step {
                    session: f.session,
                    step: f.step,
                    layer_start: f.layers.0,
                },
                model: f.model,
                input: f.digest(),
                output: output.digest(),
                numeric_class,
            },
        )
    }

    /// `--fault wrong-output`: shift the activations (or the chosen token) so the text goes wrong.
    #[cfg(feature = "fault-injection")]
    fn inject(&self, result: StageResult) -> StageResult {
        if self.fault != Some(Fault::WrongOutput) {
            return result;
        }
        match result {
            StageResult::Hidden(StageData::Hidden { rows, mut bytes }) => {
                for chunk in bytes.chunks_exact_mut(4) {
                    let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    chunk.copy_from_slice(&(v * 1.5 + 0.25).to_le_bytes());
                }
                StageResult::Hidden(StageData::Hidden { rows, bytes })
            }
            StageResult::Next { token, top } => StageResult::Next {
                token: (token + 1) % 49_152,
                top,
            },
            other => other,
        }
    }
}

/// A step's input as the kernels take it.
fn stage_input(f: &Forward, hidden: usize) -> Result<StageInput, String> {
    Ok(match &f.input {
        StageData::Tokens(ids) => StageInput::Tokens(ids.clone()),
        data @ StageData::Hidden { rows, bytes } => {
            let floats = data.floats();
            if floats.len() != *rows as usize * hidden || bytes.len() % 4 != 0 {
                return Err(format!("hidden input is not {rows}×{hidden} floats"));
            }
            let tensor =
                Tensor::from_vec(floats, (*rows as usize, hidden), &candle_core::Device::Cpu)
                    .map_err(|e| e.to_string())?;
            StageInput::Hidden(tensor)
        }
    })
}

/// What a stage returns for `f` from the kernels' `output`: hidden states, or the last stage's
/// token (greedy, or drawn as `f.sampling` says at its position) and best logits.
fn stage_result(f: &Forward, output: StageOutput) -> Result<StageResult, String> {
    Ok(match output {
        StageOutput::Hidden(x) => {
            let rows = x.dims2().map_err(|e| e.to_string())?.0;
            let floats: Vec<f32> = x
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| e.to_string())?;
            StageResult::Hidden(StageData::hidden(rows as u32, &floats))
        }
        StageOutput::Logits(logits) => {
            let rows: Vec<Vec<f32>> = logits.to_vec2().map_err(|e| e.to_string())?;
            // Row i holds the logits after position `first + i`: every input position, or the
            // last only.
            let first = u64::from(f.pos) + f.input.rows().saturating_sub(rows.len()) as u64;
            let mut each: Vec<(u32, Vec<(u32, f32)>)> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let (greedy, best) = top(r);
                    let token = match &f.sampling {
                        Some(s) => hearth_kernels::sample(r, Some(s), first + i as u64),
                        None => greedy,
                    };
                    (token, best)
                })
                .collect();
            if f.all_positions {
                StageResult::NextEach(each)
            } else {
                let (token, top) = each.pop().ok_or("no logits")?;
                StageResult::Next { token, top }
            }
        }
    })
}

/// Cut the jobs taken together into batches: steps for the same layer range, each of another
/// session, at most [`STAGE_BATCH_ROWS_MAX`] rows (a longer step never comes here whole: it runs
/// in chunks, [`Long`]). A session's steps keep
/// their order (a later step of a session goes to a later batch of its range).
fn batches<K>(jobs: Vec<(K, Box<Forward>)>) -> Vec<Vec<(K, Box<Forward>)>> {
    let mut out: Vec<Vec<(K, Box<Forward>)>> = Vec::new();
    for (key, f) in jobs {
        let range = (f.model, f.layers);
        let last = out
            .iter_mut()
            .rev()
            .find(|b| (b[0].1.model, b[0].1.layers) == range);
        match last {
            Some(batch)
                if batch.iter().all(|(_, g)| g.session != f.session)
                    && batch.iter().map(|(_, g)| g.input.rows()).sum::<usize>()
                        + f.input.rows()
                        <= STAGE_BATCH_ROWS_MAX =>
            {
                batch.push((key, f));
            }
            _ => out.push(vec![(key, f)]),
        }
    }
    out
}

/// The greedy token of a row of logits (lowest id among equal maxima) and its best logits.
fn top(row: &[f32]) -> (u32, Vec<(u32, f32)>) {
    let (token, _) = hearth_kernels::argmax(row);
    // Best first: the higher logit (in `total_cmp`'s order), then the lower id. One pass keeps the
    // best few in order; almost every logit loses to the last of them at one comparison. (A
    // selection over the whole vocabulary cost the last stage 0.7 ms a step, a sort 2 ms.)
    let better = |a: u32, b: u32| {
        row[a as usize]
            .total_cmp(&row[b as usize])
            .then(b.cmp(&a))
            .is_gt()
    };
    let mut best: Vec<u32> = Vec::with_capacity(TOP_LOGITS_MAX + 1);
    for i in 0..row.len() as u32 {
        if best.len() == TOP_LOGITS_MAX && best.last().is_some_and(|&last| !better(i, last)) {
            continue;
        }
        let at = best.partition_point(|&b| better(b, i));
        best.insert(at, i);
        best.truncate(TOP_LOGITS_MAX);
    }
    let best = best.into_iter().map(|i| (i, row[i as usize])).collect();
    (token, best)
}

/// Which job a step in a batch is: a queued step (its key), or the next chunk of the long step
/// at the front of the queue.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Key {
    Step(u64),
    Chunk,
}

/// A step of more rows than a batch holds (a long prompt's prefill, a verifier's replay): run
/// [`STAGE_BATCH_ROWS_MAX`] rows at a time, each chunk beside the other sessions' steps, so it
/// does not stall them; answered, and signed, as the one step it is once every row has run. The
/// kernels are batch-invariant, so the chunks give the bits the whole step gives.
struct Long {
    key: u64,
    f: Box<Forward>,
    /// Rows run so far.
    done: usize,
    /// What the chunks run so far gave, put together.
    out: Option<StageResult>,
}

impl Long {
    fn new(key: u64, f: Box<Forward>) -> Self {
        Self {
            key,
            f,
            done: 0,
            out: None,
        }
    }

    /// Whether `f` is run in chunks: more rows than a batch, whose bytes divide into rows (a
    /// malformed input is refused whole, as any step's is).
    fn takes(f: &Forward) -> bool {
        let rows = f.input.rows();
        rows > STAGE_BATCH_ROWS_MAX
            && match &f.input {
                StageData::Tokens(_) => true,
                StageData::Hidden { bytes, .. } => bytes.len() % rows == 0,
            }
    }

    /// The next chunk: the input's next rows, at their positions.
    fn chunk(&self) -> Box<Forward> {
        let f = &self.f;
        let rows = f.input.rows();
        let n = (rows - self.done).min(STAGE_BATCH_ROWS_MAX);
        let input = match &f.input {
            StageData::Tokens(ids) => StageData::Tokens(ids[self.done..self.done + n].to_vec()),
            StageData::Hidden { bytes, .. } => {
                let width = bytes.len() / rows.max(1);
                StageData::Hidden {
                    rows: n as u32,
                    bytes: bytes[self.done * width..(self.done + n) * width].to_vec(),
                }
            }
        };
        Box::new(Forward {
            session: f.session,
            step: f.step,
            model: f.model,
            layers: f.layers,
            pos: f.pos + self.done as u32,
            input,
            all_positions: f.all_positions,
            sampling: f.sampling,
        })
    }

    /// Add a chunk of `rows` rows' output: hidden states and every position's tokens are put
    /// together; of the last position's token, the last chunk's is the step's.
    fn absorb(&mut self, output: StageResult, rows: usize) {
        self.done += rows;
        self.out = Some(match (self.out.take(), output) {
            (
                Some(StageResult::Hidden(StageData::Hidden { rows, mut bytes })),
                StageResult::Hidden(StageData::Hidden {
                    rows: more,
                    bytes: added,
                }),
            ) => {
                bytes.extend_from_slice(&added);
                StageResult::Hidden(StageData::Hidden {
                    rows: rows + more,
                    bytes,
                })
            }
            (Some(StageResult::NextEach(mut each)), StageResult::NextEach(more)) => {
                each.extend(more);
                StageResult::NextEach(each)
            }
            (_, output) => output,
        });
    }

    fn is_done(&self) -> bool {
        self.done >= self.f.input.rows()
    }
}

/// The answer to step `f`: its output with the stage's signed receipt, or why it was refused.
fn response(server: &Server, f: &Forward, result: Result<StageResult, String>) -> WorkResponse {
    match result {
        Ok(output) => {
            let receipt = server.sign(f, &output);
            WorkResponse::Forwarded { output, receipt }
        }
        Err(reason) => {
            tracing::warn!(session = f.session, step = f.step, %reason, "step refused");
            WorkResponse::Rejected(reason)
        }
    }
}

/// Start the stage thread. Answers come back as `(key, response)`.
pub(crate) fn spawn(
    key: SecretKey,
    class: String,
    models: HashMap<ModelId, PathBuf>,
    partials: Partials,
    answers: mpsc::Sender<(u64, WorkResponse)>,
    max_memory: Option<u64>,
    #[cfg(feature = "fault-injection")] fault: Option<Fault>,
) -> (
    std::sync::mpsc::SyncSender<StageJob>,
    std::sync::Arc<Ends>,
    tokio::sync::watch::Receiver<u32>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<StageJob>(STAGE_QUEUE_MAX);
    let ends = std::sync::Arc::new(Ends::default());
    let thread_ends = ends.clone();
    // Sessions with state on this node, for its adverts.
    let (live, live_rx) = tokio::sync::watch::channel(0u32);
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("hearth-stages".into())
        .spawn(move || {
            let _enter = span.enter();
            let mut server = Server {
                key,
                class,
                models,
                partials,
                stages: HashMap::new(),
                max_memory,
                cache: Cache::default(),
                #[cfg(feature = "fault-injection")]
                fault,
            };
            // Ended sessions and the first key queued after each end, until that key is reached.
            let mut cutoffs: HashMap<u64, u64> = HashMap::new();
            // Steps longer than a batch holds, run a chunk at a time between the other batches.
            let mut long: VecDeque<Long> = VecDeque::new();
            loop {
                // Wait for work only when no long step is under way; then take everything queued
                // (up to a batch), so steps of several sessions for one range run as one pass over
                // its weights.
                let mut jobs = Vec::new();
                if long.is_empty() {
                    match rx.recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => return,
                    }
                }
                while jobs.len() < STAGE_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                for (session, cutoff) in thread_ends.take() {
                    server.end(session);
                    cutoffs.insert(session, cutoff);
                    // Its long steps queued before the end will not be finished.
                    let (gone, kept): (VecDeque<Long>, VecDeque<Long>) = long
                        .drain(..)
                        .partition(|l| l.f.session == session && l.key < cutoff);
                    long = kept;
                    for l in gone {
                        let refused = WorkResponse::Rejected("the session has ended".into());
                        if answers.blocking_send((l.key, refused)).is_err() {
                            return;
                        }
                    }
                }
                let mut steps = Vec::new();
                let mut last_key = None;
                for job in jobs {
                    let StageJob::Forward(key, f) = job else {
                        continue;
                    };
                    last_key = Some(key);
                    // Keys come in order: an end whose cutoff is reached has no step left.
                    let ended = cutoffs.get(&f.session).is_some_and(|cut| key < *cut);
                    if ended {
                        let refused = WorkResponse::Rejected("the session has ended".into());
                        if answers.blocking_send((key, refused)).is_err() {
                            return;
                        }
                    } else if Long::takes(&f) || long.iter().any(|l| l.f.session == f.session) {
                        // A session's steps keep their order: one behind a long step waits for it.
                        long.push_back(Long::new(key, f));
                    } else {
                        steps.push((Key::Step(key), f));
                    }
                }
                if let Some(last) = last_key {
                    cutoffs.retain(|_, cut| last < *cut);
                }
                // The next chunk of the long step whose turn it is rides with the other steps.
                if let Some(front) = long.front() {
                    steps.push((Key::Chunk, front.chunk()));
                }
                for batch in batches(steps) {
                    let fs: Vec<&Forward> = batch.iter().map(|(_, f)| &**f).collect();
                    let started = std::time::Instant::now();
                    let results = server.forward_batch(&fs, hearth_net::monotonic_ms());
                    tracing::debug!(
                        steps = fs.len(),
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "batch"
                    );
                    for ((key, f), result) in batch.iter().zip(results) {
                        let (key, f, result) = match key {
                            Key::Step(key) => (*key, &**f, result),
                            Key::Chunk => {
                                let front = long.front_mut().expect("a chunk is of the front");
                                match result {
                                    Ok(output) => {
                                        front.absorb(output, f.input.rows());
                                        if !front.is_done() {
                                            // Others' long steps take their turns.
                                            let session = front.f.session;
                                            if !long.iter().skip(1).any(|l| l.f.session == session)
                                            {
                                                long.rotate_left(1);
                                            }
                                            continue;
                                        }
                                        let done = long.pop_front().expect("the front");
                                        let output = done.out.ok_or("no rows");
                                        let response = response(
                                            &server,
                                            &done.f,
                                            output.map_err(String::from),
                                        );
                                        if answers.blocking_send((done.key, response)).is_err() {
                                            return;
                                        }
                                        continue;
                                    }
                                    Err(reason) => {
                                        let failed = long.pop_front().expect("the front");
                                        let response = response(&server, &failed.f, Err(reason));
                                        if answers.blocking_send((failed.key, response)).is_err() {
                                            return;
                                        }
                                        continue;
                                    }
                                }
                            }
                        };
                        if answers
                            .blocking_send((key, response(&server, f, result)))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                live.send_if_modified(|n| replace(n, server.cache.session_count()));
            }
        })
        .expect("the stage thread starts");
    (tx, ends, live_rx)
}

/// Set `*n` to `count`; whether it changed.
fn replace(n: &mut u32, count: usize) -> bool {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    std::mem::replace(n, count) != count
}

#[cfg(test)]
mod tests {
    use hearth_protocol::ModelId;

    use super::*;

    /// The best logits as a full sort of the vocabulary orders them: the definition `top` keeps.
    fn top_by_sorting(row: &[f32]) -> Vec<(u32, f32)> {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        order.truncate(TOP_LOGITS_MAX);
        order.into_iter().map(|i| (i, row[i as usize])).collect()
    }

    #[test]
    fn the_best_logits_are_those_a_full_sort_gives() {
        // A small generator (xorshift), so the rows are the same on every run.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..200 {
            let len = [1, 5, TOP_LOGITS_MAX, TOP_LOGITS_MAX + 1, 1000, 49_152][case % 6];
            let row: Vec<f32> = (0..len)
                .map(|_| match next() % 20 {
                    // Many ties, both zeros, infinities and NaNs among ordinary logits.
                    0 => 1.5,
                    1 => -0.0,
                    2 => 0.0,
                    3 => f32::INFINITY,
                    4 => f32::NAN,
                    5 => f32::NEG_INFINITY,
                    _ => (next() % 10_000) as f32 / 100.0 - 50.0,
                })
                .collect();
            let (_, best) = top(&row);
            let expected = top_by_sorting(&row);
            assert_eq!(best.len(), expected.len());
            for (got, want) in best.iter().zip(&expected) {
                assert_eq!(got.0, want.0, "case {case}");
                assert_eq!(got.1.to_bits(), want.1.to_bits(), "case {case}");
            }
        }
    }

    fn step(session: u64, layers: (u32, u32), rows: usize) -> Box<Forward> {
        Box::new(Forward {
            session,
            step: 0,
            model: ModelId::of_bytes(b"m"),
            layers,
            pos: 0,
            input: StageData::Tokens(vec![1; rows]),
            all_positions: false,
            sampling: None,
        })
    }

    #[test]
    fn steps_batch_by_range_with_each_session_once_and_in_order() {
        let jobs = vec![
            (0, step(1, (0, 10), 1)),
            (1, step(2, (0, 10), 1)),
            (2, step(3, (10, 20), 1)),
            // Session 1's next step: after its first, in a later batch.
            (3, step(1, (0, 10), 1)),
            (4, step(4, (0, 10), 1)),
            // A long prefill runs alone.
            (5, step(5, (0, 10), STAGE_BATCH_ROWS_MAX)),
            (6, step(6, (10, 20), 1)),
        ];
        let keys: Vec<Vec<u64>> = batches(jobs)
            .iter()
            .map(|b| b.iter().map(|(k, _)| *k).collect())
            .collect();
        assert_eq!(keys, vec![vec![0, 1], vec![2, 6], vec![3, 4], vec![5]]);
    }

    #[test]
    fn a_long_step_runs_in_chunks_at_their_positions_and_is_put_back_together() {
        let rows = 2 * STAGE_BATCH_ROWS_MAX + 5;
        let floats: Vec<f32> = (0..rows * 3).map(|v| v as f32).collect();
        let mut f = step(9, (10, 20), rows);
        f.pos = 7;
        f.input = StageData::hidden(rows as u32, &floats);
        assert!(Long::takes(&f));
        assert!(!Long::takes(&step(9, (10, 20), STAGE_BATCH_ROWS_MAX)));
        // Bytes that do not divide into rows are refused whole, not cut.
        let mut odd = f.clone();
        odd.input = StageData::Hidden {
            rows: rows as u32,
            bytes: vec![0; rows * 12 + 1],
        };
        assert!(!Long::takes(&odd));

        let mut long = Long::new(3, f.clone());
        let mut seen = Vec::new();
        while !long.is_done() {
            let chunk = long.chunk();
            assert_eq!((chunk.session, chunk.step), (f.session, f.step));
            seen.push((chunk.pos, chunk.input.rows()));
            // A stage that adds one to every value.
            let out: Vec<f32> = chunk.input.floats().iter().map(|v| v + 1.0).collect();
            let n = chunk.input.rows();
            long.absorb(StageResult::Hidden(StageData::hidden(n as u32, &out)), n);
        }
        let m = STAGE_BATCH_ROWS_MAX;
        assert_eq!(seen, vec![(7, m), (7 + m as u32, m), (7 + 2 * m as u32, 5)]);
        let whole: Vec<f32> = floats.iter().map(|v| v + 1.0).collect();
        assert_eq!(
            long.out,
            Some(StageResult::Hidden(StageData::hidden(rows as u32, &whole)))
        );

        // The last stage: every position's tokens in order, or the last chunk's token.
        let mut each = Long::new(4, step(9, (20, 30), rows));
        let mut next = Long::new(5, step(9, (20, 30), rows));
        while !each.is_done() {
            let chunk = each.chunk();
            let n = chunk.input.rows();
            let tokens = (0..n).map(|i| (chunk.pos + i as u32, vec![])).collect();
            each.absorb(StageResult::NextEach(tokens), n);
            let last = chunk.pos + n as u32 - 1;
            next.absorb(
                StageResult::Next {
                    token: last,
                    top: vec![],
                },
                n,
            );
        }
        let tokens: Vec<(u32, Vec<(u32, f32)>)> = (0..rows as u32).map(|p| (p, vec![])).collect();
        assert_eq!(each.out, Some(StageResult::NextEach(tokens)));
        assert_eq!(
            next.out,
            Some(StageResult::Next {
                token: rows as u32 - 1,
                top: vec![]
            })
        );
    }
}
