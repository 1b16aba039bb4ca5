//! The coordinator's shell: one event loop owns the swarm and the registry.
//!
//! ```text
//!  HTTP handlers ──(Command + oneshot)──▶ ┌──────── loop ────────┐
//!  tick timer ──────────────────────────▶ │ registry.handle(..)  │ ◀──▶ swarm (gossip adverts)
//!  shutdown future ─────────────────────▶ └──────────────────────┘
//! ```

use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_net::libp2p::Multiaddr;
use hearth_net::libp2p::multiaddr::Protocol;
use hearth_net::{NetConfig, NetEvent, Network, load_or_create_identity};
use hearth_protocol::Message;
use hearth_protocol::api::SwarmInfo;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

use crate::http::{Command, router};
use crate::limits::{COMMAND_QUEUE_MAX, TICK_INTERVAL_MS};
use crate::registry::{Input, Output, Registry};
use crate::sessions::Sessions;
use crate::work::Work;
use crate::{Error, Result};

/// File in the data folder holding the URL the HTTP API listens on, written once it is bound (useful
/// with `--http 127.0.0.1:0`).
pub const API_URL_FILE: &str = "api.url";

/// Everything a coordinator needs to start.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Folder holding the identity key and the coordinator's state.
    pub data_dir: PathBuf,
    /// Transports, listen addresses, mDNS.
    pub net: NetConfig,
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// Replicas per unit for jobs that do not say; `None` for adaptive replication. (The seed
    /// behind spot checks is not configurable: it is drawn from the OS and kept in the journal.)
    pub replicas: Option<u32>,
    /// Peers remembered by the registry, the ledger and the scheduler
    /// ([`hearth_core::Policy::peers_max`]).
    pub peers_max: usize,
    /// Where the default LLM is, for tokenizing prompts of pipelined generation.
    pub models_dir: Option<PathBuf>,
    /// No API key needed (but for the admin endpoints). Loopback only.
    pub open: bool,
    /// Serve plain HTTP on a non-loopback address (otherwise refused there).
    pub insecure_http: bool,
    /// Serve the API over TLS with this certificate chain and private key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Admit only members of the co-op whose folder this is (`--coop DIR`: its key and revocations).
    pub coop: Option<PathBuf>,
    /// More routes served beside the API, without its key check (the `hearth` binary mounts the
    /// dashboard's page and assets here; the page then calls the API like any client).
    pub routes: Option<axum::Router>,
    /// The coordinator group this one is a member of (`--group`): each member's group address,
    /// ending in `/p2p/PEER_ID`, this one's among them. Empty: a lone coordinator.
    pub group: Vec<String>,
    /// A new member of an existing group (`--group-join`): it waits to be added (`hearth group
    /// add`) rather than found a group of the members it was given.
    pub group_join: bool,
    /// More routes behind the admin key, under `/v1/admin/` (a group's membership changes).
    pub admin_routes: Option<axum::Router>,
    /// A group leader's way to keep co-op revocations (through Raft).
    pub(crate) revocations: Option<crate::coop::Replicate>,
}

impl CoordinatorConfig {
    /// Default swarm port (QUIC on UDP and TCP alike).
    pub const SWARM_PORT: u16 = 7071;
    /// Default HTTP address: loopback, since the API has no TLS yet.
    pub const HTTP_ADDR: &str = "127.0.0.1:7070";

    /// A configuration with Hearth's defaults for everything but the data folder.
    pub fn new(data_dir: PathBuf) -> Self {
        let port = Self::SWARM_PORT;
        Self {
            data_dir,
            net: NetConfig {
                listen: vec![
                    format!("/ip4/0.0.0.0/udp/{port}/quic-v1")
                        .parse()
                        .expect("valid multiaddr"),
                    format!("/ip4/0.0.0.0/tcp/{port}")
                        .parse()
                        .expect("valid multiaddr"),
                ],
                agent: format!("hearth-coordinator/{}", env!("CARGO_PKG_VERSION")),
                ..NetConfig::default()
            },
            http: Self::HTTP_ADDR.parse().expect("valid socket address"),
            replicas: None,
            peers_max: crate::PEERS_MAX_DEFAULT,
            models_dir: None,
            open: false,
            insecure_http: false,
            tls: None,
            routes: None,
            coop: None,
            group: Vec::new(),
            group_join: false,
            admin_routes: None,
            revocations: None,
        }
    }
}

/// Run a coordinator until `shutdown` resolves: alone, or as a member of the group
/// `config.group` names.
pub async fn run(config: CoordinatorConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    if !config.group.is_empty() {
        return run_group(config, shutdown).await;
    }
    let (key, created) = load_or_create_identity(&config.data_dir)?;
    let (dir, replicas, peers_max) = (config.data_dir.clone(), config.replicas, config.peers_max);
    let work = move || Work::open(&dir, replicas, peers_max);
    let keys_dir = config.data_dir.clone();
    let keys = move || crate::keys::Keys::open(&keys_dir);
    serve(config, key, created, work, keys, shutdown).await
}

