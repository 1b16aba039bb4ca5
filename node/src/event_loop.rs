//! The node's event loop: one task owns the swarm.
//!
//! ```text
//!  resolver task ──(join addrs)──▶ ┌──────────── loop ─────────────┐
//!  heartbeat timer ──────────────▶ │ dial, publish signed adverts, │ ◀──▶ swarm (QUIC / TCP)
//!  redial timer ─────────────────▶ │ check gossip, feed Kademlia   │
//!  shutdown future ──────────────▶ └───────────────────────────────┘
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use hearth_kernels::{BENCHMARK_DURATION, Hardware, benchmark_gflops_per_thread};
use hearth_net::libp2p::core::ConnectedPoint;
use hearth_net::libp2p::multiaddr::Protocol;
use hearth_net::libp2p::swarm::dial_opts::DialOpts;
use hearth_net::libp2p::{Multiaddr, PeerId, Swarm};
use hearth_net::{Behaviour, NetEvent, Network, load_or_create_identity};
use hearth_protocol::{Advert, Backend, Capabilities, Message};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::join::{JoinTarget, resolve};
use crate::limits::STAGE_QUEUE_MAX;
use crate::limits::{DRAIN_TIMEOUT, REDIAL_INTERVAL};
use crate::stages::StageJob;
use crate::worker::{Finished, Worker};
use crate::{NodeConfig, Result, capabilities, scan_models};
use hearth_net::RequestId;
use hearth_net::WorkChannel;
use hearth_protocol::work::{WorkRequest, WorkResponse};

/// Least time between two adverts sent because a new subscriber appeared.
const EAGER_ADVERT_GAP: Duration = Duration::from_millis(250);

/// Resolved join addresses waiting for the loop; one message per target per resolution round.
const JOIN_QUEUE_MAX: usize = 16;

/// Run a node until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (key, created) = load_or_create_identity(&config.data_dir)?;
    let peer = key.public().peer_id();
    let span = tracing::info_span!("node", peer = %peer.short());
    async move {
        tracing::info!(peer_id = %peer, created, data_dir = %config.data_dir.display(), "identity");
        let targets = config
            .join
            .iter()
            .map(|t| t.parse())
            .collect::<Result<Vec<JoinTarget>>>()?;
        if targets.is_empty() {
            tracing::warn!("no --join given: this node only finds peers on the LAN (mDNS)");
        }

        let models_dir = config.models_dir.clone();
        let (hardware, gflops, models) = tokio::task::spawn_blocking(move || {
            (
                Hardware::detect(),
                benchmark_gflops_per_thread(BENCHMARK_DURATION),
                scan_models(&models_dir),
            )
        })
        .await
        .expect("hardware probe does not panic");
        let models = usable(models?);
        let mut caps = capabilities(
            &hardware,
            config.threads,
            gflops,
            models.iter().map(|(_, id)| *id).collect(),
        );
        if let Some(cap) = config.max_memory {
            caps.memory_total_bytes = caps.memory_total_bytes.min(cap);
            caps.memory_free_bytes = caps.memory_free_bytes.min(cap);
        }
        tracing::info!(
            backend = caps.backend.as_str(),
            device = %caps.device,
            threads = caps.threads,
            score = caps.score,
            models = caps.models.len(),
            "hardware"
        );

        let (worker, results) = Worker::start(
            key.clone(),
            &config.data_dir,
            models
                .iter()
                .map(|(path, id)| (*id, path.clone()))
                .collect(),
            config.max_concurrent as usize,
            #[cfg(feature = "fault-injection")]
            config.fault,
        )?;
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = config.fault {
            tracing::warn!(%fault, "fault injection on: this node misbehaves on purpose");
        }
        let (answers_tx, answers) = mpsc::channel(STAGE_QUEUE_MAX);
        let partials = crate::stages::Partials::default();
        let (stages, ends, live) = crate::stages::spawn(
            key.clone(),
            caps.numeric_class
                .get(&hearth_protocol::KernelFamily::Llm)
                .cloned()
                .unwrap_or_default(),
            models
                .iter()
                .map(|(path, id)| (*id, path.clone()))
                .collect(),
            partials.clone(),
            answers_tx,
            config.max_memory,
            #[cfg(feature = "fault-injection")]
            config.fault,
        );
        let (weights_tx, weights_answers) =
            mpsc::channel(crate::weights::WEIGHTS_SERVING_MAX * 2);
        let weights = crate::weights::Weights::new(
            key.clone(),
            models.iter().map(|(path, id)| (*id, path.clone())).collect(),
            partials.clone(),
            weights_tx,
            #[cfg(feature = "fault-injection")]
            matches!(config.fault, Some(crate::Fault::CorruptWeights)),
            #[cfg(not(feature = "fault-injection"))]
            false,
        )
        .with_upload_rate(config.max_upload_rate);
        let (addr_tx, addr_rx) = mpsc::channel(JOIN_QUEUE_MAX);
        let mut node = Node {
            weights,
            partials,
            prepares: crate::prepare::Prepares::new(&config.models_dir, config.max_disk),
            fetching_told: Vec::new(),
            behind_nat: config.behind_nat,
            relays: std::collections::HashSet::new(),
            worker,
            stages,
            ends,
            live,
            stage_sessions: 0,
            advert_due: false,
            steps: HashMap::new(),
            next_step: 0,
            routes: crate::chain::Routes::default(),
            kept: crate::chain::Kept::default(),
            chain_sends: HashMap::new(),
            check_fetches: HashMap::new(),
            relayed_told: std::collections::HashSet::new(),
            network: Network::new(
                key,
                &hearth_net::NetConfig {
                    memory_max_bytes: config
                        .max_memory
                        .map(|cap| cap.saturating_add(hearth_net::MEMORY_HEADROOM_BYTES)),
                    // Behind a NAT by its own account: find out whether it is reachable.
                    autonat: config.net.autonat || config.behind_nat,
                    ..config.net.clone()
                },
            )?,
            addr_tx,
            caps,
            seq: 0,
            heartbeat_interval: config.heartbeat_interval,
            last_advert: None,
            join: Join {
                prefer_quic: config.behind_nat,
                ..Join::new(targets)
            },
            governor: crate::governor::Governor::new(config.idle_only),
            owner_busy: false,
            coop: (!config.coop_certs.is_empty()).then(|| CoopState {
                certs: config.coop_certs.clone(),
                admitted: HashMap::new(),
            }),
        };
        if !config.coop_certs.is_empty() {
            let me = node.network.local_peer();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            for cert in &config.coop_certs {
                if let Err(why) = cert.admits(&cert.body.coop, &me, now, |_| false) {
                    tracing::warn!(coop = %cert.body.coop.peer_id().short(), %why, "this node's co-op certificate does not admit it; the co-op's members will refuse it");
                }
            }
            let coops = config.coop_certs.iter().map(|c| c.body.coop);
            node.network.join_coop(coops, [])?;
        }
        let result = node
            .event_loop(addr_rx, results, answers, weights_answers, shutdown)
            .await;
        tracing::info!("stopped");
        result
    }
    .instrument(span)
    .await
}

