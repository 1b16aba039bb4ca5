//! Fetching a model's bytes from the peers that hold it: the whole file (`hearth models fetch
//! --from-swarm`) or the ranges one stage reads (a node told to serve layers it lacks). Chunks
//! are spread over the holders in turn, a bounded number in flight to each and in all; every
//! 16 KiB block is verified against the model's id before it is written ([`Partial`]); a holder
//! whose bytes do not verify is asked no more, its signed answer kept as evidence, and its chunk
//! asked of another. What is verified on disk is kept, so a fetch stopped at any point goes on
//! from there.
//!
//! The size of the file is what the first holder says until the file's last block verifies with
//! it (the tree's shape depends on the size, so a wrong one fails there): the last block is asked
//! first, and from then on a holder naming another size is lying.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};

use hearth_protocol::work::{
    WEIGHTS_CHUNK_BYTES_MAX, WeightsEvidence, WorkRequest, WorkResponse, weights_statement,
};
use hearth_protocol::{ModelId, PeerId};

use crate::weights::{BLOCK_BYTES, Partial, WeightsError};
use crate::{Network, RequestId};

/// Chunks asked of one holder at a time.
pub const FETCH_IN_FLIGHT_PER_HOLDER: usize = 2;
/// Chunks asked at a time in all.
pub const FETCH_IN_FLIGHT_MAX: usize = 8;
/// Refusals or failed requests in a row after which a holder is asked no more.
pub const HOLDER_FAILURES_MAX: u32 = 3;

/// What one holder gave.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// Bytes it served that verified.
    pub bytes: u64,
    /// Requests it refused or did not answer since the last it served.
    pub failures: u32,
    /// It served bytes that do not verify: asked no more.
    pub lied: bool,
}

/// What is fetched.
#[derive(Clone, Debug)]
enum Wanted {
    /// The whole file.
    Whole,
    /// These ranges (more may be added, [`Fetch::want`]).
    Ranges(Vec<Range<u64>>),
}

/// One fetch of one model into one folder.
pub struct Fetch {
    dir: PathBuf,
    id: ModelId,
    holders: Vec<PeerId>,
    wanted: Wanted,
    /// The file's size, once a holder said it.
    size: u64,
    partial: Option<Partial>,
    /// The last block verified against the size: from then on a holder naming another size lies.
    size_checked: bool,
    queue: VecDeque<Range<u64>>,
    out: HashMap<RequestId, (PeerId, Range<u64>)>,
    served: HashMap<PeerId, Served>,
    next_holder: usize,
    /// Signed answers that did not verify, one per holder caught.
    evidence: Vec<WeightsEvidence>,
}

impl Fetch {
    /// A fetch of the whole model `id` into `dir` from `holders`, going on from a partial file a
    /// fetch before left there.
    pub fn whole(dir: &Path, id: ModelId, holders: Vec<PeerId>) -> Result<Self, WeightsError> {
        Self::new(dir, id, holders, Wanted::Whole)
    }

    /// A fetch of `ranges` of model `id` (more may be asked later, [`Fetch::want`]; a fetcher
    /// that does not know the size yet asks for the first chunk, which has the header).
    pub fn ranges(
        dir: &Path,
        id: ModelId,
        holders: Vec<PeerId>,
        ranges: Vec<Range<u64>>,
    ) -> Result<Self, WeightsError> {
        Self::new(dir, id, holders, Wanted::Ranges(ranges))
    }

    fn new(
        dir: &Path,
        id: ModelId,
        holders: Vec<PeerId>,
        wanted: Wanted,
    ) -> Result<Self, WeightsError> {
        let mut fetch = Self {
            dir: dir.to_path_buf(),
            id,
            holders,
            wanted,
            size: 0,
            partial: None,
            size_checked: false,
            // The first chunk tells the size.
            queue: std::iter::once(0..WEIGHTS_CHUNK_BYTES_MAX).collect(),
            out: HashMap::new(),
            served: HashMap::new(),
            next_holder: 0,
            evidence: Vec::new(),
        };
        let left = Partial::path_in(dir, id);
        if let Ok(meta) = std::fs::metadata(&left)
            && meta.len() > 0
        {
            let partial = Partial::open(dir, id, meta.len())?;
            fetch.size = meta.len();
            // Its blocks verified against the id with this size: the size is the file's.
            fetch.size_checked = partial.bytes_held() > 0;
            fetch.partial = Some(partial);
            fetch.queue = fetch.still_missing().into();
        }
        Ok(fetch)
    }

    /// The model.
    pub fn id(&self) -> ModelId {
        self.id
    }

    /// Add holders to ask (those already known are kept, with what they did).
    pub fn add_holders(&mut self, holders: impl IntoIterator<Item = PeerId>) {
        for h in holders {
            if !self.holders.contains(&h) {
                self.holders.push(h);
            }
        }
    }

