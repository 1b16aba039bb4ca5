//! The coordinator's bounds and timings, each with its reason.

/// Adverts a peer may miss before it is marked offline. Three rides out a lost gossip message or a
/// busy moment without leaving a dead peer listed for long (6 s at the default 2 s heartbeat).
pub const HEARTBEATS_MISSED_MAX: u64 = 3;

/// Bounds on the heartbeat interval a peer may claim, so a peer can neither be timed out instantly
/// nor stay "online" for hours after it dies.
pub const HEARTBEAT_INTERVAL_MIN_MS: u64 = 500;
/// See [`HEARTBEAT_INTERVAL_MIN_MS`].
pub const HEARTBEAT_INTERVAL_MAX_MS: u64 = 60_000;

/// Peers the registry remembers. Beyond it the longest-silent offline peer is forgotten; if every
/// peer is online, newcomers are refused until one leaves.
pub const PEERS_MAX: usize = 10_000;

/// How often the registry checks for silent peers.
pub const TICK_INTERVAL_MS: u64 = 250;

/// HTTP requests waiting for the event loop; beyond it handlers wait, so a burst cannot grow memory.
pub const COMMAND_QUEUE_MAX: usize = 256;

/// Largest HTTP request body accepted (the API so far has no bodies worth more).
pub const HTTP_BODY_BYTES_MAX: usize = 64 * 1024;