struct Node {
    network: Network,
    worker: Worker,
    /// The stage thread.
    stages: std::sync::mpsc::SyncSender<StageJob>,
    /// Sessions ended by the coordinator, for the stage thread.
    ends: std::sync::Arc<crate::stages::Ends>,
    /// Sessions with state on the stage thread, as it last said.
    live: tokio::sync::watch::Receiver<u32>,
    /// What the last count was, for adverts.
    stage_sessions: u32,
    /// The count changed since the last advert: send one soon (at most every
    /// [`EAGER_ADVERT_GAP`]).
    advert_due: bool,
    /// Pipeline steps on the stage thread, by key, with where their answers go.
    steps: HashMap<u64, Reply>,
    next_step: u64,
    /// Chained sessions' routes.
    routes: crate::chain::Routes,
    /// Checked chained sessions' inputs, for their checks.
    kept: crate::chain::Kept,
    /// Chained steps and reports sent and not yet answered.
    chain_sends: HashMap<RequestId, Sent>,
    /// The model files this node serves to peers fetching them.
    weights: crate::weights::Weights<WorkChannel>,
    /// Models held in part, shared with the stage thread and the weights server.
    partials: crate::stages::Partials,
    /// Layers being fetched from peers, and what is held of them.
    prepares: crate::prepare::Prepares,
    /// The fetches under way, as the last advert (or the next) says.
    fetching_told: Vec<hearth_protocol::HeldLayers>,
    /// `--behind-nat`: reserve a slot on each coordinator's relay.
    behind_nat: bool,
    /// Coordinators whose relay a slot was asked of.
    relays: std::collections::HashSet<hearth_net::libp2p::PeerId>,
    /// (session, next stage) pairs whose steps went through a relay, said once each (at most
    /// [`RELAYED_TOLD_MAX`], then forgotten together).
    relayed_told: std::collections::HashSet<(u64, hearth_protocol::PeerId)>,
    /// Checks waiting for the inputs their stage kept, by the fetch's request.
    check_fetches: HashMap<RequestId, (WorkChannel, Box<hearth_protocol::work::CheckRequest>)>,
    /// Where resolved join addresses are sent back to the loop.
    addr_tx: mpsc::Sender<(usize, Vec<Multiaddr>)>,
    caps: Capabilities,
    seq: u64,
    heartbeat_interval: Duration,
    last_advert: Option<Instant>,
    join: Join,
    governor: crate::governor::Governor,
    /// The host's owner is busy (`--idle-only`).
    owner_busy: bool,
    /// Co-op mode: our certificate, and whether the coordinator is an admitted member. The
    /// network's gate checks every peer; this is what the node adds: it works only for a member
    /// coordinator, and not at all once the co-op revoked it.
    coop: Option<CoopState>,
}

/// Where a step's answer goes.
enum Reply {
    /// To the request's sender (the coordinator's stepped sessions, verifiers' replays).
    Channel(WorkChannel),
    /// Along a chained route.
    Chain(Link),
    /// To the coordinator that asked for a check by digests: each step's output digest.
    Check(WorkChannel, Box<hearth_protocol::work::CheckRequest>),
}

/// Addresses kept per join peer, the newest first.
const JOIN_ADDRS_PER_PEER_MAX: usize = 32;

/// Sessions whose relayed hops were said, remembered at once.
const RELAYED_TOLD_MAX: usize = 256;

/// A chained step on its way through this node.
#[derive(Clone, Debug)]
struct Link {
    session: u64,
    epoch: u32,
    step: u64,
    /// The stage index this node serves it at.
    hop: usize,
    /// Position and rows of its input.
    pos: u32,
    rows: u32,
    /// The step's receipts so far.
    receipts: Vec<hearth_protocol::Receipt>,
    /// The earlier stages' round trips to their successors.
    rtts: Vec<Option<f32>>,
}

/// A chained message sent: where it went and for which step, to report it broken if it fails.
#[derive(Clone, Debug)]
struct Sent {
    session: u64,
    epoch: u32,
    step: u64,
    to: hearth_protocol::PeerId,
}

struct CoopState {
    /// This node's certificates, one per co-op.
    certs: Vec<hearth_protocol::coop::Membership>,
    /// The coordinators joined that one of our co-ops admits, and which (the first that still
    /// admits this node too).
    admitted: HashMap<hearth_protocol::PeerId, hearth_protocol::PublicKey>,
}

