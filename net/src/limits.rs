//! Every bound of the swarm, with its reason.

use std::time::Duration;

/// Largest gossip message gossipsub accepts off the wire. Above the protocol's frame limit on
/// purpose: a frame that is too big still reaches our decoder, which names and penalizes its sender.
pub const GOSSIP_BYTES_MAX: usize = 64 * 1024;

/// Established connections, in and out, a peer keeps. A co-op swarm is hundreds of peers; each
/// connection costs buffers and a task.
pub const CONNECTIONS_MAX: u32 = 512;

/// Incoming connections being negotiated at once; the rest wait or fail, so a flood of handshakes
/// cannot exhaust memory.
pub const PENDING_INCOMING_MAX: u32 = 64;

/// Connections to a single peer (QUIC and TCP at once, plus a redial during a handover).
pub const CONNECTIONS_PER_PEER_MAX: u32 = 4;

/// How long an unused connection stays open. Adverts flow every few seconds, so live peers never
/// reach it; it only reaps connections to peers that went quiet.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Invalid messages a peer may send before it is blocked for the rest of this process's life.
pub const BAD_MESSAGES_MAX: u32 = 3;

/// Peers whose strikes are remembered at once; beyond it the ones with the fewest strikes are
/// forgotten, so a Sybil flood cannot grow the table without bound.
pub const PENALTY_PEERS_MAX: usize = 4096;

/// Age past which an older connection from a peer that connects again is taken as left over from
/// before a restart. Two peers dialing each other at once make connections milliseconds apart; a
/// restarted process takes longer than this to come back.
pub const STALE_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// How long a work request may wait for its answer. The coordinator holds a node's request for work
/// up to [`WORK_FETCH_HOLD`] (a long poll), so this must be longer than that.
pub const WORK_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the coordinator holds a request for work before answering it empty.
pub const WORK_FETCH_HOLD: Duration = Duration::from_secs(10);

/// Work-protocol streams open at once per connection.
pub const WORK_STREAMS_MAX: usize = 64;
