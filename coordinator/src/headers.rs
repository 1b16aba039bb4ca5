//! A coordinator with no copy of a model reads what it needs of it (tokenizer, chat template,
//! layer count, tensor table) from the file's header, fetched from the peers that hold it and
//! verified against the model's id like any other range ([`hearth_net::fetch`]). The header's
//! blocks are kept in a sparse file in the data folder, so a restart reads them from disk.
//! Generation requests for the model wait for it (at most [`HEADER_WAITING_MAX`] a model).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hearth_kernels::{GGUF_HEADER_BYTES_MAX, GgufModel};
use hearth_net::fetch::Fetch;
use hearth_net::{Network, RequestId};
use hearth_protocol::work::{WEIGHTS_CHUNK_BYTES_MAX, WeightsEvidence, WorkResponse};
use hearth_protocol::{ModelId, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::sessions::{GenerateRequest, Refusal, SessionEvent};

/// Generation requests that may wait for one model's header.
pub(crate) const HEADER_WAITING_MAX: usize = crate::limits::SESSIONS_MAX;

/// Where the headers read from peers are kept, in the data folder.
const HEADERS_DIR: &str = "headers";

/// A generation request waiting for its model's header.
pub(crate) struct Waiting {
    pub(crate) request: Box<GenerateRequest>,
    pub(crate) events: mpsc::Sender<SessionEvent>,
    pub(crate) reply: oneshot::Sender<Result<(), Refusal>>,
}

/// What came of a header fetch.
pub(crate) enum Outcome {
    /// The header, the file's size, and who waited for it.
    Ready(Box<GgufModel>, u64, Vec<Waiting>),
    /// It could not be read; why, and who waited.
    Failed(String, Vec<Waiting>),
}

struct Reading {
    fetch: Fetch,
    waiting: Vec<Waiting>,
}

/// The headers being read.
pub(crate) struct Headers {
    dir: PathBuf,
    reading: HashMap<ModelId, Reading>,
    /// Bytes received from peers for headers, since the start.
    pub(crate) bytes_received: u64,
}

impl Headers {
    /// Headers kept under `data_dir`.
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(HEADERS_DIR),
            reading: HashMap::new(),
            bytes_received: 0,
        }
    }

    /// Whether `id` is a request of one of the header fetches.
    pub(crate) fn owns(&self, id: &RequestId) -> bool {
        self.reading.values().any(|r| r.fetch.owns(id))
    }

    /// `waiting` wants model `id`'s header, which `holders` (with their addresses) hold: read
    /// from disk at once when a fetch before kept it, else fetched.
    pub(crate) fn wait(
        &mut self,
        net: &mut Network,
        id: ModelId,
        holders: Vec<(PeerId, Vec<String>)>,
        waiting: Waiting,
    ) -> Option<Outcome> {
        for (peer, addrs) in &holders {
            net.add_addrs(peer, addrs);
        }
        let peers: Vec<PeerId> = holders.iter().map(|(p, _)| *p).collect();
        if !self.reading.contains_key(&id) {
            let first = 0..WEIGHTS_CHUNK_BYTES_MAX;
            let fetch = std::fs::create_dir_all(&self.dir)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    Fetch::ranges(
                        &self.dir,
                        id,
                        peers.clone(),
                        std::iter::once(first).collect(),
                    )
                    .map_err(|e| e.to_string())
                });
            match fetch {
                Ok(fetch) => {
                    tracing::info!(model = %id, holders = peers.len(), "reading the model's header from peers");
                    self.reading.insert(
                        id,
                        Reading {
                            fetch,
                            waiting: Vec::new(),
                        },
                    );
                }
                Err(why) => {
                    let why = format!("the header of model {id} cannot be kept here: {why}");
                    return Some(Outcome::Failed(why, vec![waiting]));
                }
            }
        }
        let reading = self.reading.get_mut(&id).expect("inserted above");
        if reading.waiting.len() >= HEADER_WAITING_MAX {
            let why = format!(
                "{HEADER_WAITING_MAX} requests already wait for the header of model {id}; try again shortly"
            );
            return Some(Outcome::Failed(why, vec![waiting]));
        }
        reading.fetch.add_holders(peers);
        reading.waiting.push(waiting);
        self.advance(net, id).0
    }

    /// An answer to request `request` (one this [`owns`](Self::owns)), and any evidence against
    /// a holder that served bad bytes.
    pub(crate) fn on_response(
        &mut self,
        net: &mut Network,
        request: RequestId,
        answer: Result<WorkResponse, String>,
    ) -> (Option<Outcome>, Vec<WeightsEvidence>) {
        let Some(id) = self
            .reading
            .iter()
            .find(|(_, r)| r.fetch.owns(&request))
            .map(|(id, _)| *id)
        else {
            return (None, Vec::new());
        };
        let reading = self.reading.get_mut(&id).expect("found above");
        let before = reading.fetch.bytes_received();
        if let Err(e) = reading.fetch.answered(request, answer) {
            let reading = self.reading.remove(&id).expect("found above");
            let why = format!("the header of model {id} cannot be kept here: {e}");
            return (Some(Outcome::Failed(why, reading.waiting)), Vec::new());
        }
        self.bytes_received += reading.fetch.bytes_received() - before;
        self.advance(net, id)
    }

    fn advance(
        &mut self,
        net: &mut Network,
        id: ModelId,
    ) -> (Option<Outcome>, Vec<WeightsEvidence>) {
        let Some(reading) = self.reading.get_mut(&id) else {
            return (None, Vec::new());
        };
        let evidence = reading.fetch.take_evidence();
        let header = reading.fetch.header(GGUF_HEADER_BYTES_MAX, |bytes, size| {
            GgufModel::from_header(bytes, size, id).map_err(|e| e.to_string())
        });
        let outcome = match header {
            Ok(Some(model)) => {
                let size = reading.fetch.size();
                let reading = self.reading.remove(&id).expect("found above");
                tracing::info!(model = %id, bytes = reading.fetch.bytes_received(), "the model's header read from peers");
                Some(Outcome::Ready(Box::new(model), size, reading.waiting))
            }
            Ok(None) => {
                reading.fetch.send(net);
                if reading.fetch.is_stuck() {
                    let reading = self.reading.remove(&id).expect("found above");
                    let why = format!(
                        "no peer holding model {id} served its header; try again once one is online"
                    );
                    Some(Outcome::Failed(why, reading.waiting))
                } else {
                    None
                }
            }
            Err(why) => {
                let reading = self.reading.remove(&id).expect("found above");
                Some(Outcome::Failed(
                    format!("model {id} cannot be read: {why}"),
                    reading.waiting,
                ))
            }
        };
        (outcome, evidence)
    }
}