impl Node {
    /// Whether the node may work for `coordinator` (for any coordinator joined, when `None`):
    /// outside a co-op always; in co-ops, while that coordinator is an admitted member of one
    /// that has not revoked this node.
    fn may_work(&self, coordinator: Option<&hearth_protocol::PeerId>) -> bool {
        self.coop.as_ref().is_none_or(|coop| {
            let me = self.network.local_peer();
            let ours = |c: &hearth_protocol::PublicKey| !self.network.is_revoked_in(c, &me);
            match coordinator {
                Some(c) => coop.admitted.get(c).is_some_and(ours),
                None => coop.admitted.values().any(ours),
            }
        })
    }

    /// Whether every co-op of this node revoked it.
    fn revoked_everywhere(&self) -> bool {
        let me = self.network.local_peer();
        self.coop.as_ref().is_some_and(|coop| {
            coop.certs
                .iter()
                .all(|c| self.network.is_revoked_in(&c.body.coop, &me))
        })
    }

    /// Follow whether each coordinator joined is (still) a member of one of our co-ops that still
    /// admits this node, saying when that changes.
    fn check_coordinators(&mut self) {
        let connected = self.coordinators();
        if self.coop.is_none() {
            return;
        }
        let me = self.network.local_peer();
        let mut verdicts = Vec::new();
        for peer in &connected {
            let shared = self
                .network
                .coops_of(peer)
                .into_iter()
                .find(|c| !self.network.is_revoked_in(c, &me));
            let why = match shared {
                Some(_) => None,
                None => Some(match self.network.member(peer) {
                    Err(why) => why.to_string(),
                    Ok(()) => "its co-ops revoked this node".to_string(),
                }),
            };
            verdicts.push((*peer, shared, why));
        }
        let Some(coop) = &mut self.coop else { return };
        coop.admitted.retain(|c, _| connected.contains(c));
        for (peer, shared, why) in verdicts {
            match shared {
                Some(c) if coop.admitted.insert(peer, c) != Some(c) => {
                    tracing::info!(coordinator = %peer, coop = %c.peer_id().short(), "the coordinator is a member of our co-op");
                }
                None if coop.admitted.remove(&peer).is_some() => {
                    tracing::warn!(coordinator = %peer, why = why.as_deref().unwrap_or(""), "the coordinator is no longer an admitted member of our co-op; taking no work from it");
                }
                _ => {}
            }
        }
    }

    /// The coordinators to take work from: those connected and, in a co-op, admitted.
    fn working_for(&self) -> Vec<hearth_protocol::PeerId> {
        let mut coordinators = self.coordinators();
        coordinators.retain(|c| self.may_work(Some(c)));
        coordinators
    }
}

impl Node {
    async fn event_loop(
        &mut self,
        mut addr_rx: mpsc::Receiver<(usize, Vec<Multiaddr>)>,
        mut results: mpsc::Receiver<Finished>,
        mut answers: mpsc::Receiver<(u64, WorkResponse)>,
        mut weights_answers: mpsc::Receiver<(WorkChannel, WorkResponse)>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let mut poll = tokio::time::interval(Worker::poll_interval());
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
        redial.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        // Set at the first SIGTERM or Ctrl-C: the time by which to stop even if work is held.
        let mut draining: Option<Instant> = None;
        loop {
            if let Some(deadline) = draining {
                if self.worker.drained()? {
                    tracing::info!("drained: no work held, every result delivered");
                    return Ok(());
                }
                if Instant::now() >= deadline || self.coordinators().is_empty() {
                    tracing::warn!(
                        "stopping with work undelivered: the outbox keeps it for the next start"
                    );
                    return Ok(());
                }
            }
            tokio::select! {
                () = &mut shutdown, if draining.is_none() => {
                    let (running, undelivered) = self.worker.drain()?;
                    tracing::info!(running, undelivered, "draining: finishing held work and delivering results before stopping");
                    draining = Some(Instant::now() + DRAIN_TIMEOUT);
                }
                event = self.network.next() => self.on_event(event)?,
                Some((channel, response)) = weights_answers.recv() => {
                    self.network.respond(channel, response);
                }
                Some((key, response)) = answers.recv() => match self.steps.remove(&key) {
                    Some(Reply::Channel(channel)) => {
                        self.network.respond(channel, response);
                    }
                    Some(Reply::Chain(link)) => self.chain_answer(link, response),
                    Some(Reply::Check(channel, check)) => {
                        let answer = crate::chain::check_answer(self.network.key(), &check, response);
                        self.network.respond(channel, answer);
                    }
                    None => {}
                },
                Some(finished) = results.recv() => {
                    let coordinators = self.working_for();
                    self.worker.finished(&mut self.network, &coordinators, &self.caps, finished)?;
                    self.worker.poll(&mut self.network, &coordinators)?;
                }
                Ok(()) = self.live.changed() => {
                    self.stage_sessions = *self.live.borrow_and_update();
                    self.advert_due = true;
                    self.advertise_if_due();
                }
                _ = poll.tick() => {
                    // Chained sessions whose coordinator went away without ending them.
                    let ttl = crate::limits::STAGE_SESSION_TTL.as_millis() as u64;
                    for session in self.routes.expire(hearth_net::monotonic_ms(), ttl) {
                        tracing::info!(session, "route unused past its time; forgotten");
                        self.kept.end(session);
                    }
                    self.advertise_if_due();
                    if let Some(busy) = self.governor.tick() {
                        self.owner_busy = busy;
                    }
                    self.check_coordinators();
                    self.worker.paused = self.owner_busy || self.revoked_everywhere();
                    let coordinators = self.working_for();
                    self.worker.poll(&mut self.network, &coordinators)?;
                }
                Some((target, addrs)) = addr_rx.recv() => {
                    self.join.resolved.insert(target);
                    self.join.dial(&mut self.network.swarm, addrs);
                }
                _ = heartbeat.tick() => self.advertise(),
                _ = redial.tick() => {
                    if !self.join.connected(&self.network.swarm) {
                        self.join.refresh(&mut self.network.swarm, &self.addr_tx);
                    }
                }
            }
        }
    }

