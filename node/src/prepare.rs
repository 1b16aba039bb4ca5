//! A node told to serve layers of a model it does not hold ([`WorkRequest::Prepare`]) fetches
//! them from the peers that do: the file's first chunk (its header: the tensor table says where
//! each layer lies), then exactly the ranges a stage of those layers reads
//! ([`GgufModel::stage_ranges`]), every block verified against the model's id
//! ([`hearth_net::fetch`]). The bytes go into a sparse partial file in the models folder, kept
//! across restarts: a fetch started again asks only for what is missing. Once held, the range is
//! answered [`WorkResponse::Prepared`] and handed to the stage thread (which loads stages of it
//! and no others) and to the weights server (which serves what is held to other fetchers).
//! A holder caught serving bad bytes is reported to the coordinator with its signed statement.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hearth_kernels::{GGUF_HEADER_BYTES_MAX, GgufModel};
use hearth_net::WorkChannel;
use hearth_net::fetch::Fetch;
use hearth_net::{Network, RequestId};
use hearth_protocol::work::{Prepare, WorkRequest, WorkResponse};
use hearth_protocol::{ModelId, PeerId};

/// A model held in part: its partial file, its header, and the layer ranges it holds.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) model: ModelId,
    pub(crate) path: PathBuf,
    /// Layer ranges whose stages' bytes are all held.
    pub(crate) layers: Vec<(u32, u32)>,
}

/// Whether a stage of `layers` reads only bytes a partial file holding `held` has: within one
/// held range (a stage at the start of one reads the embedding it read, one at its end the head).
pub(crate) fn covers(held: &[(u32, u32)], layers: (u32, u32)) -> bool {
    held.iter().any(|h| h.0 <= layers.0 && layers.1 <= h.1)
}

struct Pending {
    fetch: Fetch,
    /// The coordinator that asked (evidence goes to it).
    coordinator: PeerId,
    header: Option<GgufModel>,
    /// Layer ranges asked, and who waits for each.
    waiting: Vec<((u32, u32), WorkChannel)>,
    /// Layer ranges whose bytes are wanted from the fetch.
    wanted: Vec<(u32, u32)>,
}

/// The fetches under way and what they hold.
pub(crate) struct Prepares {
    dir: PathBuf,
    /// `--max-disk`: most bytes the partial files (and their outboards) may take.
    max_disk: Option<u64>,
    pending: HashMap<ModelId, Pending>,
    held: HashMap<ModelId, Held>,
    /// Bytes received from peers, all fetches together, since the node started.
    pub(crate) bytes_received: u64,
}