    /// Fetch `ranges` too.
    pub fn want(&mut self, ranges: Vec<Range<u64>>) {
        match &mut self.wanted {
            Wanted::Whole => return,
            Wanted::Ranges(had) => had.extend(ranges.iter().cloned()),
        }
        let Some(partial) = &self.partial else {
            return;
        };
        let size = self.size;
        let pieces: Vec<Range<u64>> = ranges
            .into_iter()
            .flat_map(|r| partial.missing(r.start.min(size)..r.end.min(size)))
            .collect();
        for piece in pieces {
            self.enqueue(piece);
        }
    }

    fn enqueue(&mut self, piece: Range<u64>) {
        let asked = self.out.values().any(|(_, r)| *r == piece);
        if !asked && !self.queue.contains(&piece) {
            self.queue.push_back(piece);
        }
    }

    /// What is wanted and not held: the last block first (it pins the size), then in order.
    fn still_missing(&self) -> Vec<Range<u64>> {
        let Some(partial) = &self.partial else {
            return Vec::new();
        };
        let size = self.size;
        let last = size.saturating_sub(1) / BLOCK_BYTES * BLOCK_BYTES..size;
        let mut missing = if self.size_checked {
            Vec::new()
        } else {
            partial.missing(last.clone())
        };
        let ranges = match &self.wanted {
            Wanted::Whole => std::iter::once(0..size).collect(),
            Wanted::Ranges(r) => r.clone(),
        };
        for r in ranges {
            for mut piece in partial.missing(r.start.min(size)..r.end.min(size)) {
                if !self.size_checked {
                    // The last block is asked on its own, first.
                    piece.end = piece.end.min(last.start);
                }
                if !piece.is_empty() && !missing.contains(&piece) {
                    missing.push(piece);
                }
            }
        }
        missing
    }

    /// Whether everything wanted is held.
    pub fn is_done(&self) -> bool {
        let Some(partial) = &self.partial else {
            return false;
        };
        let size = self.size;
        match &self.wanted {
            Wanted::Whole => partial.holds(&(0..size)),
            Wanted::Ranges(r) => r
                .iter()
                .all(|r| r.start >= r.end.min(size) || partial.holds(&(r.start..r.end.min(size)))),
        }
    }

    /// Whether nothing is asked and nothing can be: every holder struck or failing.
    pub fn is_stuck(&self) -> bool {
        self.out.is_empty() && !self.is_done()
    }

    /// Ask holders for what is missing, as far as the bounds allow.
    pub fn send(&mut self, net: &mut Network) {
        while self.out.len() < FETCH_IN_FLIGHT_MAX && !self.queue.is_empty() {
            // Holders reached directly first; those only reached through a relay take what the
            // others leave.
            let relayed = |peer: &PeerId| net.via(peer) == Some(crate::Via::Relayed);
            let Some(peer) = self.pick(|p| !relayed(p)).or_else(|| self.pick(|_| true)) else {
                break;
            };
            let range = self.queue.pop_front().expect("not empty");
            let request = WorkRequest::Weights {
                model: self.id,
                start: range.start,
                end: range.end,
            };
            let id = net.request(&peer, request);
            self.out.insert(id, (peer, range));
        }
    }

    /// Whether `id` is one of this fetch's requests.
    pub fn owns(&self, id: &RequestId) -> bool {
        self.out.contains_key(id)
    }

    /// A holder that may be asked now: not struck, not failing, with room for a request; taken
    /// in turn so chunks spread over every holder.
    fn pick(&mut self, eligible: impl Fn(&PeerId) -> bool) -> Option<PeerId> {
        for i in 0..self.holders.len() {
            let peer = self.holders[(self.next_holder + i) % self.holders.len()];
            if !eligible(&peer) {
                continue;
            }
            let s = self.served.entry(peer).or_default();
            let busy = self.out.values().filter(|(p, _)| *p == peer).count();
            if !s.lied && s.failures < HOLDER_FAILURES_MAX && busy < FETCH_IN_FLIGHT_PER_HOLDER {
                self.next_holder = (self.next_holder + i + 1) % self.holders.len();
                return Some(peer);
            }
        }
        None
    }

