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

/// New inbound connections one remote address may open a second; past it the rest are refused
/// before any handshake (see `inbound`). Honest peers open a handful a minute; a whole co-op behind
/// one NAT address joining at once stays well under it.
pub const INBOUND_PER_SECOND_MAX: u32 = 50;

/// Connections to a single peer (QUIC and TCP at once, plus a redial during a handover).
pub const CONNECTIONS_PER_PEER_MAX: u32 = 4;

/// Share of the machine's memory this process may use before it refuses new connections (libp2p's
/// memory connection limits): a swarm under a flood stops growing before the host's owner notices.
/// A node started with `--max-memory` uses that bound plus [`MEMORY_HEADROOM_BYTES`] instead.
pub const MEMORY_SHARE_MAX: f64 = 0.8;

/// What a node may use beyond `--max-memory` (which bounds its models and caches) for everything
/// else (the runtime, buffers, connections) before it refuses new connections.
pub const MEMORY_HEADROOM_BYTES: u64 = 512 * 1024 * 1024;

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

/// How long a work request may wait for its answer: as long as the longest a pipeline stage is
/// given for one step (`hearth_core::pipeline::STEP_BUDGET_MS_MAX`, a long prefill on a slow
/// peer). Callers that want a shorter wait keep their own (the coordinator's step budgets, a
/// node's `ANSWER_WAIT` for its requests for work and deliveries); a peer that goes away fails its
/// requests at once, with its connection.
pub const WORK_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the coordinator holds a request for work before answering it empty.
pub const WORK_FETCH_HOLD: Duration = Duration::from_secs(10);

/// Work-protocol streams open at once per connection.
pub const WORK_STREAMS_MAX: usize = 64;

/// Gossip messages one author may have delivered to us a second. An honest node sends an advert and
/// its membership every 2 s and the coordinator its membership every 2 s; 20 leaves room for bursts
/// (a restart, a new subscriber) and stops a peer that floods the topic.
pub const GOSSIP_MESSAGES_PER_SECOND_MAX: u32 = 20;

/// Seconds over a rate (gossip here, work requests at the coordinator) after which a peer is banned.
pub const FLOOD_STRIKES_MAX: u32 = 3;

/// How long a peer banned for flooding stays banned: its connections are closed and refused.
pub const FLOOD_BAN: Duration = Duration::from_secs(60);

/// How often ping measures the round trip to each connected peer (the routes' `rtt_ms`). Only
/// connected peers are pinged, at most [`CONNECTIONS_MAX`], so a swarm of thousands does not ping
/// itself: a peer probes those it works with, once per interval each.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Listen addresses kept and handed on per peer (a route tells each stage how to reach the next).
pub const ADDRS_PER_PEER_MAX: usize = 8;

/// A relay (`--relay`) holds at most this many reservations (private peers reachable through it).
pub const RELAY_RESERVATIONS_MAX: usize = 512;

/// Reservations one peer may hold on a relay.
pub const RELAY_RESERVATIONS_PER_PEER_MAX: usize = 2;

/// Circuits a relay carries at once. Each costs two streams and a copy buffer, so this bounds
/// what relaying adds to the relay's memory.
pub const RELAY_CIRCUITS_MAX: usize = 128;

/// Circuits one peer may have open through a relay at once, those it opened and those opened to
/// it together (its stages' neighbours, fetches from it and by it, a verifier).
pub const RELAY_CIRCUITS_PER_PEER_MAX: usize = 16;

/// How long a relayed circuit lasts: a whole generation and a weight fetch, where libp2p's
/// default of 2 minutes would cut one.
pub const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(60 * 60);

/// Bytes one relayed circuit carries: a long prompt's activations and a stage's weights, where
/// libp2p's default of 128 KiB would cut one.
pub const RELAY_CIRCUIT_BYTES_MAX: u64 = 1 << 30;

/// How long a reservation lasts before the reserving peer renews it.
pub const RELAY_RESERVATION_DURATION: Duration = Duration::from_secs(60 * 60);

/// Peers a relay remembers as members (their signed gossip accepted); past it the oldest admitted
/// is forgotten (and admitted again with its next advert).
pub const RELAY_MEMBERS_MAX: usize = 4096;

/// Circuits a stranger (a peer not of this swarm, such as a CLI fetching weights) may open through
/// a relay a minute, outside a co-op; in a co-op, none.
pub const RELAY_STRANGER_CIRCUITS_PER_MINUTE: usize = 4;

/// Strangers a relay serves within one minute; past it new ones are refused until the minute's
/// oldest are forgotten.
pub const RELAY_STRANGERS_MAX: usize = 64;

/// How long a peer waits before asking a relay again for a slot it refused (doubling up to
/// [`RELAY_RESERVE_RETRY_MAX`]): a relay admits a peer once its first advert arrives, which may
/// come after its first request.
pub const RELAY_RESERVE_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between requests for a refused relay slot.
pub const RELAY_RESERVE_RETRY_MAX: Duration = Duration::from_secs(30);
