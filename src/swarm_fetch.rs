//! `hearth models fetch --from-swarm MODEL`: a model file fetched from the peers that hold it (as
//! the coordinator lists them), its chunks spread over them, every 16 KiB block verified against
//! the model's id before it is written ([`hearth_net::weights`]). A holder whose bytes do not
//! verify is asked no more and its chunk comes from another; its signed statement of what it sent
//! is kept as evidence. Stopped at any point, the fetch starts again with what it had.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use hearth_net::weights::{Partial, WeightsError, outboard_path};
use hearth_net::{NetConfig, NetEvent, Network, RequestId};
use hearth_protocol::api::PeerEntry;
use hearth_protocol::work::{
    WEIGHTS_CHUNK_BYTES_MAX, WorkRequest, WorkResponse, weights_statement,
};
use hearth_protocol::{ModelId, PeerId, SecretKey};
use serde_json::{Value, json};

use crate::client::Client;

/// Chunks asked of one holder at a time.
pub(crate) const FETCH_IN_FLIGHT_PER_HOLDER: usize = 2;
/// Chunks asked at a time in all.
pub(crate) const FETCH_IN_FLIGHT_MAX: usize = 8;
/// Refusals or failed requests after which a holder is asked no more.
pub(crate) const HOLDER_FAILURES_MAX: u32 = 3;

/// What one holder gave.
#[derive(Default)]
struct Served {
    bytes: u64,
    failures: u32,
    /// It served bytes that do not verify: asked no more.
    lied: bool,
    /// The coordinator took the evidence and quarantined it.
    quarantined: bool,
}

/// What a fetch did.
pub(crate) struct Fetched {
    name: String,
    id: ModelId,
    pub(crate) path: PathBuf,
    /// Bytes fetched (0 when the folder held the model already).
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    served: HashMap<PeerId, Served>,
    already: bool,
}

/// Fetch `model` (a name or id the coordinator lists) into `dir`, and say what happened.
pub(crate) async fn run(
    dir: &Path,
    model: &str,
    client: &Client,
    json: bool,
) -> anyhow::Result<()> {
    let f = fetch(dir, model, client, json).await?;
    report(json, &f)
}

/// Fetch `model` into `dir` (progress on stdout unless `quiet`).
pub(crate) async fn fetch(
    dir: &Path,
    model: &str,
    client: &Client,
    quiet: bool,
) -> anyhow::Result<Fetched> {
    let listed: Value = client.get("/v1/models").await?;
    let entry = listed["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"] == model || m["hearth"]["id"] == model)
        .ok_or_else(|| {
            anyhow!("the swarm lists no model `{model}` (GET /v1/models shows what it has)")
        })?;
    let id: ModelId = entry["hearth"]["id"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| anyhow!("the coordinator listed a model id that does not parse: {e}"))?;
    let name = entry["id"].as_str().unwrap_or(model).to_string();
    let holders: Vec<PeerId> = entry["holders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str()?.parse().ok())
        .collect();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the models folder {}", dir.display()))?;
    if let Some((path, _)) = hearth_node::scan_models(dir)?
        .into_iter()
        .find(|(_, found)| *found == id)
    {
        return Ok(Fetched {
            name,
            id,
            path,
            bytes: 0,
            seconds: 0.0,
            served: HashMap::new(),
            already: true,
        });
    }
    if holders.is_empty() {
        bail!("no peer online holds {name} ({id}); start a node that has it, then try again");
    }
    let peers: Vec<PeerEntry> = client.get("/v1/peers").await?;
    let key = {
        let mut secret = [0u8; SecretKey::BYTES];
        getrandom::fill(&mut secret).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
        SecretKey::from_bytes(&secret)
    };
    let mut net = Network::new(
        key,
        &NetConfig {
            listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
            mdns: false,
            agent: format!("hearth-fetch/{}", env!("CARGO_PKG_VERSION")),
            ..NetConfig::default()
        },
    )
    .map_err(|e| anyhow!("starting the swarm connection: {e}"))?;
    for holder in &holders {
        let addrs = peers
            .iter()
            .find(|p| p.peer_id == *holder)
            .map(|p| p.listen_addrs.clone())
            .unwrap_or_default();
        net.add_addrs(holder, &addrs);
    }
    if !quiet {
        println!(
            "fetching {name} ({id}) from {} holder{} into {} …",
            holders.len(),
            if holders.len() == 1 { "" } else { "s" },
            dir.display()
        );
    }
    let started = Instant::now();
    let mut fetch = Fetch::new(dir, id, holders)?;
    let fetched = fetch.run(&mut net, quiet).await;
    let seconds = started.elapsed().as_secs_f64();
    // Bad bytes, signed: the coordinator checks them and quarantines whoever sent them (kept in
    // the folder when it cannot be told).
    for (peer, evidence) in std::mem::take(&mut fetch.evidence) {
        match client
            .post::<Value>("/v1/evidence/weights", &evidence)
            .await
        {
            Ok(_) => fetch.served.entry(peer).or_default().quarantined = true,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "the coordinator did not take the evidence; kept in the folder");
                let file = dir.join(format!(".{id}.evidence-{peer}.json"));
                let _ = std::fs::write(&file, evidence.to_string());
            }
        }
    }
    let path = fetched?;
    let dest = final_path(dir, &name, id);
    std::fs::rename(&path, &dest)
        .with_context(|| format!("moving {} to {}", path.display(), dest.display()))?;
    let _ = std::fs::rename(outboard_path(&path), outboard_path(&dest));
    // Its id remembered beside it, as for any model the folder holds.
    hearth_node::scan_models(dir)?;
    Ok(Fetched {
        name,
        id,
        path: dest,
        bytes: fetch.served.values().map(|s| s.bytes).sum(),
        seconds,
        served: fetch.served,
        already: false,
    })
}