/// A member of a coordinator group: follow (answer `GET /v1/group`, send the rest of the API to
/// the leader) until elected; then run the coordinator under the group's swarm identity, its
/// journal replicated, until no longer the leader; and again.
async fn run_group(
    mut config: CoordinatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    use futures::FutureExt;
    let (member_key, _) = load_or_create_identity(&config.data_dir)?;
    let members = config
        .group
        .iter()
        .map(|a| crate::group::Member::parse(a))
        .collect::<Result<Vec<_>>>()?;
    // One API address whichever the role: a port 0 is chosen once, here.
    if config.http.port() == 0 {
        let probe = std::net::TcpListener::bind(config.http).map_err(|error| Error::Http {
            addr: config.http,
            error,
        })?;
        config.http = probe.local_addr().map_err(|error| Error::Http {
            addr: config.http,
            error,
        })?;
    }
    let tls = config
        .tls
        .as_ref()
        .map(|(cert, key)| crate::tls::server_config(cert, key))
        .transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let api = format!("{scheme}://{}", config.http);
    write_atomically(&config.data_dir.join(API_URL_FILE), &format!("{api}\n"))?;
    let group = crate::group::Group::start(
        &config.data_dir,
        &member_key,
        &members,
        api,
        !config.group_join,
    )
    .await?;
    // Every member keeps the group's admin key in its admin.key, once the group is founded, so
    // `hearth apikey --data-dir` works on any of them.
    {
        let (group, dir) = (group.clone(), config.data_dir.clone());
        tokio::spawn(async move {
            loop {
                if let Some(admin) = group.admin_key() {
                    if let Err(error) = crate::keys::write_admin_key(&dir, &admin) {
                        tracing::warn!(%error, "cannot write the group's admin key");
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    let shutdown = shutdown.shared();
    let stopped = || shutdown.clone().now_or_never().is_some();
    loop {
        // Following: the small API until elected.
        let listener = bind_retrying(config.http).await?;
        let (stop, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let reads = follower_reads(&group, &config);
        let answers_reads = reads.is_some();
        let app = crate::group::follower_routes(group.clone(), reads);
        let tls_now = tls.clone();
        let server = tokio::spawn(async move {
            match tls_now {
                Some(tls) => crate::tls::serve(listener, app, tls, stopped_rx).await,
                None => {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = stopped_rx.await;
                    });
                    if let Err(error) = serve.await {
                        tracing::error!(%error, "HTTP server failed");
                    }
                }
            }
        });
        tracing::info!("following the group's leader");
        // Founded since this API started (its keys unknown before): start it again with reads.
        let founded = async {
            if answers_reads {
                std::future::pending::<()>().await;
            }
            while group.admin_key().is_none() {
                tokio::time::sleep(crate::limits::GROUP_FOUNDING_POLL).await;
            }
        };
        let refounded = tokio::select! {
            () = group.until_leader() => false,
            () = shutdown.clone() => false,
            () = founded => true,
        };
        let _ = stop.send(());
        let _ = server.await;
        if stopped() || group.state() == openraft::ServerState::Shutdown {
            break;
        }
        if refounded {
            continue;
        }
        // Leading: the coordinator proper, on the replicated journal.
        let identity = match group.take_office().await {
            Ok(identity) => identity,
            Err(error) => {
                tracing::warn!(%error, "elected, but could not take office");
                continue;
            }
        };
        tracing::info!("leading the group: starting the coordinator from the replicated journal");
        let raft = group.raft.clone();
        let runtime = tokio::runtime::Handle::current();
        let path = group.path.clone();
        let commit = Box::new(
            move |batches: Vec<(crate::journal::Ticket, crate::journal::Batch)>| {
                runtime
                    .block_on(raft.client_write(crate::group::Proposal::Batches(batches)))
                    .map(drop)
                    .map_err(|e| Error::Journal {
                        path: path.clone(),
                        message: format!("not committed by the group: {e}"),
                    })
            },
        );
        let (db, path) = (group.db.clone(), group.path.clone());
        let (replicas, peers_max) = (config.replicas, config.peers_max);
        let work = move || {
            let journal = crate::journal::Journal::replicated(db, path, commit)?;
            Work::with_journal(journal, replicas, peers_max)
        };
        let admin = group
            .admin_key()
            .ok_or_else(|| Error::Refused("the group's admin key is not applied".into()))?;
        crate::keys::write_admin_key(&config.data_dir, &admin)?;
        let (db, path, raft) = (group.db.clone(), group.path.clone(), group.raft.clone());
        let keys = move || {
            let runtime = tokio::runtime::Handle::current();
            let failed = path.clone();
            let replicate: crate::keys::Replicate = Box::new(move |record| {
                let proposal = crate::group::Proposal::Key(record.clone());
                let written = async {
                    raft.client_write(proposal)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                };
                tokio::task::block_in_place(|| runtime.block_on(written)).map_err(|e| {
                    Error::Journal {
                        path: failed.clone(),
                        message: format!("key not committed by the group: {e}"),
                    }
                })
            });
            crate::keys::Keys::replicated(db, path, &admin, replicate)
        };
        let mut leading = config.clone();
        let routes = crate::group::routes(group.clone());
        leading.routes = Some(match leading.routes.take() {
            Some(extra) => extra.merge(routes),
            None => routes,
        });
        leading.admin_routes = Some(crate::group::admin_routes(group.clone()));
        // Revocations are kept by every member as it applies them; proposed without waiting (the
        // gate applies one at once, and it is signed by the co-op key, so it checks anywhere).
        let raft = group.raft.clone();
        leading.revocations = Some(crate::coop::Replicate(std::sync::Arc::new(
            move |revocation: &hearth_protocol::coop::Revocation| {
                let (raft, proposal) = (
                    raft.clone(),
                    crate::group::Proposal::Revocation(revocation.clone()),
                );
                tokio::spawn(async move {
                    if let Err(error) = raft.client_write(proposal).await {
                        tracing::warn!(%error, "revocation not replicated to the group");
                    }
                });
            },
        )));
        let until = {
            let (group, shutdown) = (group.clone(), shutdown.clone());
            async move {
                tokio::select! {
                    () = group.until_not_leader() => {}
                    () = shutdown => {}
                }
            }
        };
        match serve(leading, identity, false, work, keys, until).await {
            Ok(()) => tracing::info!("stopped leading"),
            Err(error) => tracing::warn!(%error, "stopped leading"),
        }
        if stopped() {
            break;
        }
    }
    let _ = group.raft.shutdown().await;
    Ok(())
}

/// A follower's answers to reads: the read routes, behind the group's keys, over a replica of the
/// scheduler rebuilt from this member's journal whenever it has applied more of the group's log
/// since the last read. `None` until the group is founded (its admin key applied).
fn follower_reads(
    group: &std::sync::Arc<crate::group::Group>,
    config: &CoordinatorConfig,
) -> Option<axum::Router> {
    let admin = group.admin_key()?;
    let refuse = |path: PathBuf| {
        move |_: &crate::keys::KeyRecord| -> Result<()> {
            Err(Error::Refused(format!(
                "{}: a follower makes no keys",
                path.display()
            )))
        }
    };
    let keys = crate::keys::Keys::replicated(
        group.db.clone(),
        group.path.clone(),
        &admin,
        Box::new(refuse(group.path.clone())),
    )
    .map_err(|error| tracing::warn!(%error, "a follower's key store"))
    .ok()?;
    let keys = std::sync::Arc::new(keys);
    let auth = crate::http::Auth {
        keys: keys.clone(),
        open: config.open,
        logins: Default::default(),
    };
    let (commands, mut asked) = mpsc::channel::<Command>(COMMAND_QUEUE_MAX);
    let (group, replicas, peers_max) = (group.clone(), config.replicas, config.peers_max);
    tokio::spawn(async move {
        // The replica, the log index it was rebuilt at, and when.
        let mut replica: Option<(u64, std::time::Instant, Work)> = None;
        while let Some(command) = asked.recv().await {
            let applied = group.applied_index();
            let stale = replica.as_ref().is_none_or(|(at, when, _)| {
                *at != applied && when.elapsed() >= crate::limits::FOLLOWER_REPLICA_REFRESH
            });
            if stale {
                if let Err(error) = keys.reload() {
                    tracing::warn!(%error, "a follower's keys, read again");
                }
                let (db, path) = (group.db.clone(), group.path.clone());
                let failed = path.clone();
                let commit: crate::journal::Commit = Box::new(move |_| {
                    Err(Error::Refused(format!(
                        "{}: a follower's replica writes nothing",
                        failed.display()
                    )))
                });
                let rebuilt = tokio::task::block_in_place(|| {
                    crate::journal::Journal::replicated(db, path, commit)
                        .and_then(|journal| Work::replica(journal, replicas, peers_max))
                });
                match rebuilt {
                    Ok(work) => replica = Some((applied, std::time::Instant::now(), work)),
                    Err(error) => {
                        tracing::warn!(%error, "a follower's replica of the journal");
                        replica = None;
                    }
                }
            }
            let Some((_, _, work)) = &replica else {
                continue; // the handler answers 503: the command was dropped
            };
            match command {
                Command::Jobs(reply) => drop(reply.send(work.jobs())),
                Command::Job { id, units, reply } => {
                    if let Ok(status) = work.status(id, units) {
                        let _ = reply.send(status);
                    }
                }
                Command::Output {
                    id,
                    receipts,
                    reply,
                } => drop(reply.send(work.lines(id, receipts))),
                _ => {}
            }
        }
    });
    Some(crate::http::read_router(commands, auth))
}

/// Bind the API's address, waiting a moment for the last holder (this process's other role) to
/// let go of it.
async fn bind_retrying(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(error) if tries < 50 && error.kind() == std::io::ErrorKind::AddrInUse => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(Error::Http { addr, error }),
        }
    }
}

/// Run the coordinator proper with `key` as its swarm identity and the scheduler `work` opens.
async fn serve(
    config: CoordinatorConfig,
    key: hearth_protocol::SecretKey,
    created: bool,
    work: impl FnOnce() -> Result<Work>,
    keys: impl FnOnce() -> Result<crate::keys::Keys>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let peer = key.public().peer_id();
    let span = tracing::info_span!("coordinator", peer = %peer.short());
    async move {
        tracing::info!(peer_id = %peer, created, data_dir = %config.data_dir.display(), "identity");
        let loopback = config.http.ip().is_loopback();
        if config.open && !loopback {
            return Err(Error::Refused(format!(
                "--open serves the API without keys, so only on a loopback address, not {}",
                config.http
            )));
        }
        if !loopback && config.tls.is_none() && !config.insecure_http {
            return Err(Error::Refused(format!(
                "the API on {} would be plain HTTP on a network: keys and prompts would cross it in the clear. \
                 Give --tls-cert and --tls-key, or pass --insecure-http on a network you trust",
                config.http
            )));
        }
        let tls = config
            .tls
            .as_ref()
            .map(|(cert, key)| crate::tls::server_config(cert, key))
            .transpose()?;
        let keys = std::sync::Arc::new(keys()?);
        if config.open {
            tracing::warn!("--open: the HTTP API needs no key; anyone who can reach {} can use it", config.http);
        }
        let auth = crate::http::Auth {
            keys,
            open: config.open,
            logins: Default::default(),
        };
        let mut coop = config
            .coop
            .as_ref()
            .map(|dir| {
                crate::coop::Coop::open(dir, &config.data_dir, peer, wall_ms())
                    .map(|coop| coop.replicated(config.revocations.clone()))
            })
            .transpose()?;
        let mut network = Network::new(key, &config.net)?;
        if let Some(coop) = &mut coop {
            network.join_coop([*coop.public()], coop.take_loaded())?;
        }
        let work = work()?;

        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|error| Error::Http {
                addr: config.http,
                error,
            })?;
        let http_addr = listener.local_addr().map_err(|error| Error::Http {
            addr: config.http,
            error,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{http_addr}");
        write_atomically(&config.data_dir.join(API_URL_FILE), &format!("{url}\n"))?;
        tracing::info!(%url, "HTTP API");

        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE_MAX);
        let extra_routes = config.routes.clone();
        let admin_routes = config.admin_routes.clone();
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            async move {
                let mut app = router(commands_tx, auth, admin_routes);
                if let Some(routes) = extra_routes {
                    app = app.merge(routes);
                }
                if let Some(tls) = tls {
                    crate::tls::serve(listener, app, tls, http_stopped).await;
                    return;
                }
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = http_stopped.await;
                });
                if let Err(error) = serve.await {
                    tracing::error!(%error, "HTTP server failed");
                }
            }
            .in_current_span(),
        );

        let sessions = Sessions::new(work.secret().clone());
        let mut coordinator = Coordinator {
            network,
            registry: Registry::new(config.peers_max, work.secret().registry()),
            work,
            sessions,
            models: crate::models::Models::new(config.models_dir.clone()),
            headers: crate::headers::Headers::new(&config.data_dir),
            listen_addrs: Vec::new(),
            coop,
            last_membership: None,
            last_revocations: None,
            flood: hearth_net::FloodGuard::new(crate::limits::WORK_REQUESTS_PER_SECOND_MAX),
            evidence_seen: std::collections::VecDeque::new(),
        };
        let result = coordinator.event_loop(commands, shutdown).await;
        let _ = stop_http.send(());
        let _ = server.await;
        if let Err(error) = &result {
            tracing::error!(%error, "stopped on a journal failure");
        } else {
            tracing::info!("stopped");
        }
        result
    }
    .instrument(span)
    .await
}

