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

/// Largest `POST /v1/jobs` body: a batch of tens of thousands of sentences.
pub const JOB_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most inputs in one job.
pub const JOB_INPUTS_MAX: usize = 100_000;
/// Most replicas a submitter may ask for per unit.
pub const REPLICAS_MAX: u32 = 8;
/// How long a node's request for work is held before it is answered empty (below the work
/// protocol's request timeout).
pub const WORK_FETCH_HOLD_MS: u64 = 10_000;

/// Tokens a generation makes when the request does not say.
pub const GENERATE_TOKENS_DEFAULT: u32 = 64;

/// `max_tokens` of an OpenAI request that gives none.
pub const OPENAI_MAX_TOKENS_DEFAULT: u32 = 256;

/// Stop sequences one OpenAI request may give (OpenAI's own limit).
pub const STOP_SEQUENCES_MAX: usize = 4;

/// How long `POST /v1/embeddings` waits for its job before cancelling it.
pub const OPENAI_EMBED_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// Pipeline sessions running at once; more are refused until one ends.
pub const SESSIONS_MAX: usize = 64;
/// Stages a route has when the request does not say (fewer if fewer peers hold the model).
pub const STAGES_DEFAULT: usize = 3;
/// A pipeline step unanswered this long counts as its stage failing (a step is milliseconds; a
/// prompt's prefill on a slow peer, seconds).
pub const STEP_TIMEOUT_MS: u64 = 15_000;

/// Units one request for work may ask for (a node's `--max-concurrent` is at most this).
pub const SLOTS_PER_REQUEST_MAX: u32 = 64;
/// Events a session's client queue holds beyond its tokens (corrections, the summary).
pub const SESSION_EVENTS_SLACK: usize = 16;

/// Work-protocol requests one peer may send in a second; past it the rest are refused ("slow
/// down") and the peer earns a flood strike. An honest node sends a few: a held fetch and one
/// delivery per unit. (Strikes and bans are the swarm's: `hearth_net::FLOOD_STRIKES_MAX`,
/// `hearth_net::FLOOD_BAN`.)
pub const WORK_REQUESTS_PER_SECOND_MAX: u32 = 200;
