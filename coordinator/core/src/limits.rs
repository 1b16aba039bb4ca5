//! The cores' bounds and timings, each with its reason.

/// Adverts a peer may miss before it is marked offline. Three rides out a lost gossip message or a
/// busy moment without leaving a dead peer listed for long (6 s at the default 2 s heartbeat).
pub const HEARTBEATS_MISSED_MAX: u64 = 3;

/// Bounds on the heartbeat interval a peer may claim, so a peer can neither be timed out instantly
/// nor stay "online" for hours after it dies.
pub const HEARTBEAT_INTERVAL_MIN_MS: u64 = 500;

/// See [`HEARTBEAT_INTERVAL_MIN_MS`].
pub const HEARTBEAT_INTERVAL_MAX_MS: u64 = 60_000;

/// Peers the registry, the ledger and the scheduler's offers remember when the coordinator's
/// policy does not say ([`crate::Policy::peers_max`], `hearth coordinator --peers-max`). Beyond it
/// the registry forgets the longest-silent offline peer (refusing newcomers if every peer is
/// online) and the ledger the longest-silent peer, never-quarantined ones first. Each peer costs
/// under 1.5 KiB across the three (the simulator with 100,000 peers that all advertised and asked
/// for work took 144 MB more than with 1,000, its own peer table included), so this default holds
/// about 15 MiB and a swarm of 100,000 about 150 MiB.
pub const PEERS_MAX_DEFAULT: usize = 10_000;

/// A new peer's estimated error rate, per numeric class: BOINC's starting value. Untrusted until it
/// falls below [`TRUST_ERROR_RATE_MAX`].
pub const ERROR_RATE_INITIAL: f64 = 0.1;

/// Each valid result multiplies the error estimate by this (BOINC's adaptive replication).
pub const ERROR_RATE_VALID_FACTOR: f64 = 0.95;

/// Each invalid result adds this to the error estimate (BOINC's), capped at 1.
pub const ERROR_RATE_INVALID_STEP: f64 = 0.1;

/// Error estimate under which a peer may run units alone (with spot checks). From the initial 0.1
/// it takes 14 valid results in a row to get there.
pub const TRUST_ERROR_RATE_MAX: f64 = 0.05;

/// Valid results in a row a peer needs, whatever its estimate, before it runs anything alone.
pub const TRUST_VALID_RUN_MIN: u32 = 10;

/// Least probability that a trusted peer's unit is replicated anyway, so trust is re-earned
/// continually and a peer that turns after earning it is caught.
pub const SPOT_CHECK_PROBABILITY_MIN: f64 = 0.1;

/// Spot-check probability per unit of error estimate, above the minimum: shakier peers are checked
/// more (at the trust threshold, 0.2).
pub const SPOT_CHECK_PER_ERROR: f64 = 4.0;

/// Strikes (results that lost to a quorum without proof of malice) that quarantine a peer.
pub const STRIKES_QUARANTINE: u32 = 3;

/// First quarantine; each repeat doubles it.
pub const QUARANTINE_BASE_MS: u64 = 10 * 60 * 1000;

/// Longest quarantine: a week, after which the peer starts again untrusted.
pub const QUARANTINE_MAX_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Replicas disagreement may add to a unit beyond the ones it started with; past it the unit fails
/// (visibly) rather than burning the swarm on an input no two peers agree on.
pub const REPLICAS_EXTRA_MAX: u32 = 3;

/// Assignments of one unit (timeouts, refusals, lost peers included) before it fails.
pub const ASSIGNMENTS_MAX: u32 = 12;

/// Benchmark score of the reference peer the timing constants below are for (one core of this
/// project's 2-core CI machine scores about this).
pub const REFERENCE_SCORE: f64 = 20.0;

/// Milliseconds one input takes on the reference peer (MiniLM on a short text: about 8 ms; a
/// generated token of SmolLM2 about 50 ms; this is the embedder's, with the slack below for LLMs).
pub const ITEM_MS_AT_REFERENCE: f64 = 10.0;

/// A deadline is this many times the expected time, so a busy volunteer machine is not written off.
pub const DEADLINE_SLACK: f64 = 20.0;

/// The shortest deadline: covers a model load and a slow start.
pub const DEADLINE_MIN_MS: u64 = 60_000;

/// Work one unit should take on a typical peer when the submitter does not set `--unit-size`: long
/// enough that a round trip and a journal commit are noise, short enough to spread a job.
pub const UNIT_TARGET_MS: u64 = 500;

/// Most inputs per unit chosen by default.
pub const UNIT_ITEMS_DEFAULT_MAX: usize = 64;

/// How long a node's request for work is held before it is answered empty (below the work
/// protocol's request timeout).
pub const WORK_FETCH_HOLD_MS: u64 = 10_000;

/// A pipeline step unanswered this long counts as its stage failing (a step is milliseconds; a
/// prompt's prefill on a slow peer, seconds).
pub const STEP_TIMEOUT_MS: u64 = 15_000;