struct Coordinator {
    network: Network,
    registry: Registry,
    work: Work,
    sessions: Sessions,
    /// The models the coordinator reads itself (tokenizers, shapes).
    models: crate::models::Models,
    /// Headers of models it has no copy of, being read from peers.
    headers: crate::headers::Headers,
    listen_addrs: Vec<Multiaddr>,
    /// `--coop`: members only.
    coop: Option<crate::coop::Coop>,
    /// When the coordinator's own certificate was last published.
    last_membership: Option<std::time::Instant>,
    /// When the co-op's revocations were last published again.
    last_revocations: Option<std::time::Instant>,
    /// Work requests per peer in the current second, its flood strikes and bans.
    flood: hearth_net::FloodGuard<hearth_protocol::PeerId>,
    /// The statements of bad model bytes already acted on, latest last (at most
    /// [`crate::limits::EVIDENCE_REMEMBERED_MAX`]): the same evidence sent again does not
    /// quarantine its holder again (each quarantine would double the last).
    evidence_seen: std::collections::VecDeque<[u8; 32]>,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Coordinator {
    /// Wall-clock milliseconds: deadlines in the journal must mean the same after a restart.
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    async fn event_loop(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_INTERVAL_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let committing = self.work.committing();
            tokio::select! {
                () = &mut shutdown => return self.work.flush(&mut self.network),
                () = committing => self.work.released(&mut self.network)?,
                event = self.network.next() => {
                    self.on_event(event)?;
                    self.record_stage_faults()?;
                }
                Some(command) = commands.recv() => self.on_command(command)?,
                _ = tick.tick() => {
                    let now = self.now_ms();
                    self.publish_membership();
                    self.lift_bans();
                    let outputs = self.registry.handle(now, Input::Tick);
                    self.log(outputs)?;
                    self.work.tick(&mut self.network, now)?;
                    let work = &self.work;
                    let standing = |p: &hearth_protocol::PeerId| work.standing(p, now);
                    self.sessions.tick(&mut self.network, &self.registry, &standing, now);
                    self.record_stage_faults()?;
                }
            }
        }
    }

