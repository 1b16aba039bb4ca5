//! The coordinator service's bounds and timings, each with its reason (the cores' own are in
//! [`hearth_core::limits`], re-exported here).

pub use hearth_core::limits::*;

/// How often the registry checks for silent peers.
pub const TICK_INTERVAL_MS: u64 = 250;

/// HTTP requests waiting for the event loop; beyond it handlers wait, so a burst cannot grow memory.
pub const COMMAND_QUEUE_MAX: usize = 256;

/// Largest HTTP request body accepted (the API so far has no bodies worth more).
pub const HTTP_BODY_BYTES_MAX: usize = 64 * 1024;

/// Largest `POST /v1/jobs` body: a batch of tens of thousands of sentences.
pub const JOB_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest body of `POST /v1/evidence/weights`: a served range of up to 1 MiB with its hashes, in
/// base64.
pub const EVIDENCE_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Pieces of evidence of bad model bytes remembered, so the same one sent again is not acted on
/// twice.
pub const EVIDENCE_REMEMBERED_MAX: usize = 1024;

/// Most inputs in one job.
pub const JOB_INPUTS_MAX: usize = 100_000;

/// Most replicas a submitter may ask for per unit.
pub const REPLICAS_MAX: u32 = 8;

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

/// Sessions one peer serves stages of at once; a new session is routed past a peer at the limit,
/// and refused (503, saying so) when every peer holding the model is. Half the sessions a stage's
/// kernels keep caches for (`hearth_kernels::SESSIONS_MAX`), so the verifiers' replays on the same
/// peer keep theirs too.
pub const STAGE_SESSIONS_MAX: usize = hearth_kernels::SESSIONS_MAX / 2;

/// Stages a route has when the request does not say (fewer if fewer peers hold the model).
pub const STAGES_DEFAULT: usize = 3;

/// Units one request for work may ask for (a node's `--max-concurrent` is at most this).
pub const SLOTS_PER_REQUEST_MAX: u32 = 64;

/// Events a session's client queue holds beyond its tokens (corrections, the summary).
pub const SESSION_EVENTS_SLACK: usize = 16;

/// Work-protocol requests one peer may send in a second; past it the rest are refused ("slow
/// down") and the peer earns a flood strike. An honest node sends a few: a held fetch and one
/// delivery per unit. (Strikes and bans are the swarm's: `hearth_net::FLOOD_STRIKES_MAX`,
/// `hearth_net::FLOOD_BAN`.)
pub const WORK_REQUESTS_PER_SECOND_MAX: u32 = 200;

/// Largest message between a coordinator group's members: an append of journal batches (a job's
/// payload is up to [`JOB_BODY_BYTES_MAX`]).
pub const GROUP_MESSAGE_BYTES_MAX: usize = 2 * JOB_BODY_BYTES_MAX;

/// How long a member waits for another's answer before Raft counts the message lost.
pub const GROUP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `GET /v1/group` waits for each member's own account of itself; past it the member
/// shows as `unreachable`.
pub const GROUP_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The leader's heartbeat to the other members, ms.
pub const GROUP_HEARTBEAT_MS: u64 = 250;

/// A follower that hears no heartbeat for a random time in this range stands for election, ms: a
/// lost leader is replaced within about the upper bound plus one election, several heartbeats
/// long so a busy machine's late heartbeat does not depose a live leader.
pub const GROUP_ELECTION_TIMEOUT_MS: std::ops::Range<u64> = 1_200..2_400;

/// Journal batches in one Raft append to a member that is catching up.
pub const GROUP_APPEND_ENTRIES_MAX: u64 = 64;

/// Most members a coordinator group has (Raft needs a majority of them up: 3 or 5 is usual).
pub const GROUP_MEMBERS_MAX: usize = 7;

/// How long adding a member waits for it to catch up from the group's log before it votes.
pub const GROUP_CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Messages to other members, and answers to theirs, waiting for the group's swarm; past it the
/// sender waits (Raft sends a handful per member per heartbeat).
pub const GROUP_QUEUE_MAX: usize = 1024;

/// How long a member keeps a connection to another that carries no message (heartbeats keep the
/// leader's busy).
pub const GROUP_IDLE_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a follower that started before its group was founded looks for the founding (the
/// group's admin key, applied from the log), to start answering reads behind the group's keys.
pub const GROUP_FOUNDING_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// A follower rebuilds its replica of the scheduler (for the reads it answers) at most this often
/// while its journal grows: a client polling a follower through a running job would otherwise
/// replay the whole journal on every poll.
pub const FOLLOWER_REPLICA_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);
