//! The node's bounds and timings, each with its reason.

use std::time::Duration;

/// Default interval between adverts. The coordinator marks a node offline after a few missed ones,
/// so this sets how fast a dead node is noticed; each advert is about 500 bytes.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How often a node that has lost every connection to its join peers dials them again.
pub const REDIAL_INTERVAL: Duration = Duration::from_secs(5);

/// How long one HTTP request to learn the coordinator's addresses may take.
pub const JOIN_HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `/v1/swarm` answer read, so a hostile URL cannot make the node buffer without bound.
pub const JOIN_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Model files hashed at start; a volunteer's folder holds a handful.
pub const MODEL_FILES_MAX: usize = hearth_protocol::ADVERT_MODELS_MAX;

/// Units queued for the executor beyond the one it runs (the coordinator gives at most the slots
/// asked for, so this is never reached by an honest coordinator).
pub const EXECUTOR_QUEUE_MAX: usize = 64;

/// Wait before asking again after a request for work failed or was answered oddly.
pub const FETCH_RETRY: Duration = Duration::from_secs(1);

/// How long a request for work or a delivery waits for the coordinator's answer before it is sent
/// again (above the coordinator's hold of a request for work, `WORK_FETCH_HOLD`).
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// How often the outbox is offered to the coordinator again while results wait in it.
pub const REDELIVER_INTERVAL: Duration = Duration::from_secs(2);

/// How much longer a unit takes on a node started with `--fault slow`.
#[cfg(feature = "fault-injection")]
pub const FAULT_SLOW_DELAY: Duration = Duration::from_secs(5);

/// Pipeline steps queued for the stage thread; beyond it a step is refused at once.
pub const STAGE_QUEUE_MAX: usize = 64;

/// Most steps the stage thread runs as one batch (one pass over a range's weights for several
/// sessions' rows: continuous batching). Steps queued together for the same range are batched.
pub const STAGE_BATCH_MAX: usize = 16;

/// Most rows in one batch: a step with more (a long prefill) runs alone, so it does not hold the
/// sessions decoding beside it for longer than it must.
pub const STAGE_BATCH_ROWS_MAX: usize = 64;

/// A pipeline session's route and caches are freed after this long unused (a coordinator that
/// went away without ending it; one that is there ends its sessions on every stage itself). Longer
/// than the coordinator may wait for one step (`hearth_net::WORK_REQUEST_TIMEOUT`, a long prefill
/// on slow peers): the first stage's route sits unused while the stages after it work through a
/// prompt of thousands of tokens, and it must still be there when the last stage hands it the
/// first token. (At 300 s, an 8,170-token prompt through 3 stages on the 2-core box, 6.3 minutes,
/// found the first stage's route forgotten; the honest stage was blamed and the prefill rerun.)
pub const STAGE_SESSION_TTL: Duration =
    Duration::from_secs(hearth_net::WORK_REQUEST_TIMEOUT.as_secs() + 60);

const _: () = assert!(STAGE_SESSION_TTL.as_secs() > hearth_net::WORK_REQUEST_TIMEOUT.as_secs());

/// Layer ranges a node keeps loaded at once; the least recently used is dropped for a new one.
pub const STAGES_LOADED_MAX: usize = 4;

/// Bytes all pipeline sessions' KV caches may hold together on a node (a full-context session of
/// the default model over all 30 layers is about 90 MiB).
pub const STAGE_CACHE_BYTES_MAX: usize = 1 << 30;

/// How long a node stopping on SIGTERM may take to finish its units and deliver its outbox before it
/// exits anyway (the outbox keeps what is left for the next start).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