    /// Count a work request from `peer`: false past [`WORK_REQUESTS_PER_SECOND_MAX`] this second.
    /// Each second over the limit is a strike; at [`hearth_net::FLOOD_STRIKES_MAX`] the peer is
    /// banned for [`hearth_net::FLOOD_BAN`].
    ///
    /// [`WORK_REQUESTS_PER_SECOND_MAX`]: crate::limits::WORK_REQUESTS_PER_SECOND_MAX
    fn within_rate(&mut self, peer: hearth_protocol::PeerId) -> bool {
        use crate::limits::WORK_REQUESTS_PER_SECOND_MAX;
        use hearth_net::{FLOOD_BAN, Flood};
        match self.flood.count(&peer, hearth_net::monotonic_ms()) {
            Flood::Within => true,
            Flood::Over => false,
            Flood::Throttled(strikes) => {
                tracing::warn!(%peer, strikes, "throttled: over {WORK_REQUESTS_PER_SECOND_MAX} work requests a second");
                false
            }
            Flood::Ban => {
                tracing::warn!(%peer, ban_s = FLOOD_BAN.as_secs(), "banned for flooding: connections closed and refused");
                self.network
                    .swarm
                    .behaviour_mut()
                    .blocked
                    .block_peer(hearth_net::to_libp2p_peer_id(&peer));
                false
            }
        }
    }