    /// Layers fetched from peers are held: the stage thread may load stages of them, and the
    /// weights server serves them on; the next advert says how much was received.
    fn on_held(&mut self, held: Vec<crate::prepare::Held>) {
        // A fetch begun or ended: the coverage views hear of it soon.
        let fetching = self.prepares.fetching();
        if fetching != self.fetching_told {
            self.fetching_told = fetching;
            self.advert_due = true;
            self.advertise_if_due();
        }
        if held.is_empty() {
            return;
        }
        let mut partials = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        for h in held {
            partials.insert(h.model, h);
        }
        drop(partials);
        self.advert_due = true;
    }

    /// An advert now if one is due and the last went out at least [`EAGER_ADVERT_GAP`] ago.
    fn advertise_if_due(&mut self) {
        if self.advert_due
            && self
                .last_advert
                .is_none_or(|t| t.elapsed() >= EAGER_ADVERT_GAP)
        {
            self.advertise();
        }
    }

    fn advertise(&mut self) {
        if self.caps.backend == Backend::Cpu
            && let Some(free) = Hardware::available_memory_bytes()
        {
            // `memory_total_bytes` is already capped by `--max-memory`.
            self.caps.memory_free_bytes = free.min(self.caps.memory_total_bytes);
        }
        if let Some(coop) = &self.coop {
            // The certificates first (each on its co-op's topic), so the coordinator admits us
            // before it reads the advert.
            for cert in &coop.certs {
                let _ = self.network.publish(&Message::Membership(cert.clone()));
            }
        }
        let advert = Message::Advert(Advert {
            seq: self.seq,
            heartbeat_interval_ms: u32::try_from(self.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            capabilities: self.caps.clone(),
            stage_sessions: self.stage_sessions,
            bytes_received: self.prepares.bytes_received,
            // Its connections to the peers it works with (the coordinators it joins aside).
            links: {
                let join: Vec<_> = self.join.peers.iter().copied().collect();
                self.network.links(&join)
            },
            reachability: self.network.reachability(),
            serves: self
                .join
                .peers
                .iter()
                .filter_map(hearth_net::from_libp2p_peer_id)
                .take(hearth_protocol::SERVES_MAX)
                .collect(),
            fetching: self.fetching_told.clone(),
            held: self
                .partials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .take(hearth_protocol::ADVERT_MODELS_MAX)
                .map(|h| hearth_protocol::HeldLayers {
                    model: h.model,
                    layers: h
                        .layers
                        .iter()
                        .take(hearth_protocol::HELD_RANGES_MAX)
                        .copied()
                        .collect(),
                })
                .collect(),
        });
        match self.network.publish(&advert) {
            Ok(()) => {
                tracing::debug!(seq = self.seq, "advert sent");
                self.seq += 1;
                self.last_advert = Some(Instant::now());
                self.advert_due = false;
            }
            // No subscriber connected yet: normal while joining; the next heartbeat tries again.
            Err(error) => tracing::debug!(%error, "advert not sent"),
        }
    }

    /// The coordinators joined that are connected, in a fixed order.
    fn coordinators(&self) -> Vec<hearth_protocol::PeerId> {
        let mut connected: Vec<_> = self
            .join
            .peers
            .iter()
            .filter(|p| self.network.swarm.is_connected(p))
            .filter_map(hearth_net::from_libp2p_peer_id)
            .collect();
        connected.sort();
        connected
    }

    /// A request from a peer: pipeline steps from the coordinator go to the stage thread; nodes
    /// answer nothing else.
    fn on_request(
        &mut self,
        peer: hearth_protocol::PeerId,
        request: WorkRequest,
        channel: WorkChannel,
    ) {
        let from_coordinator = self
            .join
            .peers
            .contains(&hearth_net::to_libp2p_peer_id(&peer));
        let refuse = |net: &mut Network, channel, why: &str| {
            net.respond(channel, WorkResponse::Rejected(why.into()));
        };
        let coop_refuses = !self.may_work(from_coordinator.then_some(&peer));
        match request {
            WorkRequest::Forward(_)
            | WorkRequest::EndSession { .. }
            | WorkRequest::Route(_)
            | WorkRequest::Chain(_)
            | WorkRequest::Check(_)
            | WorkRequest::Prepare(_)
                if coop_refuses =>
            {
                tracing::warn!(%peer, "pipeline request refused: the coordinator has shown no valid co-op certificate, or ours was revoked");
                refuse(
                    &mut self.network,
                    channel,
                    "not a verified member of this node's co-op",
                );
            }
            WorkRequest::Forward(_)
            | WorkRequest::EndSession { .. }
            | WorkRequest::Route(_)
            | WorkRequest::Check(_)
            | WorkRequest::Prepare(_)
                if !from_coordinator =>
            {
                tracing::debug!(%peer, "pipeline request from a peer that is not our coordinator");
                refuse(&mut self.network, channel, "not this node's coordinator");
            }
            WorkRequest::Forward(forward) => {
                let key = self.next_step;
                self.next_step += 1;
                match self
                    .stages
                    .try_send(StageJob::Forward(key, Box::new(forward)))
                {
                    Ok(()) => {
                        self.steps.insert(key, Reply::Channel(channel));
                    }
                    Err(_) => refuse(&mut self.network, channel, "stage queue full"),
                }
            }
            WorkRequest::Route(route) => {
                // Where the other stages listen, so the steps reach them at once.
                for ((stage, _), addrs) in route.hops.iter().zip(&route.addrs) {
                    if *stage != self.network.local_peer() {
                        self.network.add_addrs(stage, addrs);
                    }
                }
                match self.routes.give(peer, route) {
                    Ok(()) => {
                        self.network.respond(channel, WorkResponse::Ack);
                    }
                    Err(why) => refuse(&mut self.network, channel, &why),
                }
            }
            WorkRequest::Kept {
                session,
                layer_start,
                from,
                to,
                grant,
            } => {
                // The session's coordinator, or a verifier it gave leave to for these steps.
                let allowed = self.routes.coordinator(session).is_some_and(|c| {
                    c == peer
                        || grant.is_some_and(|grant| {
                            let leave = hearth_protocol::work::kept_grant(
                                session,
                                layer_start,
                                from,
                                to,
                                &peer,
                            );
                            c.public_key().verify(&leave, &grant).is_ok()
                        })
                });
                let answer = if allowed {
                    self.kept.get(session, layer_start, (from, to))
                } else {
                    Err("neither this session's coordinator nor a verifier it sent".into())
                };
                let response = match answer {
                    Ok(inputs) => WorkResponse::Kept(inputs),
                    Err(why) => WorkResponse::Rejected(why),
                };
                self.network.respond(channel, response);
            }
            WorkRequest::Check(check) => self.check_start(channel, check),
            WorkRequest::Prepare(p) => {
                if self.caps.models.contains(&p.model) {
                    let answer = WorkResponse::Prepared { bytes_received: 0 };
                    self.network.respond(channel, answer);
                } else {
                    let held = self.prepares.prepare(&mut self.network, peer, *p, channel);
                    self.on_held(held);
                }
            }
            // Any peer of the swarm (in a co-op, only members reach us at all) may fetch what we
            // hold: every byte is checked against the model's id by the fetcher.
            WorkRequest::Weights { model, start, end } => {
                if let Err((channel, why)) = self.weights.serve(channel, model, start, end) {
                    refuse(&mut self.network, channel, &why);
                }
            }
            WorkRequest::Chain(step) => match self.chain_take(peer, *step) {
                Ok(()) => {
                    self.network.respond(channel, WorkResponse::Ack);
                }
                Err(why) => {
                    tracing::debug!(%peer, %why, "chained step refused");
                    refuse(&mut self.network, channel, &why);
                }
            },
            WorkRequest::EndSession { session } => {
                self.end_session(session);
                self.network.respond(channel, WorkResponse::Ack);
            }
            WorkRequest::Fetch { .. }
            | WorkRequest::Deliver { .. }
            | WorkRequest::Refuse { .. }
            | WorkRequest::Report(_)
            | WorkRequest::BadWeights(_)
            | WorkRequest::Broken { .. } => {
                tracing::debug!(%peer, "work request to a node; refused");
                refuse(
                    &mut self.network,
                    channel,
                    "this peer is a node, not a coordinator",
                );
            }
        }
    }

    /// Take a chained step from `from` (or from this node itself, when it serves the stage
    /// before too): checked against the route, then queued for the stage thread.
    fn chain_take(
        &mut self,
        from: hearth_protocol::PeerId,
        step: hearth_protocol::work::ChainStep,
    ) -> std::result::Result<(), String> {
        let me = self.network.local_peer();
        let hop = self.routes.admit(me, from, &step)?;
        tracing::trace!(
            session = step.forward.session,
            step = step.forward.step,
            hop,
            "chained step in"
        );
        let f = step.forward;
        if self
            .routes
            .get(f.session, step.epoch)
            .is_some_and(|g| g.route.keep_inputs)
        {
            self.kept.keep(f.clone());
        }
        let link = Link {
            session: f.session,
            epoch: step.epoch,
            step: f.step,
            hop,
            pos: f.pos,
            rows: u32::try_from(f.input.rows()).unwrap_or(u32::MAX),
            receipts: step.receipts,
            rtts: step.rtts,
        };
        let key = self.next_step;
        self.next_step += 1;
        self.stages
            .try_send(StageJob::Forward(key, Box::new(f)))
            .map_err(|_| "stage queue full".to_string())?;
        self.steps.insert(key, Reply::Chain(link));
        Ok(())
    }

    /// The stage thread answered a chained step: hand its output to the next stage, or (the last
    /// stage) report the token to the coordinator and start the next step at the first stage.
    fn chain_answer(&mut self, mut link: Link, response: WorkResponse) {
        use hearth_protocol::work::{ChainReport, ChainStep, Forward, StageData, StageResult};
        let me = self.network.local_peer();
        let Some(given) = self.routes.get(link.session, link.epoch).cloned() else {
            return; // Ended, or restarted in another epoch: nobody wants it.
        };
        let (route, coordinator) = (given.route, given.coordinator);
        let (output, receipt) = match response {
            WorkResponse::Forwarded { output, receipt } => (output, receipt),
            WorkResponse::Rejected(reason) => {
                return self.chain_broken(&link, coordinator, me, reason);
            }
            other => {
                return self.chain_broken(&link, coordinator, me, format!("{other:?}"));
            }
        };
        link.receipts.push(receipt.clone());
        let last = route.hops.len() - 1;
        let next = |step, layers, pos, input| Forward {
            session: link.session,
            step,
            model: route.model,
            layers,
            pos,
            input,
            all_positions: false,
            sampling: route.sampling,
        };
        if link.hop < last {
            let StageResult::Hidden(data) = output else {
                return self.chain_broken(&link, coordinator, me, "not hidden states".into());
            };
            let (to, layers) = route.hops[link.hop + 1];
            link.rtts.push(self.rtt_to(&to));
            let step = ChainStep {
                epoch: link.epoch,
                forward: next(link.step, layers, link.pos, data),
                receipts: std::mem::take(&mut link.receipts),
                previous: None,
                rtts: std::mem::take(&mut link.rtts),
            };
            return self.chain_send(link, coordinator, to, step);
        }
        let StageResult::Next { token, .. } = output else {
            return self.chain_broken(&link, coordinator, me, "not a token".into());
        };
        link.rtts.push(self.rtt_to(&route.hops[0].0));
        let report = ChainReport {
            session: link.session,
            epoch: link.epoch,
            step: link.step,
            output: output.clone(),
            receipts: std::mem::take(&mut link.receipts),
            rtts: std::mem::take(&mut link.rtts),
        };
        self.chain_request(&link, coordinator, WorkRequest::Report(report));
        let next_pos = link.pos.saturating_add(link.rows);
        if route.goes_on(link.step, token, next_pos) {
            let (to, layers) = route.hops[0];
            let step = ChainStep {
                epoch: link.epoch,
                forward: next(
                    link.step + 1,
                    layers,
                    next_pos,
                    StageData::Tokens(vec![token]),
                ),
                receipts: Vec::new(),
                previous: Some((output, receipt)),
                rtts: Vec::new(),
            };
            link.step += 1;
            self.chain_send(link, coordinator, to, step);
        }
    }

    /// A check by digests from the coordinator: fetch the stage's kept inputs, if they are not
    /// in the request, then replay.
    fn check_start(
        &mut self,
        channel: WorkChannel,
        check: Box<hearth_protocol::work::CheckRequest>,
    ) {
        let Some(source) = &check.source else {
            let replay = check.forward.clone();
            return self.check_run(channel, check, replay);
        };
        self.network.add_addrs(&source.peer, &source.addrs);
        let request = WorkRequest::Kept {
            session: source.session,
            layer_start: check.forward.layers.0,
            from: source.from,
            to: check.forward.step + 1,
            grant: Some(source.grant),
        };
        let id = self.network.request(&source.peer, request);
        self.check_fetches.insert(id, (channel, check));
    }

    /// The stage answered a check's fetch: its inputs, checked against the digests its receipts
    /// signed, become the replay's input.
    fn check_fetched(
        &mut self,
        channel: WorkChannel,
        check: Box<hearth_protocol::work::CheckRequest>,
        answer: std::result::Result<WorkResponse, String>,
    ) {
        let input = match answer {
            Ok(WorkResponse::Kept(inputs)) => crate::chain::check_input(&check, &inputs),
            Ok(WorkResponse::Rejected(why)) => Err(format!("the stage refused its inputs: {why}")),
            Ok(other) => Err(format!("the stage answered {other:?} for its inputs")),
            Err(error) => Err(format!("the stage did not give its inputs: {error}")),
        };
        match input {
            Ok(input) => {
                let replay = hearth_protocol::work::Forward {
                    input,
                    ..check.forward.clone()
                };
                self.check_run(channel, check, replay);
            }
            Err(why) => {
                tracing::warn!(session = check.forward.session, %why, "check refused");
                self.network.respond(channel, WorkResponse::Rejected(why));
            }
        }
    }

    /// Queue a check's replay (`check`'s forward with its input) on the stage thread.
    fn check_run(
        &mut self,
        channel: WorkChannel,
        check: Box<hearth_protocol::work::CheckRequest>,
        replay: hearth_protocol::work::Forward,
    ) {
        let key = self.next_step;
        self.next_step += 1;
        match self
            .stages
            .try_send(StageJob::Forward(key, Box::new(replay)))
        {
            Ok(()) => {
                self.steps.insert(key, Reply::Check(channel, check));
            }
            Err(_) => {
                let full = WorkResponse::Rejected("stage queue full".into());
                self.network.respond(channel, full);
            }
        }
    }

    /// The round trip to `peer` as ping last measured it (0 for this node itself).
    fn rtt_to(&self, peer: &hearth_protocol::PeerId) -> Option<f32> {
        if *peer == self.network.local_peer() {
            return Some(0.0);
        }
        self.network.rtt_ms(peer).map(|ms| ms as f32)
    }

    /// Send a chained step to `to` (taken here at once when `to` is this node).
    fn chain_send(
        &mut self,
        link: Link,
        coordinator: hearth_protocol::PeerId,
        to: hearth_protocol::PeerId,
        step: hearth_protocol::work::ChainStep,
    ) {
        let me = self.network.local_peer();
        if to == me {
            if let Err(why) = self.chain_take(me, step) {
                self.chain_broken(&link, coordinator, me, why);
            }
            return;
        }
        // Say when the chain runs through a relay (hole punching did not cross a NAT): slower,
        // and on a member's bandwidth.
        if self.network.via(&to) == Some(hearth_net::Via::Relayed) {
            if self.relayed_told.len() >= RELAYED_TOLD_MAX {
                self.relayed_told.clear();
            }
            if self.relayed_told.insert((link.session, to)) {
                tracing::warn!(session = link.session, next = %to, "this stage hands its steps to the next through a relay: no direct path to it (hole punching did not cross its NAT)");
            }
        }
        self.chain_request(&link, to, WorkRequest::Chain(Box::new(step)));
    }

    /// Send a chained session's message to `to`, remembered until it is answered.
    fn chain_request(&mut self, link: &Link, to: hearth_protocol::PeerId, request: WorkRequest) {
        tracing::trace!(
            session = link.session,
            step = link.step,
            hop = link.hop,
            "chained step out"
        );
        let id = self.network.request(&to, request);
        let sent = Sent {
            session: link.session,
            epoch: link.epoch,
            step: link.step,
            to,
        };
        self.chain_sends.insert(id, sent);
    }

    /// Tell the coordinator a chained step stopped at `peer`.
    fn chain_broken(
        &mut self,
        link: &Link,
        coordinator: hearth_protocol::PeerId,
        peer: hearth_protocol::PeerId,
        reason: String,
    ) {
        tracing::warn!(session = link.session, step = link.step, %peer, %reason, "chained step broken");
        self.network.request(
            &coordinator,
            WorkRequest::Broken {
                session: link.session,
                epoch: link.epoch,
                step: link.step,
                peer,
                reason,
            },
        );
    }

    /// Stop serving `session` here: recorded at once (steps queued before it are refused, and a
    /// chained step for it is handed on no further); the stage thread is woken to free the
    /// session's caches, or sees it before its next step.
    fn end_session(&mut self, session: u64) {
        self.routes.end(session);
        self.kept.end(session);
        self.ends.end(session, self.next_step);
        let _ = self.stages.try_send(StageJob::End);
    }

    /// The answer to a chained message this node sent: a refusal or a failure to deliver is
    /// reported to the session's coordinator. A report to the coordinator itself that is refused
    /// or cannot be delivered ends the session here, the last stage: the chain runs without the
    /// coordinator, so a coordinator that crashed or dropped the session would otherwise leave its
    /// stages generating to the end of `max_tokens` for nobody. (A coordinator that still wants
    /// the session restarts it from its tokens when the report does not come, as after any lost
    /// step.)
    fn chain_sent(&mut self, sent: Sent, answer: std::result::Result<WorkResponse, String>) {
        let reason = match answer {
            Ok(WorkResponse::Ack) => return,
            Ok(WorkResponse::Rejected(reason)) => format!("refused: {reason}"),
            Ok(other) => format!("answered {other:?}"),
            Err(error) => format!("unreachable: {error}"),
        };
        let Some(coordinator) = self
            .routes
            .get(sent.session, sent.epoch)
            .map(|g| g.coordinator)
        else {
            return;
        };
        if sent.to == coordinator {
            tracing::warn!(session = sent.session, step = sent.step, %reason, "step report not taken; the chain stops here");
            self.end_session(sent.session);
            return;
        }
        let link = Link {
            session: sent.session,
            epoch: sent.epoch,
            step: sent.step,
            hop: 0,
            pos: 0,
            rows: 0,
            receipts: Vec::new(),
            rtts: Vec::new(),
        };
        self.chain_broken(&link, coordinator, sent.to, reason);
    }

    /// Gossip: in a co-op, the revocations the gate applied (it refused the member already).
    fn on_gossip(&mut self, from: hearth_protocol::PeerId, message: Message) {
        let Some(coop) = &mut self.coop else {
            return;
        };
        match message {
            Message::Revocation(r) => {
                let member = r.body.member;
                let of = r.body.coop.peer_id().short();
                if member == self.network.local_peer() {
                    tracing::warn!(
                        coop = %of,
                        "this node's co-op membership was revoked; it takes no more work from that co-op's coordinators"
                    );
                } else if coop.admitted.get(&member) == Some(&r.body.coop) {
                    // Checked again on the next poll: another co-op of ours may still admit it.
                    coop.admitted.remove(&member);
                    tracing::warn!(
                        coordinator = %member,
                        "the coordinator's co-op membership was revoked; taking no work from it"
                    );
                } else {
                    tracing::info!(%member, "a member was revoked");
                }
            }
            _ => tracing::trace!(%from, "gossip"),
        }
    }

    fn on_event(&mut self, event: NetEvent) -> Result<()> {
        match event {
            NetEvent::WorkResponse { id, response } if self.chain_sends.contains_key(&id) => {
                let sent = self.chain_sends.remove(&id).expect("checked");
                self.chain_sent(sent, Ok(response));
            }
            NetEvent::WorkFailed { id, error } if self.chain_sends.contains_key(&id) => {
                let sent = self.chain_sends.remove(&id).expect("checked");
                self.chain_sent(sent, Err(error));
            }
            NetEvent::WorkResponse { id, response } if self.prepares.owns(&id) => {
                let held = self
                    .prepares
                    .on_response(&mut self.network, id, Ok(response));
                self.on_held(held);
            }
            NetEvent::WorkFailed { id, error } if self.prepares.owns(&id) => {
                let held = self.prepares.on_response(&mut self.network, id, Err(error));
                self.on_held(held);
            }
            NetEvent::WorkResponse { id, response } if self.check_fetches.contains_key(&id) => {
                let (channel, check) = self.check_fetches.remove(&id).expect("checked");
                self.check_fetched(channel, check, Ok(response));
            }
            NetEvent::WorkFailed { id, error } if self.check_fetches.contains_key(&id) => {
                let (channel, check) = self.check_fetches.remove(&id).expect("checked");
                self.check_fetched(channel, check, Err(error));
            }
            NetEvent::WorkResponse { id, response } => {
                self.worker.response(id, Ok(response))?;
                let coordinators = self.working_for();
                self.worker.poll(&mut self.network, &coordinators)?;
            }
            NetEvent::WorkFailed { id, error } => self.worker.response(id, Err(error))?,
            NetEvent::WorkRequest {
                peer,
                request,
                channel,
            } => self.on_request(peer, request, channel),
            NetEvent::Connected { peer, endpoint } => {
                // Behind a NAT: a slot on the coordinator's relay, at the address we reached it
                // at, so peers that cannot dial us reach us through it.
                if self.behind_nat
                    && self.join.peers.contains(&peer)
                    && !endpoint.is_relayed()
                    && self.relays.insert(peer)
                    && let hearth_net::libp2p::core::ConnectedPoint::Dialer { address, .. } =
                        &endpoint
                {
                    let mut relay: hearth_net::libp2p::Multiaddr = address
                        .iter()
                        .filter(|p| !matches!(p, hearth_net::libp2p::multiaddr::Protocol::P2p(_)))
                        .collect();
                    relay.push(hearth_net::libp2p::multiaddr::Protocol::P2p(peer));
                    match self.network.reserve_relay(&relay) {
                        Ok(()) => {
                            tracing::info!(%relay, "reserving a slot on the coordinator's relay")
                        }
                        Err(why) => {
                            tracing::warn!(%relay, %why, "cannot reserve a slot on the coordinator's relay")
                        }
                    }
                }
                self.join.on_connected(peer, &endpoint);
            }
            // Lost a join peer: dial it again now rather than at the next redial tick.
            NetEvent::Disconnected(peer) if self.join.peers.contains(&peer) => {
                // Its relay forgot our slot: asked again once we are back.
                self.relays.remove(&peer);
                self.join.refresh(&mut self.network.swarm, &self.addr_tx);
            }
            // A new subscriber (the coordinator, at first): tell it about us now rather than at the
            // next heartbeat.
            NetEvent::Subscribed(_)
                if self
                    .last_advert
                    .is_none_or(|t| t.elapsed() >= EAGER_ADVERT_GAP) =>
            {
                self.advertise();
            }
            NetEvent::Message(received) => self.on_gossip(received.from, received.message),
            _ => {}
        }
        Ok(())
    }
}

/// The peers a node was told to join, and how to reach them again.
struct Join {
    targets: Vec<JoinTarget>,
    /// Addresses by the peer id in their `/p2p/` suffix.
    by_peer: HashMap<PeerId, Vec<Multiaddr>>,
    /// Addresses given without a peer id; their peer is learnt on connection.
    bare: HashSet<Multiaddr>,
    /// Peers that are join targets (several targets may name one: a coordinator group's members
    /// all send nodes to its leader, whose swarm identity is the group's).
    peers: HashSet<PeerId>,
    /// Targets (by index) that have given addresses at least once.
    resolved: HashSet<usize>,
    resolver: Option<tokio::task::JoinHandle<()>>,
    /// Dial join peers over QUIC only, where they offer it (`--behind-nat`).
    prefer_quic: bool,
}

impl Join {
    fn new(targets: Vec<JoinTarget>) -> Self {
        Self {
            targets,
            by_peer: HashMap::new(),
            bare: HashSet::new(),
            peers: HashSet::new(),
            resolved: HashSet::new(),
            resolver: None,
            prefer_quic: false,
        }
    }