    /// The answer to request `id` (one this fetch [`owns`](Self::owns)). An error only when the
    /// folder cannot be written.
    pub fn answered(
        &mut self,
        id: RequestId,
        answer: Result<WorkResponse, String>,
    ) -> Result<(), WeightsError> {
        let Some((peer, range)) = self.out.remove(&id) else {
            return Ok(());
        };
        let (size, end, encoded, signature) = match answer {
            Ok(WorkResponse::Weights {
                size,
                end,
                encoded,
                signature,
            }) => (size, end, encoded, signature),
            Ok(other) => {
                let why = match other {
                    WorkResponse::Rejected(why) => why,
                    other => format!("answered {other:?}"),
                };
                return self.failed(peer, range, &why);
            }
            Err(error) => return self.failed(peer, range, &error),
        };
        let statement = weights_statement(&self.id, size, range.start, end, &encoded);
        if peer.public_key().verify(&statement, &signature).is_err() || end <= range.start {
            return self.failed(peer, range, "its answer is not signed by it");
        }
        if self.partial.is_none() {
            if size == 0 {
                return self.failed(peer, range, "it says the file is empty");
            }
            self.size = size;
            self.partial = Some(Partial::open(&self.dir, self.id, size)?);
            let mut missing = self.still_missing();
            missing.retain(|r| *r != (range.start..end));
            self.queue = missing.into();
        }
        if size != self.size {
            if self.size_checked {
                return self.lied(peer, range, "it names another size than the file's");
            }
            return self.failed(peer, range, "it names another size than the first holder");
        }
        let partial = self.partial.as_mut().expect("opened above");
        match partial.receive(range.start..end, &encoded) {
            Ok(()) => {
                let served = self.served.entry(peer).or_default();
                served.bytes += end - range.start;
                served.failures = 0;
                if end == self.size {
                    self.size_checked = true;
                }
                Ok(())
            }
            Err(WeightsError::Unverified { .. }) => {
                if !self.evidence.iter().any(|e| e.peer == peer) {
                    self.evidence.push(WeightsEvidence {
                        peer,
                        model: self.id,
                        size,
                        start: range.start,
                        end,
                        encoded,
                        signature,
                    });
                }
                if !self.size_checked && range.start == 0 {
                    // The size it named may be the lie: start again from its first chunk.
                    self.reset();
                }
                self.lied(
                    peer,
                    range,
                    "its bytes do not verify against the model's id",
                )
            }
            Err(e) => Err(e),
        }
    }

    /// Drop the partial file opened on a size no block has confirmed yet.
    fn reset(&mut self) {
        if let Some(partial) = self.partial.take() {
            let path = partial.path().to_path_buf();
            drop(partial);
            let _ = std::fs::remove_file(crate::weights::outboard_path(&path));
            let _ = std::fs::remove_file(&path);
        }
        self.size = 0;
        self.queue.clear();
    }

    /// `peer` did not serve `range` (refused, unreachable, unsigned): counted, and asked of
    /// another.
    fn failed(&mut self, peer: PeerId, range: Range<u64>, why: &str) -> Result<(), WeightsError> {
        tracing::info!(%peer, start = range.start, end = range.end, %why, "a holder did not serve a chunk");
        self.served.entry(peer).or_default().failures += 1;
        self.requeue(range);
        Ok(())
    }

    /// `peer` served bytes that do not verify: asked no more, the range asked of another.
    fn lied(&mut self, peer: PeerId, range: Range<u64>, why: &str) -> Result<(), WeightsError> {
        tracing::warn!(%peer, start = range.start, end = range.end, %why, "a holder served bad bytes; asked no more");
        self.served.entry(peer).or_default().lied = true;
        self.requeue(range);
        Ok(())
    }

    fn requeue(&mut self, range: Range<u64>) {
        if self.partial.is_none() {
            if self.queue.is_empty() {
                self.queue.push_back(0..WEIGHTS_CHUNK_BYTES_MAX);
            }
        } else {
            self.queue.push_front(range);
        }
    }

    /// The file's header, once enough of the file's start is held for `parse` to read it
    /// (`parse` answers `Ok(None)` for "send more"): until then the held prefix grows by a
    /// quarter at a time, up to `max` bytes.
    pub fn header<T>(
        &mut self,
        max: u64,
        parse: impl FnOnce(&[u8], u64) -> Result<Option<T>, String>,
    ) -> Result<Option<T>, String> {
        let size = self.size;
        let Some(partial) = self.partial.as_mut() else {
            return Ok(None);
        };
        let prefix = partial.held_prefix();
        if prefix == 0 {
            return Ok(None);
        }
        let bytes = partial
            .read(0..prefix.min(max))
            .map_err(|e| e.to_string())?;
        if let Some(header) = parse(&bytes, size)? {
            return Ok(Some(header));
        }
        if prefix >= max.min(size) {
            return Err(format!(
                "the model's header is longer than {max} bytes, the most read from peers"
            ));
        }
        // A quarter more each time (at least a chunk's quarter): a few round trips for a long
        // header, and little read past its end.
        let more = (prefix / 4).max(WEIGHTS_CHUNK_BYTES_MAX / 4);
        self.want(std::iter::once(0..(prefix + more).min(max).min(size)).collect());
        Ok(None)
    }

    /// The file's size (0 until a holder said it).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The partial file, once the size is known.
    pub fn partial(&mut self) -> Option<&mut Partial> {
        self.partial.as_mut()
    }

    /// Bytes held, verified.
    pub fn bytes_held(&self) -> u64 {
        self.partial.as_ref().map_or(0, Partial::bytes_held)
    }

    /// Bytes received from holders in this fetch, verified.
    pub fn bytes_received(&self) -> u64 {
        self.served.values().map(|s| s.bytes).sum()
    }

    /// What each holder gave.
    pub fn served(&self) -> &HashMap<PeerId, Served> {
        &self.served
    }

    /// The evidence against holders caught serving bad bytes, taken once.
    pub fn take_evidence(&mut self) -> Vec<WeightsEvidence> {
        std::mem::take(&mut self.evidence)
    }

    /// Where the partial file is (or will be).
    pub fn path(&self) -> PathBuf {
        Partial::path_in(&self.dir, self.id)
    }
}