    /// Lift the flood bans that have run their time.
    fn lift_bans(&mut self) {
        for peer in self.flood.lift(hearth_net::monotonic_ms()) {
            tracing::info!(%peer, "flood ban lifted");
            self.network
                .swarm
                .behaviour_mut()
                .blocked
                .unblock_peer(hearth_net::to_libp2p_peer_id(&peer));
        }
    }

    /// Publish the coordinator's own certificate, for the nodes to check (every 2 s).
    fn publish_membership(&mut self) {
        let Some(coop) = &self.coop else { return };
        let due = self
            .last_membership
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(2));
        if due {
            let message = Message::Membership(coop.own().clone());
            if self.network.publish(&message).is_ok() {
                self.last_membership = Some(std::time::Instant::now());
            }
        }
    }

    /// A revocation from the API: the gate applies it (refusing the member at once) and spreads
    /// it; it is kept for restarts.
    fn apply_revocation(
        &mut self,
        revocation: hearth_protocol::coop::Revocation,
    ) -> Option<String> {
        let coop = self.coop.as_ref()?;
        match self.network.revoke(revocation.clone()) {
            Ok(_) => coop.keep(&revocation).err().map(|e| e.to_string()),
            Err(why) => {
                tracing::warn!(%why, "revocation ignored");
                Some(why.to_string())
            }
        }
    }

    /// Start a generation session of `llm`.
    fn start_session(
        &mut self,
        now: u64,
        request: crate::sessions::GenerateRequest,
        llm: std::sync::Arc<crate::models::Llm>,
        events: mpsc::Sender<crate::sessions::SessionEvent>,
    ) -> Result<(), crate::sessions::Refusal> {
        let work = &self.work;
        let standing = |p: &hearth_protocol::PeerId| work.standing(p, now);
        self.sessions.start(
            &mut self.network,
            &self.registry,
            &standing,
            now,
            request,
            llm,
            events,
        )
    }

    /// The online peers that hold model `id` whole, with where they listen.
    fn holders(
        &self,
        id: &hearth_protocol::ModelId,
    ) -> Vec<(hearth_protocol::PeerId, Vec<String>)> {
        let now = self.now_ms();
        let work = &self.work;
        let standing = |p: &hearth_protocol::PeerId| work.standing(p, now);
        crate::sessions::holders(&self.network, &self.registry, &standing, id)
    }

    /// A header read from peers (or not): the requests that waited for it start (or are told).
    fn header_outcome(&mut self, now: u64, outcome: crate::headers::Outcome) {
        use crate::headers::Outcome;
        match outcome {
            Outcome::Ready(model, size, waiting) => {
                let added = self.models.add_header(&model, size);
                for w in waiting {
                    let answer = match &added {
                        Ok(()) => match self.models.llm(w.request.model.as_deref()) {
                            Ok(llm) => self.start_session(now, *w.request, llm, w.events),
                            Err(why) => Err(crate::sessions::Refusal::Unavailable(why.to_string())),
                        },
                        Err(why) => Err(crate::sessions::Refusal::Unavailable(why.to_string())),
                    };
                    let _ = w.reply.send(answer);
                }
            }
            Outcome::Failed(why, waiting) => {
                for w in waiting {
                    let _ = w
                        .reply
                        .send(Err(crate::sessions::Refusal::Unavailable(why.clone())));
                }
            }
        }
    }

    /// A holder's signed answer that does not verify against the model's id: the holder is
    /// quarantined. Its signature must check (or anyone could frame it), and the bytes must fail
    /// (a good answer proves nothing against it).
    fn weights_evidence(
        &mut self,
        e: &hearth_protocol::work::WeightsEvidence,
    ) -> Result<(), String> {
        if !e.is_signed() {
            return Err(format!("{} did not sign these bytes", e.peer));
        }
        if hearth_net::weights::verify_range(e.model, e.size, e.start..e.end, &e.encoded).is_ok() {
            return Err(format!(
                "these bytes verify against the model's id: no fault of {}",
                e.peer
            ));
        }
        let statement =
            hearth_protocol::work::weights_statement(&e.model, e.size, e.start, e.end, &e.encoded);
        let seen = *blake3::hash(&statement).as_bytes();
        if self.evidence_seen.contains(&seen) {
            return Ok(()); // Acted on already.
        }
        if self.evidence_seen.len() >= crate::limits::EVIDENCE_REMEMBERED_MAX {
            self.evidence_seen.pop_front();
        }
        self.evidence_seen.push_back(seen);
        tracing::warn!(peer = %e.peer, model = %e.model, start = e.start, end = e.end, "a holder served model bytes that do not verify");
        let now = self.now_ms();
        let input = crate::pipeline::weights_fault(&self.registry, e.peer);
        self.work
            .verdict(&mut self.network, now, input)
            .map_err(|err| err.to_string())
    }

    /// Strikes for stages the session drivers caught lying.
    fn record_stage_faults(&mut self) -> Result<()> {
        let now = self.now_ms();
        for (peer, _) in self.sessions.take_faults() {
            let input = crate::pipeline::stage_fault(&self.registry, peer);
            self.work.verdict(&mut self.network, now, input)?;
        }
        Ok(())
    }

    /// Send an API reply once what it reports is durable (see [`crate::work::Effect`]).
    fn reply<E>(&mut self, send: impl FnOnce() -> std::result::Result<(), E> + Send + 'static) {
        let effect = crate::work::Effect::Reply(Box::new(move || drop(send())));
        self.work.after_commit(&mut self.network, effect);
    }

    fn on_command(&mut self, command: Command) -> Result<()> {
        let now = self.now_ms();
        match command {
            Command::Peers(reply) => {
                let mut peers = self.registry.entries(now);
                for peer in &mut peers {
                    let standing = self.work.standing(&peer.peer_id, now);
                    peer.reliability = standing.reliability;
                    peer.credit = standing.credit;
                    peer.strikes = standing.strikes;
                    peer.quarantined = standing.quarantined;
                    peer.quarantine_reason = standing.quarantine_reason;
                    peer.trust = standing.trust.as_str().to_string();
                    peer.valid_results = standing.valid_run;
                    peer.valid_results_needed = crate::limits::TRUST_VALID_RUN_MIN;
                    peer.quarantine_left_ms = standing.quarantine_left_ms;
                    peer.rtt_ms = self.network.rtt_ms(&peer.peer_id);
                    peer.listen_addrs = self.network.listen_addrs(&peer.peer_id);
                    peer.connection = self
                        .network
                        .via(&peer.peer_id)
                        .map(|via| via.as_str().to_string());
                }
                let _ = reply.send(peers);
            }
            Command::Submit(request, reply) => {
                let answer =
                    match self
                        .work
                        .submit(&mut self.network, &self.registry, now, *request)
                    {
                        Ok(committed) => Ok(committed?),
                        Err(refusal) => Err(refusal),
                    };
                self.reply(move || reply.send(answer));
            }
            Command::Generate(request, events, reply) => {
                let answer = match self.models.llm(request.model.as_deref()) {
                    Ok(llm) => self.start_session(now, *request, llm, events),
                    Err(crate::models::ModelsError::NoCopy { id, name, dir }) => {
                        // No copy here: the header from a peer that holds it, if one is online.
                        let holders = self.holders(&id);
                        if holders.is_empty() {
                            let why = crate::models::ModelsError::NoCopy { id, name, dir };
                            Err(crate::sessions::Refusal::Unavailable(why.to_string()))
                        } else {
                            let waiting = crate::headers::Waiting {
                                request,
                                events,
                                reply,
                            };
                            let outcome =
                                self.headers.wait(&mut self.network, id, holders, waiting);
                            if let Some(outcome) = outcome {
                                self.header_outcome(now, outcome);
                            }
                            return Ok(());
                        }
                    }
                    Err(
                        why @ (crate::models::ModelsError::Unknown(_)
                        | crate::models::ModelsError::NotLlm(_)),
                    ) => Err(crate::sessions::Refusal::NoModel(why.to_string())),
                    Err(why) => Err(crate::sessions::Refusal::Unavailable(why.to_string())),
                };
                let _ = reply.send(answer);
            }
            Command::Jobs(reply) => {
                let jobs = self.work.jobs();
                self.reply(move || reply.send(jobs));
            }
            Command::Job { id, units, reply } => {
                let status = self.work.status(id, units)?;
                self.reply(move || reply.send(status).map_err(drop));
            }
            Command::Output {
                id,
                receipts,
                reply,
            } => {
                let answer = self.work.lines(id, receipts);
                self.reply(move || reply.send(answer));
            }
            Command::Cancel { id, reply } => {
                let found = self.work.cancel(&mut self.network, now, id)?;
                let status = if found {
                    self.work.status(id, false)?
                } else {
                    None
                };
                self.reply(move || reply.send(status).map_err(drop));
            }
            Command::WeightsEvidence(evidence, reply) => {
                let answer = self.weights_evidence(&evidence);
                let _ = reply.send(answer);
            }
            Command::Revoke(revocation, reply) => {
                let answer = if self.coop.is_none() {
                    Err(
                        "this coordinator does not run a co-op swarm (start it with --coop DIR)"
                            .into(),
                    )
                } else {
                    self.apply_revocation(*revocation).map_or(Ok(()), Err)
                };
                let _ = reply.send(answer);
            }
            Command::Models(reply) => {
                let mut holders: std::collections::BTreeMap<
                    hearth_protocol::ModelId,
                    Vec<hearth_protocol::PeerId>,
                > = std::collections::BTreeMap::new();
                for peer in self.registry.entries(now).into_iter().filter(|p| p.online) {
                    for model in &peer.capabilities.models {
                        holders.entry(*model).or_default().push(peer.peer_id);
                    }
                }
                let listed = self.models.listed(holders.keys().copied());
                let entries = listed
                    .into_iter()
                    .map(|m| crate::http::ModelEntry {
                        holders: holders.remove(&m.id).unwrap_or_default(),
                        layers: (m.kind == hearth_kernels::ModelKind::Llm)
                            .then(|| self.models.layers_of(&m.id))
                            .flatten(),
                        id: m.id,
                        name: m.name,
                        kind: m.kind,
                    })
                    .collect();
                let _ = reply.send(entries);
            }
            Command::Sessions(reply) => {
                let _ = reply.send(self.sessions.overview());
            }
            Command::EmbedTokens(texts, reply) => {
                let _ = reply.send(self.models.embed_tokens(&texts));
            }
            Command::Swarm(reply) => {
                let peer = self.network.local_peer();
                let suffix = Protocol::P2p(hearth_net::to_libp2p_peer_id(&peer));
                let addrs = self
                    .listen_addrs
                    .iter()
                    .map(|a| a.clone().with(suffix.clone()).to_string())
                    .collect();
                let _ = reply.send(SwarmInfo {
                    peer_id: peer,
                    addrs,
                    protocol_version: hearth_protocol::PROTOCOL_VERSION,
                    reachability: self.network.reachability(),
                });
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: NetEvent) -> Result<()> {
        let now = self.now_ms();
        match event {
            NetEvent::Listening(address) => self.listen_addrs.push(address),
            NetEvent::ListenExpired(address) => self.listen_addrs.retain(|a| a != &address),
            NetEvent::Message(received) => {
                // In a co-op, the gate let through only members' adverts, and applied revocations.
                let advert = match received.message {
                    Message::Advert(advert) => advert,
                    Message::Membership(_) => return Ok(()),
                    Message::Revocation(revocation) => {
                        if let Some(coop) = &self.coop
                            && let Err(why) = coop.keep(&revocation)
                        {
                            tracing::warn!(%why, "revocation not kept");
                        }
                        return Ok(());
                    }
                };
                // A node that serves other coordinators and not this one belongs to another
                // swarm: its advert came through a node that serves both.
                let me = self.network.local_peer();
                if !advert.serves.is_empty() && !advert.serves.contains(&me) {
                    tracing::trace!(from = %received.from, "advert of another swarm's node ignored");
                    return Ok(());
                }
                let input = Input::Advert {
                    from: received.from,
                    advert: Box::new(advert),
                };
                let outputs = self.registry.handle(now, input);
                self.log(outputs)?;
            }
            NetEvent::WorkRequest {
                peer,
                request,
                channel,
            } => {
                // A chained session's stages report once a token; those the sessions await are
                // theirs, and are not a flood.
                if self.sessions.expects(&peer, &request) {
                    self.network
                        .respond(channel, hearth_protocol::work::WorkResponse::Ack);
                    let work = &self.work;
                    let standing = |p: &hearth_protocol::PeerId| work.standing(p, now);
                    self.sessions.on_chain(
                        &mut self.network,
                        &self.registry,
                        &standing,
                        now,
                        peer,
                        request,
                    );
                    return Ok(());
                }
                if let hearth_protocol::work::WorkRequest::BadWeights(evidence) = &request {
                    // A node that fetched weights caught a holder: the same check as the API's.
                    let response = match self.weights_evidence(evidence) {
                        Ok(()) => hearth_protocol::work::WorkResponse::Ack,
                        Err(why) => hearth_protocol::work::WorkResponse::Rejected(why),
                    };
                    self.network.respond(channel, response);
                    return Ok(());
                }
                if !self.within_rate(peer) {
                    self.network.respond(
                        channel,
                        hearth_protocol::work::WorkResponse::Rejected(
                            "too many requests: slow down".into(),
                        ),
                    );
                    return Ok(());
                }
                self.work.on_request(
                    &mut self.network,
                    &self.registry,
                    now,
                    peer,
                    request,
                    channel,
                )?;
            }
            NetEvent::Connected { peer, endpoint } => {
                if let Some(peer) = hearth_net::from_libp2p_peer_id(&peer) {
                    self.work
                        .connected(peer, network_of(endpoint.get_remote_address()));
                }
            }
            NetEvent::WorkResponse { .. } | NetEvent::WorkFailed { .. } => {
                let (id, answer) = match event {
                    NetEvent::WorkResponse { id, response } => (id, Ok(response)),
                    NetEvent::WorkFailed { id, error } => (id, Err(error)),
                    _ => unreachable!("matched above"),
                };
                if self.headers.owns(&id) {
                    let (outcome, evidence) =
                        self.headers.on_response(&mut self.network, id, answer);
                    for e in evidence {
                        if let Err(why) = self.weights_evidence(&e) {
                            tracing::warn!(%why, "evidence against a holder not acted on");
                        }
                    }
                    if let Some(outcome) = outcome {
                        self.header_outcome(now, outcome);
                    }
                    return Ok(());
                }
                let work = &self.work;
                let standing = |p: &hearth_protocol::PeerId| work.standing(p, now);
                self.sessions.on_response(
                    &mut self.network,
                    &self.registry,
                    &standing,
                    now,
                    id,
                    answer,
                );
            }
            // A new peer: tell it the co-op's revocations (at most every 2 s), so a member that joins
            // later refuses the revoked too.
            NetEvent::Subscribed(_) if self.coop.is_some() => {
                if self
                    .last_revocations
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(2))
                {
                    self.network.republish_revocations();
                    self.last_revocations = Some(std::time::Instant::now());
                }
            }
            NetEvent::Disconnected(_) | NetEvent::Subscribed(_) => {}
        }
        Ok(())
    }

    fn log(&mut self, outputs: Vec<Output>) -> Result<()> {
        for output in outputs {
            match output {
                Output::Joined(peer) => {
                    tracing::info!(%peer, online = self.registry.online(), "peer joined")
                }
                Output::Returned(peer) => {
                    tracing::info!(%peer, online = self.registry.online(), "peer back online")
                }
                Output::Offline { peer, silent_ms } => {
                    tracing::info!(%peer, silent_ms, online = self.registry.online(), "peer offline");
                    let now = self.now_ms();
                    self.work.peer_lost(&mut self.network, now, peer)?;
                    let work = &self.work;
                    let standing = |p: &hearth_protocol::PeerId| work.standing(p, now);
                    self.sessions.peer_lost(
                        &mut self.network,
                        &self.registry,
                        &standing,
                        now,
                        peer,
                    );
                }
                Output::Refused(peer) => tracing::warn!(%peer, "registry full; peer not admitted"),
            }
        }
        Ok(())
    }
}

/// The network a peer connects from, for spreading replicas: its IPv4 /24 or IPv6 /48.
fn network_of(address: &Multiaddr) -> String {
    for protocol in address {
        match protocol {
            Protocol::Ip4(ip) => {
                let [a, b, c, _] = ip.octets();
                return format!("{a}.{b}.{c}.0/24");
            }
            Protocol::Ip6(ip) => {
                let s = ip.segments();
                return format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]);
            }
            _ => {}
        }
    }
    address.to_string()
}

/// Write `contents` to `path` through a temporary file and a rename, so readers never see half.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let io = |source| Error::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, contents).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