impl Prepares {
    /// Fetches into the models folder `dir`.
    pub(crate) fn new(dir: &Path, max_disk: Option<u64>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            max_disk,
            pending: HashMap::new(),
            held: HashMap::new(),
            bytes_received: 0,
        }
    }

    /// The layer ranges being fetched, per model (the ranges asked and not yet held), for adverts.
    pub(crate) fn fetching(&self) -> Vec<hearth_protocol::HeldLayers> {
        let mut out: Vec<hearth_protocol::HeldLayers> = self
            .pending
            .iter()
            .take(hearth_protocol::ADVERT_MODELS_MAX)
            .map(|(model, p)| {
                let mut layers: Vec<(u32, u32)> = p.waiting.iter().map(|(l, _)| *l).collect();
                layers.sort_unstable();
                layers.dedup();
                layers.truncate(hearth_protocol::HELD_RANGES_MAX);
                hearth_protocol::HeldLayers {
                    model: *model,
                    layers,
                }
            })
            .filter(|h| !h.layers.is_empty())
            .collect();
        out.sort_by_key(|h| h.model.0.0);
        out
    }

    /// Whether `id` is a request of one of the fetches.
    pub(crate) fn owns(&self, id: &RequestId) -> bool {
        self.pending.values().any(|p| p.fetch.owns(id))
    }

    /// The coordinator asks this node to hold `p.layers` of `p.model` (which it does not hold
    /// whole): answered at once when held, else once fetched. What became held comes back.
    pub(crate) fn prepare(
        &mut self,
        net: &mut Network,
        coordinator: PeerId,
        p: Prepare,
        channel: WorkChannel,
    ) -> Vec<Held> {
        if self
            .held
            .get(&p.model)
            .is_some_and(|h| covers(&h.layers, p.layers))
        {
            net.respond(channel, WorkResponse::Prepared { bytes_received: 0 });
            return Vec::new();
        }
        for (peer, addrs) in &p.holders {
            net.add_addrs(peer, addrs);
        }
        let holders: Vec<PeerId> = p.holders.iter().map(|(peer, _)| *peer).collect();
        if !self.pending.contains_key(&p.model) {
            let first = 0..hearth_protocol::work::WEIGHTS_CHUNK_BYTES_MAX;
            match Fetch::ranges(
                &self.dir,
                p.model,
                holders.clone(),
                std::iter::once(first).collect(),
            ) {
                Ok(fetch) => {
                    tracing::info!(model = %p.model, layers = ?(p.layers.0..p.layers.1), holders = holders.len(), "fetching layers from peers");
                    self.pending.insert(
                        p.model,
                        Pending {
                            fetch,
                            coordinator,
                            header: None,
                            waiting: Vec::new(),
                            wanted: Vec::new(),
                        },
                    );
                }
                Err(e) => {
                    let why = format!("cannot fetch model {} here: {e}", p.model);
                    net.respond(channel, WorkResponse::Rejected(why));
                    return Vec::new();
                }
            }
        }
        let pending = self.pending.get_mut(&p.model).expect("inserted above");
        pending.fetch.add_holders(holders);
        pending.coordinator = coordinator;
        pending.waiting.push((p.layers, channel));
        self.advance(net, p.model)
    }

    /// An answer to request `id` (one this [`owns`](Self::owns)).
    pub(crate) fn on_response(
        &mut self,
        net: &mut Network,
        id: RequestId,
        answer: Result<WorkResponse, String>,
    ) -> Vec<Held> {
        let Some(model) = self
            .pending
            .iter()
            .find(|(_, p)| p.fetch.owns(&id))
            .map(|(m, _)| *m)
        else {
            return Vec::new();
        };
        let pending = self.pending.get_mut(&model).expect("found above");
        let before = pending.fetch.bytes_received();
        if let Err(e) = pending.fetch.answered(id, answer) {
            let why = format!("the fetch of model {model} failed here: {e}");
            self.fail(net, model, &why);
            return Vec::new();
        }
        self.bytes_received += pending.fetch.bytes_received() - before;
        self.advance(net, model)
    }

    /// Read the header once it is in, want the ranges asked, report liars, ask for more, and
    /// answer whoever waits once their range is held.
    fn advance(&mut self, net: &mut Network, model: ModelId) -> Vec<Held> {
        let (dir, max_disk) = (self.dir.clone(), self.max_disk);
        let Some(pending) = self.pending.get_mut(&model) else {
            return Vec::new();
        };
        for evidence in pending.fetch.take_evidence() {
            tracing::warn!(holder = %evidence.peer, %model, "a holder served bytes that do not verify; reported to the coordinator");
            net.request(
                &pending.coordinator,
                WorkRequest::BadWeights(Box::new(evidence)),
            );
        }
        if pending.header.is_none() {
            let header = pending.fetch.header(GGUF_HEADER_BYTES_MAX, |bytes, size| {
                GgufModel::from_header(bytes, size, model).map_err(|e| e.to_string())
            });
            match header {
                Ok(header) => pending.header = header,
                Err(why) => {
                    self.fail(net, model, &why);
                    return Vec::new();
                }
            }
        }
        if let Some(header) = &pending.header {
            let size = pending.fetch.size();
            let layers_total = header.config.layers as u32;
            let mut bad = Vec::new();
            for (layers, _) in &pending.waiting {
                if layers.1 > layers_total {
                    let why = format!(
                        "layers {}..{} are not a range of the model's {layers_total}",
                        layers.0, layers.1
                    );
                    bad.push((*layers, why));
                } else if !pending.wanted.contains(layers) {
                    let ranges = header.stage_ranges(size, layers.0 as usize..layers.1 as usize);
                    let more: u64 = pending.fetch.partial().map_or(0, |p| {
                        ranges
                            .iter()
                            .flat_map(|r| p.missing(r.clone()))
                            .map(|r| r.end - r.start)
                            .sum()
                    });
                    let used = partials_on_disk(&dir);
                    match max_disk {
                        Some(cap) if used + more > cap => {
                            let why = format!(
                                "fetching layers {}..{} of model {model} needs {more} more bytes on disk; --max-disk allows {cap}, and what this node holds in part already takes {used}",
                                layers.0, layers.1
                            );
                            bad.push((*layers, why));
                        }
                        _ => {
                            pending.wanted.push(*layers);
                            pending.fetch.want(ranges);
                        }
                    }
                }
            }
            for (layers, why) in bad {
                let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut pending.waiting)
                    .into_iter()
                    .partition(|(l, _)| *l == layers);
                pending.waiting = kept;
                for (_, channel) in gone {
                    net.respond(channel, WorkResponse::Rejected(why.clone()));
                }
            }
            if pending.waiting.is_empty() {
                // Nobody waits for it any more.
                self.pending.remove(&model);
                return Vec::new();
            }
        }
        pending.fetch.send(net);
        if pending.header.is_some() && pending.fetch.is_done() {
            let pending = self.pending.remove(&model).expect("found above");
            let received = pending.fetch.bytes_received();
            let held = self.held.entry(model).or_insert_with(|| Held {
                model,
                path: pending.fetch.path(),
                layers: Vec::new(),
            });
            for layers in &pending.wanted {
                if !held.layers.contains(layers) {
                    held.layers.push(*layers);
                }
            }
            // What came through a relay (holders hole punching did not reach): said, since it is
            // slower and on a member's bandwidth.
            let relayed: u64 = pending
                .fetch
                .served()
                .iter()
                .filter(|(peer, _)| net.via(peer) == Some(hearth_net::Via::Relayed))
                .map(|(_, s)| s.bytes)
                .sum();
            tracing::info!(%model, layers = ?held.layers, bytes = received, relayed_bytes = relayed, "layers fetched and verified");
            if relayed > 0 {
                tracing::warn!(%model, relayed_bytes = relayed, "part of the layers came through a relay: no direct path to some holders");
            }
            for (_, channel) in pending.waiting {
                net.respond(
                    channel,
                    WorkResponse::Prepared {
                        bytes_received: received,
                    },
                );
            }
            return vec![held.clone()];
        }
        if pending.fetch.is_stuck() {
            let why = format!(
                "no holder of model {model} served the rest ({} bytes held and kept)",
                pending.fetch.bytes_held()
            );
            self.fail(net, model, &why);
        }
        Vec::new()
    }

    /// The fetch of `model` cannot go on: whoever waits is told why (what is verified stays on
    /// disk for the next try).
    fn fail(&mut self, net: &mut Network, model: ModelId, why: &str) {
        tracing::warn!(%model, %why, "fetching layers failed");
        if let Some(pending) = self.pending.remove(&model) {
            for (_, channel) in pending.waiting {
                net.respond(channel, WorkResponse::Rejected(why.to_string()));
            }
        }
    }
}

/// Bytes the partial files of fetched models (and their outboards) take on disk in `dir`.
fn partials_on_disk(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with('.') && name.contains(".partial")
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_held_range_covers_the_stages_within_it() {
        let held = [(0, 10), (20, 30)];
        assert!(covers(&held, (0, 10)));
        assert!(covers(&held, (2, 5)));
        assert!(covers(&held, (20, 30)));
        assert!(!covers(&held, (5, 15)), "straddles a gap");
        assert!(!covers(&held, (10, 20)));
        assert!(!covers(&[], (0, 1)));
    }
}