    /// Whether the node holds a connection to every join peer (a node may serve several
    /// coordinators; each target gives at least one).
    fn connected(&self, swarm: &Swarm<Behaviour>) -> bool {
        self.resolved.len() >= self.targets.len()
            && self.peers.iter().all(|p| swarm.is_connected(p))
    }

    /// Re-resolve the targets (in the background) and redial what is already known.
    fn refresh(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        tx: &mpsc::Sender<(usize, Vec<Multiaddr>)>,
    ) {
        if self.resolver.as_ref().is_none_or(|r| r.is_finished()) {
            let targets = self.targets.clone();
            let tx = tx.clone();
            self.resolver = Some(tokio::spawn(
                async move {
                    for (i, target) in targets.iter().enumerate() {
                        match resolve(target).await {
                            Ok(addrs) => {
                                let _ = tx.send((i, addrs)).await;
                            }
                            Err(error) => tracing::warn!(%error, "cannot join yet; retrying"),
                        }
                    }
                }
                .in_current_span(),
            ));
        }
        let known: Vec<Multiaddr> = self
            .by_peer
            .values()
            .flatten()
            .chain(&self.bare)
            .cloned()
            .collect();
        self.dial(swarm, known);
    }

    fn dial(&mut self, swarm: &mut Swarm<Behaviour>, addrs: Vec<Multiaddr>) {
        let mut grouped: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for addr in addrs {
            match addr.iter().last() {
                Some(Protocol::P2p(peer)) => grouped.entry(peer).or_default().push(addr),
                _ => {
                    self.bare.insert(addr.clone());
                    if let Err(error) = swarm.dial(addr.clone()) {
                        tracing::debug!(%addr, %error, "dial failed");
                    }
                }
            }
        }
        for (peer, mut addrs) in grouped {
            // Behind a NAT, the coordinator over QUIC where it listens on it: the address it then
            // sees us at is our QUIC socket's, the one we listen on too, so hole punching has a
            // way in (a TCP dial leaves from a port nothing listens on).
            let quic = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::QuicV1));
            if self.prefer_quic && addrs.iter().any(quic) {
                addrs.retain(quic);
            }
            self.peers.insert(peer);
            for addr in &addrs {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            // Kept beside those other targets gave (a group's old leader's among them).
            let known = self.by_peer.entry(peer).or_default();
            for addr in addrs.iter().rev() {
                known.retain(|a| a != addr);
                known.insert(0, addr.clone());
            }
            known.truncate(JOIN_ADDRS_PER_PEER_MAX);
            let addrs = known.clone();
            if !swarm.is_connected(&peer)
                && let Err(error) = swarm.dial(DialOpts::peer_id(peer).addresses(addrs).build())
            {
                tracing::debug!(%peer, %error, "dial failed");
            }
        }
        // Find the rest of the swarm through the peers just added.
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }

    fn on_connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        if let ConnectedPoint::Dialer { address, .. } = endpoint
            && self.bare.contains(address)
            && self.peers.insert(peer)
        {
            tracing::info!(%peer, %address, "joined");
        } else if self.peers.contains(&peer) {
            tracing::info!(%peer, "connected to join peer");
        }
    }
}

/// The model files of `found` this node can serve: a GGUF file that does not parse as a model
/// Hearth runs (cut short, another format renamed, an architecture it does not know) is left out
/// of its adverts with a warning, rather than offered to coordinators that would route to it.
fn usable(
    found: Vec<(std::path::PathBuf, hearth_protocol::ModelId)>,
) -> Vec<(std::path::PathBuf, hearth_protocol::ModelId)> {
    found
        .into_iter()
        .filter(|(path, id)| {
            let gguf = path.extension().is_some_and(|e| e == "gguf");
            match gguf.then(|| hearth_kernels::GgufModel::open_hashed(path, *id)) {
                Some(Err(e)) => {
                    tracing::warn!("not served: {e}");
                    false
                }
                _ => true,
            }
        })
        .collect()
}