/// Where a fetched model goes: its catalogue file name, else its listed name, else its id.
fn final_path(dir: &Path, name: &str, id: ModelId) -> PathBuf {
    if let Some(m) = hearth_kernels::CATALOG
        .iter()
        .find(|m| m.files.len() == 1 && m.files[0].blake3 == id.to_string())
    {
        return dir.join(m.files[0].path);
    }
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let file = if plain && !name.is_empty() && name != id.to_string() {
        format!("{name}.gguf")
    } else {
        format!("{id}.gguf")
    };
    let dest = dir.join(&file);
    if dest.exists() {
        dir.join(format!("{id}.gguf"))
    } else {
        dest
    }
}

fn report(json: bool, f: &Fetched) -> anyhow::Result<()> {
    if json {
        let holders: Vec<Value> = f
            .served
            .iter()
            .map(|(peer, s)| {
                json!({ "peer_id": peer.to_string(), "bytes": s.bytes, "refused_bad": s.lied,
                        "quarantined": s.quarantined, "failures": s.failures })
            })
            .collect();
        println!(
            "{}",
            json!({ "name": f.name, "id": f.id.to_string(), "path": f.path, "bytes": f.bytes,
                    "seconds": f.seconds, "already_held": f.already, "holders": holders })
        );
    } else if f.already {
        println!("{} is already in the folder: {}", f.name, f.path.display());
    } else {
        let mb = f.bytes as f64 / 1e6;
        println!(
            "{}: {mb:.1} MB in {:.1} s ({:.1} MB/s), every block verified, in {}",
            f.name,
            f.seconds,
            mb / f.seconds.max(1e-9),
            f.path.display()
        );
        for (peer, s) in &f.served {
            if s.lied {
                println!(
                    "  {peer} served bytes that do not verify: asked no more{}",
                    if s.quarantined {
                        ", and quarantined by the coordinator on the evidence"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

/// One fetch: its partial file, the chunks left, the requests out.
struct Fetch {
    dir: PathBuf,
    id: ModelId,
    holders: Vec<PeerId>,
    /// The file's size, once a holder said it (and its last block verified with it).
    size: u64,
    partial: Option<Partial>,
    /// The last block verified against the size: from then on a holder naming another size lies.
    size_checked: bool,
    queue: VecDeque<Range<u64>>,
    out: HashMap<RequestId, (PeerId, Range<u64>)>,
    served: HashMap<PeerId, Served>,
    next_holder: usize,
    /// Signed answers that did not verify, one per holder caught, for the coordinator.
    evidence: Vec<(PeerId, Value)>,
}

impl Fetch {
    /// A fetch of `id` into `dir`, going on from a partial file a fetch before left there.
    fn new(dir: &Path, id: ModelId, holders: Vec<PeerId>) -> anyhow::Result<Self> {
        let mut fetch = Self {
            dir: dir.to_path_buf(),
            id,
            holders,
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
            fetch.queue = partial.missing(0..meta.len()).into();
            fetch.partial = Some(partial);
        }
        Ok(fetch)
    }

    /// A holder that may be asked now: not struck, not failing, with room for a request; taken
    /// in turn so chunks spread over every holder.
    fn pick(&mut self) -> Option<PeerId> {
        for i in 0..self.holders.len() {
            let peer = self.holders[(self.next_holder + i) % self.holders.len()];
            let s = self.served.entry(peer).or_default();
            let busy = self.out.values().filter(|(p, _)| *p == peer).count();
            if !s.lied && s.failures < HOLDER_FAILURES_MAX && busy < FETCH_IN_FLIGHT_PER_HOLDER {
                self.next_holder = (self.next_holder + i + 1) % self.holders.len();
                return Some(peer);
            }
        }
        None
    }

    /// Fetch until the file is whole; its partial file's path.
    async fn run(&mut self, net: &mut Network, quiet: bool) -> anyhow::Result<PathBuf> {
        let started = Instant::now();
        let mut shown = Instant::now();
        loop {
            while self.out.len() < FETCH_IN_FLIGHT_MAX && !self.queue.is_empty() {
                let Some(peer) = self.pick() else { break };
                let range = self.queue.pop_front().expect("not empty");
                let request = WorkRequest::Weights {
                    model: self.id,
                    start: range.start,
                    end: range.end,
                };
                let id = net.request(&peer, request);
                self.out.insert(id, (peer, range));
            }
            if let Some(partial) = &self.partial
                && partial.holds(&(0..self.size))
            {
                return Ok(partial.path().to_path_buf());
            }
            if self.out.is_empty() {
                let held = self.partial.as_ref().map_or(0, Partial::bytes_held);
                bail!(
                    "no holder left to ask: {held} of {} bytes fetched and kept; run the command again to resume",
                    self.size
                );
            }
            let (id, answer) = match net.next().await {
                NetEvent::WorkResponse { id, response } => (id, Ok(response)),
                NetEvent::WorkFailed { id, error } => (id, Err(error)),
                _ => continue,
            };
            let Some((peer, range)) = self.out.remove(&id) else {
                continue;
            };
            self.answered(peer, range, answer)?;
            if !quiet && shown.elapsed().as_secs_f64() >= 1.0 && self.size > 0 {
                shown = Instant::now();
                let held = self.partial.as_ref().map_or(0, Partial::bytes_held);
                println!(
                    "  {:.1} of {:.1} MB ({:.0}%), {:.1} MB/s",
                    held as f64 / 1e6,
                    self.size as f64 / 1e6,
                    100.0 * held as f64 / self.size as f64,
                    held as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
        }
    }

    /// `peer` answered the request for `range`.
    fn answered(
        &mut self,
        peer: PeerId,
        range: Range<u64>,
        answer: Result<WorkResponse, String>,
    ) -> anyhow::Result<()> {
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
            let partial = Partial::open(&self.dir, self.id, size)?;
            // What is still missing: the last block first (it pins the size), then in order.
            let mut missing = partial.missing(0..size);
            missing.retain(|r| *r != (range.start..end));
            if let Some(last) = missing.pop() {
                missing.insert(0, last);
            }
            self.queue = missing.into();
            self.partial = Some(partial);
        }
        let partial = self.partial.as_mut().expect("opened above");
        if size != self.size {
            if self.size_checked {
                return self.lied(peer, range, "it names another size than the file's");
            }
            return self.failed(peer, range, "it names another size than the first holder");
        }
        match partial.receive(range.start..end, &encoded) {
            Ok(()) => {
                self.served.entry(peer).or_default().bytes += end - range.start;
                if end == self.size {
                    self.size_checked = true;
                }
                Ok(())
            }
            Err(WeightsError::Unverified { .. }) => {
                // Its signed statement and the bytes are the evidence.
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                if !self.evidence.iter().any(|(p, _)| *p == peer) {
                    self.evidence.push((
                        peer,
                        json!({
                            "peer_id": peer.to_string(), "model": self.id.to_string(),
                            "size": size, "start": range.start, "end": end,
                            "encoded": b64.encode(&encoded), "signature": b64.encode(signature.0),
                        }),
                    ));
                }
                if !self.size_checked && range.start == 0 {
                    // The size it named may be the lie: start again from its first chunk.
                    self.reset()?;
                }
                self.lied(
                    peer,
                    range,
                    "its bytes do not verify against the model's id",
                )
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Drop the partial file opened on a size no block has confirmed yet.
    fn reset(&mut self) -> anyhow::Result<()> {
        if let Some(partial) = self.partial.take() {
            let path = partial.path().to_path_buf();
            drop(partial);
            let _ = std::fs::remove_file(outboard_path(&path));
            let _ = std::fs::remove_file(&path);
        }
        self.size = 0;
        self.queue.clear();
        Ok(())
    }

    /// `peer` did not serve `range` (refused, unreachable, unsigned): counted, and asked of
    /// another.
    fn failed(&mut self, peer: PeerId, range: Range<u64>, why: &str) -> anyhow::Result<()> {
        tracing::info!(%peer, start = range.start, end = range.end, %why, "a holder did not serve a chunk");
        self.served.entry(peer).or_default().failures += 1;
        self.requeue(range);
        Ok(())
    }

    /// `peer` served bytes that do not verify: asked no more, the range asked of another.
    fn lied(&mut self, peer: PeerId, range: Range<u64>, why: &str) -> anyhow::Result<()> {
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
}
