//! The part of a peer's event loop every role shares.
//!
//! [`Network`] owns the swarm and does what any Hearth peer does with its events: discovery (mDNS,
//! identify into Kademlia), replacing stale connections, and checking gossip before anything trusts
//! it. The role's own loop sees only what it acts on ([`NetEvent`]).

use futures::StreamExt;
use hearth_protocol::coop::{MembershipError, Revocation};
use hearth_protocol::work::{WorkRequest, WorkResponse};
use hearth_protocol::{Message, PeerId, PublicKey, SecretKey};
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};

use crate::limits::ADDRS_PER_PEER_MAX;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, gossipsub};

use crate::coop::{Gate, Now};
use crate::{
    Behaviour, BehaviourEvent, BoxError, Connections, Gossip, NetConfig, Received, discover,
};

/// How often graces and bans are checked.
const CLOCK_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// What a role's event loop is told.
// Events are handled one at a time and moved, never queued in bulk: boxing would only add a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum NetEvent {
    /// Now listening on this address.
    Listening(Multiaddr),
    /// No longer listening on this address.
    ListenExpired(Multiaddr),
    /// A connection to `peer` opened.
    Connected {
        /// The remote peer.
        peer: libp2p::PeerId,
        /// How the connection was made.
        endpoint: ConnectedPoint,
    },
    /// The last connection to `peer` closed.
    Disconnected(libp2p::PeerId),
    /// A peer subscribed to the advert topic.
    Subscribed(libp2p::PeerId),
    /// A gossip message passed every check.
    Message(Received),
    /// A peer sent a work request; answer it with [`Network::respond`].
    WorkRequest {
        /// The sender (the connection's authenticated identity).
        peer: PeerId,
        /// What it asks.
        request: WorkRequest,
        /// Where the answer goes.
        channel: WorkChannel,
    },
    /// The answer to a work request this peer sent.
    WorkResponse {
        /// The request it answers.
        id: RequestId,
        /// The answer.
        response: WorkResponse,
    },
    /// A work request this peer sent got no answer.
    WorkFailed {
        /// The request.
        id: RequestId,
        /// Why, for logs.
        error: String,
    },
}

/// Where the answer to a peer's work request goes: its request-response stream, or for a chained
/// step the long-lived stream it came on ([`crate::steps`]).
#[derive(Debug)]
pub enum WorkChannel {
    /// A request-response request's.
    Request(ResponseChannel<WorkResponse>),
    /// A step's on a step stream.
    Stream(crate::steps::StreamReply),
}

/// A work request this peer sent, as [`Network::request`] numbered it (its libp2p id exists only
/// once it is on the wire, which an emulated delay puts off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// A running swarm with Hearth's shared event handling.
pub struct Network {
    /// The swarm, for role-specific calls (dialing, Kademlia).
    pub swarm: Swarm<Behaviour>,
    key: SecretKey,
    gossip: Gossip,
    connections: Connections,
    /// In a co-op swarm, the members-only gate.
    gate: Option<Gate>,
    /// The clock for graces and bans.
    clock: tokio::time::Interval,
    /// What AutoNAT's probes of our addresses found.
    probes: crate::reach::Probes,
    /// Whom our relay (if any) serves.
    access: crate::relay::Access,
    /// Our requests for relay slots, by their listener: the relay's address and the wait before
    /// asking again if it refuses.
    reservations: std::collections::HashMap<
        libp2p::core::transport::ListenerId,
        (Multiaddr, std::time::Duration),
    >,
    /// Whether this peer ever asked a relay for a slot (it is behind a NAT, by its own account).
    reserved_ever: bool,
    /// Refused slots to ask for again, and when.
    reserve_again: Vec<(std::time::Instant, Multiaddr, std::time::Duration)>,
    /// The last round trip ping measured to each connected peer.
    rtts: std::collections::HashMap<libp2p::PeerId, std::time::Duration>,
    /// Emulated distance (`--fault delay=MS`): what this process sends, held MS milliseconds.
    hold: Option<crate::hold::Hold<Held>>,
    /// The addresses each connected peer says it listens on (identify), for routes to hand on.
    listen_addrs: std::collections::HashMap<libp2p::PeerId, Vec<Multiaddr>>,
    /// Work requests in flight with each peer, ours and theirs: a relayed connection superseded by
    /// a direct one is closed only while none is (libp2p's request-response spreads requests over
    /// all of a peer's connections, so the relayed one would keep carrying half the work).
    pub(crate) in_flight: std::collections::HashMap<libp2p::PeerId, u32>,
    /// Our requests on the wire, by libp2p's id.
    on_wire: std::collections::HashMap<OutboundRequestId, RequestId>,
    next_request: u64,
    /// Opens step streams.
    control: libp2p_stream::Control,
    /// Step streams peers open to us.
    incoming_streams: libp2p_stream::IncomingStreams,
    /// The writer task of the step stream to each peer we send steps to, and when it started.
    pub(crate) outgoing: std::collections::HashMap<libp2p::PeerId, (u64, crate::steps::Outgoing)>,
    /// The reader task of each step stream a peer opened to us, by its number.
    pub(crate) incoming: std::collections::HashMap<u64, crate::steps::Incoming>,
    /// Steps we sent on streams and not yet answered, and to whom.
    pub(crate) on_streams: std::collections::HashMap<RequestId, libp2p::PeerId>,
    /// What the stream tasks report, and their sender.
    stream_events: tokio::sync::mpsc::Receiver<crate::steps::StreamEvent>,
    stream_events_to: tokio::sync::mpsc::Sender<crate::steps::StreamEvent>,
    /// Numbers step streams.
    next_stream: u64,
    /// Steps that failed before reaching a stream task (not encodable, the peer's queue full),
    /// told to the role by the next [`Self::next`]: one per step sent, so bounded by the role's
    /// own sends.
    failed_now: std::collections::VecDeque<(RequestId, String)>,
}

/// Events the stream tasks may have queued for the network.
const STREAM_EVENTS_QUEUED_MAX: usize = 1024;

/// Something held by an emulated delay until it is due.
enum Held {
    /// An answer to a peer's request.
    Respond(WorkChannel, WorkResponse),
    /// A gossip message.
    Publish(Message),
    /// One of our requests.
    Request(RequestId, libp2p::PeerId, WorkRequest),
}

impl Network {
    /// Build the swarm for `key` and start listening.
    pub fn new(key: SecretKey, config: &NetConfig) -> Result<Self, BoxError> {
        let access = crate::relay::Access::default();
        let mut swarm = crate::behaviour::build_swarm_with(&key, config, &access)?;
        let mut control = swarm.behaviour_mut().steps.new_control();
        let incoming_streams = control.accept(crate::steps::STEP_STREAM_PROTOCOL)?;
        let (stream_events_to, stream_events) =
            tokio::sync::mpsc::channel(STREAM_EVENTS_QUEUED_MAX);
        Ok(Self {
            control,
            incoming_streams,
            outgoing: std::collections::HashMap::new(),
            incoming: std::collections::HashMap::new(),
            on_streams: std::collections::HashMap::new(),
            stream_events,
            stream_events_to,
            next_stream: 0,
            failed_now: std::collections::VecDeque::new(),
            swarm,
            key,
            gossip: Gossip::default(),
            connections: Connections::default(),
            gate: None,
            probes: Default::default(),
            access,
            reservations: std::collections::HashMap::new(),
            reserve_again: Vec::new(),
            reserved_ever: false,
            rtts: std::collections::HashMap::new(),
            hold: match config.send_delay.filter(|d| !d.is_zero()) {
                Some(delay) => Some(crate::hold::Hold::new(delay)?),
                None => None,
            },
            on_wire: std::collections::HashMap::new(),
            in_flight: std::collections::HashMap::new(),
            listen_addrs: std::collections::HashMap::new(),
            next_request: 0,
            clock: {
                let mut clock = tokio::time::interval(CLOCK_TICK);
                clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                clock
            },
        })
    }

    /// Make this a co-op swarm: from now on only members of `coops` (one or more, at most
    /// [`crate::coop::COOPS_MAX`]) are dealt with (see [`crate::coop`]), each co-op's gossip travels on
    /// its own topic, and the members in `revocations` never are.
    pub fn join_coop(
        &mut self,
        coops: impl IntoIterator<Item = PublicKey>,
        revocations: impl IntoIterator<Item = Revocation>,
    ) -> Result<(), BoxError> {
        let mut gate = Gate::new(coops, self.local_peer());
        for revocation in revocations {
            if let Err(why) = gate.revoke(revocation, Now::read()) {
                tracing::warn!(%why, "a revocation of another co-op; ignored");
            }
        }
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        for topic in gate.topics() {
            gossipsub.subscribe(&gossipsub::IdentTopic::new(topic))?;
        }
        gossipsub.unsubscribe(&crate::gossip::advert_topic());
        self.gate = Some(gate);
        self.access.members_only();
        Ok(())
    }

    /// Whether `peer` is a member of this peer's co-op now (always, outside a co-op swarm).
    pub fn member(&mut self, peer: &PeerId) -> Result<(), MembershipError> {
        match &mut self.gate {
            Some(gate) => gate.check(peer, Now::read()),
            None => Ok(()),
        }
    }

    /// The co-ops of ours whose membership admits `peer` now (none outside a co-op swarm).
    pub fn coops_of(&mut self, peer: &PeerId) -> Vec<PublicKey> {
        self.gate
            .as_mut()
            .map(|gate| gate.coops_of(peer, Now::read()))
            .unwrap_or_default()
    }

    /// Whether `coop` revoked `peer`.
    pub fn is_revoked_in(&self, coop: &PublicKey, peer: &PeerId) -> bool {
        self.gate
            .as_ref()
            .is_some_and(|gate| gate.is_revoked_in(coop, peer))
    }

    /// Apply a revocation the co-op signed: refuse the member everything at once and, if it is new,
    /// spread it (to the member too), then cut it off after [`crate::coop::REFUSAL_NOTICE`].
    /// Returns whether it was new.
    pub fn revoke(&mut self, revocation: Revocation) -> Result<bool, MembershipError> {
        let Some(gate) = &mut self.gate else {
            return Err(MembershipError::Missing);
        };
        let new = gate.revoke(revocation.clone(), Now::read())?;
        self.access
            .forget(&crate::to_libp2p_peer_id(&revocation.body.member));
        if new {
            let _ = self.publish(&Message::Revocation(revocation));
        }
        Ok(new)
    }

    /// Publish every revocation known again, for peers that joined after them.
    pub fn republish_revocations(&mut self) {
        let Some(gate) = &self.gate else { return };
        let all: Vec<Revocation> = gate.revocations().cloned().collect();
        for revocation in all {
            let _ = self.publish(&Message::Revocation(revocation));
        }
    }

    /// The round trip to `peer` in milliseconds, as ping last measured it (while connected).
    pub fn rtt_ms(&self, peer: &PeerId) -> Option<f64> {
        self.rtts
            .get(&crate::to_libp2p_peer_id(peer))
            .map(|d| d.as_secs_f64() * 1e3)
    }

    /// Every peer this one is connected to (but `except`), how, and the round trip ping last
    /// measured: what a node advertises as its links.
    pub fn links(&self, except: &[libp2p::PeerId]) -> Vec<hearth_protocol::Link> {
        self.connections
            .peers()
            .filter(|(peer, _)| !except.contains(peer))
            .filter_map(|(peer, via)| {
                Some(hearth_protocol::Link {
                    peer: crate::from_libp2p_peer_id(&peer)?,
                    connection: via.as_str().to_string(),
                    rtt_ms: self.rtts.get(&peer).map(|d| d.as_secs_f32() * 1e3),
                })
            })
            .take(hearth_protocol::LINKS_MAX)
            .collect()
    }

    /// Whether peers outside our network can dial us, as AutoNAT's probes found; a peer that
    /// reserved a relay slot (behind a NAT by its own account) is private until a probe shows
    /// otherwise (AutoNAT may take a while to probe its public address, or find no peer to ask).
    pub fn reachability(&self) -> crate::Reachability {
        match self.probes.reachability() {
            crate::Reachability::Unknown if self.reserved_ever => crate::Reachability::Private,
            measured => measured,
        }
    }

    /// How this peer reaches `peer` now ([`crate::Via`]: through a punched hole, directly or
    /// through a relay), if connected.
    pub fn via(&self, peer: &PeerId) -> Option<crate::connections::Via> {
        self.connections.via(&crate::to_libp2p_peer_id(peer))
    }

    /// Reserve a slot on the relay at `relay` (its address, ending in `/p2p/ID`), so peers that
    /// cannot dial this one reach it through the relay.
    /// A relay that refuses (it has not heard from us yet, or is full) is asked again after
    /// [`crate::RELAY_RESERVE_RETRY`], doubling up to [`crate::RELAY_RESERVE_RETRY_MAX`], while we
    /// are connected to it.
    pub fn reserve_relay(&mut self, relay: &Multiaddr) -> Result<(), String> {
        self.reserve(relay.clone(), crate::RELAY_RESERVE_RETRY)
    }

    fn reserve(&mut self, relay: Multiaddr, retry: std::time::Duration) -> Result<(), String> {
        let circuit = relay.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
        self.reserved_ever = true;
        let listener = self.swarm.listen_on(circuit).map_err(|e| e.to_string())?;
        self.reservations.insert(listener, (relay, retry));
        Ok(())
    }

    /// A work request with `peer` ended (answered, failed, or our answer sent or lost).
    fn work_done(&mut self, peer: &libp2p::PeerId) {
        if let std::collections::hash_map::Entry::Occupied(mut n) = self.in_flight.entry(*peer) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }

    /// Close relayed connections to peers reached directly too (after hole punching), once no work
    /// is in flight with them, so the work runs over the direct path and not through the relay.
    fn leave_relays(&mut self) {
        for (peer, connection) in self.connections.superseded_relayed() {
            if !self.in_flight.contains_key(&peer) && self.swarm.close_connection(connection) {
                tracing::info!(%peer, "closing the relayed connection: the work runs directly now");
            }
        }
    }

    /// Ask again for the relay slots whose wait is over, from relays we are still connected to.
    fn reserve_due(&mut self) {
        let now = std::time::Instant::now();
        let (due, waiting) = std::mem::take(&mut self.reserve_again)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.reserve_again = waiting;
        for (_, relay, retry) in due {
            let connected =
                crate::last_peer_id(&relay).is_some_and(|p| self.swarm.is_connected(&p));
            if !connected {
                continue;
            }
            tracing::info!(%relay, "asking the relay for a slot again");
            if let Err(why) = self.reserve(relay.clone(), retry) {
                tracing::warn!(%relay, %why, "cannot ask the relay for a slot");
            }
        }
    }

    /// This peer's key, for what it signs besides its messages (receipts, grants).
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// This peer's id.
    pub fn local_peer(&self) -> PeerId {
        self.key.public().peer_id()
    }

    /// Sign and publish `message` on gossip: on the advert topic, or in a co-op swarm on the
    /// topic of the co-op it concerns (a certificate's, a revocation's), else on every co-op's.
    pub fn publish(&mut self, message: &Message) -> Result<(), BoxError> {
        if let Some(hold) = &mut self.hold {
            hold.push(Held::Publish(message.clone()));
            return Ok(());
        }
        self.publish_now(message)
    }

    /// [`Self::publish`] at once, whatever the emulated distance.
    fn publish_now(&mut self, message: &Message) -> Result<(), BoxError> {
        let topics: Vec<gossipsub::IdentTopic> = match &self.gate {
            None => vec![crate::gossip::advert_topic()],
            Some(gate) => {
                let concerns = match message {
                    Message::Membership(m) => Some(m.body.coop),
                    Message::Revocation(r) => Some(r.body.coop),
                    _ => None,
                };
                gate.coops()
                    .iter()
                    .zip(gate.topics())
                    .filter(|(c, _)| concerns.is_none_or(|of| of == **c))
                    .map(|(_, topic)| gossipsub::IdentTopic::new(topic))
                    .collect()
            }
        };
        if topics.is_empty() {
            return Err("a co-op message of none of this peer's co-ops".into());
        }
        // Sent if any topic took it; the error of one that did not is kept for the caller.
        let mut sent = false;
        let mut failure = None;
        for topic in topics {
            match self
                .gossip
                .publish(&mut self.swarm, &self.key, message, topic)
            {
                Ok(()) => sent = true,
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) if !sent => Err(error),
            _ => Ok(()),
        }
    }

    /// The addresses `peer` says it listens on (as identify last told), at most
    /// [`ADDRS_PER_PEER_MAX`], for another peer to dial it by.
    pub fn listen_addrs(&self, peer: &PeerId) -> Vec<String> {
        self.listen_addrs
            .get(&crate::to_libp2p_peer_id(peer))
            .into_iter()
            .flatten()
            .take(ADDRS_PER_PEER_MAX)
            .map(ToString::to_string)
            .collect()
    }

    /// Where `peer` can be dialed (addresses another peer handed on): known from now on.
    pub fn add_addrs(&mut self, peer: &PeerId, addrs: &[String]) {
        let peer = crate::to_libp2p_peer_id(peer);
        for addr in addrs.iter().take(ADDRS_PER_PEER_MAX) {
            if let Ok(addr) = addr.parse::<Multiaddr>() {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
        }
    }

    /// Send a work request to `peer` (dialing it if need be); the answer comes as
    /// [`NetEvent::WorkResponse`] or [`NetEvent::WorkFailed`] with the returned id.
    pub fn request(&mut self, peer: &PeerId, request: WorkRequest) -> RequestId {
        let peer = crate::to_libp2p_peer_id(peer);
        let id = RequestId(self.next_request);
        self.next_request += 1;
        if let Some(hold) = &mut self.hold {
            hold.push(Held::Request(id, peer, request));
        } else {
            self.put_on_wire(id, peer, request);
        }
        id
    }

    fn put_on_wire(&mut self, id: RequestId, peer: libp2p::PeerId, request: WorkRequest) {
        *self.in_flight.entry(peer).or_default() += 1;
        if crate::steps::goes_on_shared_stream(&request) {
            return self.put_on_stream(id, peer, &request);
        }
        let wire = self.swarm.behaviour_mut().work.send_request(&peer, request);
        self.on_wire.insert(wire, id);
    }

    /// A chained step goes on the step stream to `peer` (opened by its writer task if need be);
    /// its answer or failure comes back through the stream events.
    fn put_on_stream(&mut self, id: RequestId, peer: libp2p::PeerId, request: &WorkRequest) {
        // Reported by the next `next`, as a failure on the wire would be.
        let failed = |network: &mut Self, why: String| {
            network.work_done(&peer);
            network.failed_now.push_back((id, why));
        };
        let message = match crate::steps::encode(request) {
            Ok(message) => message,
            Err(why) => return failed(self, why),
        };
        if !self.outgoing.get(&peer).is_some_and(|(_, o)| o.is_open()) {
            if self.outgoing.len() >= crate::steps::STEP_STREAMS_MAX
                && let Some(oldest) = self
                    .outgoing
                    .iter()
                    .min_by_key(|(_, (n, _))| *n)
                    .map(|(p, _)| *p)
            {
                self.outgoing.remove(&oldest);
            }
            let number = self.next_stream;
            self.next_stream += 1;
            let writer = crate::steps::Outgoing::start(
                peer,
                self.control.clone(),
                self.stream_events_to.clone(),
            );
            self.outgoing.insert(peer, (number, writer));
        }
        let (_, writer) = self.outgoing.get(&peer).expect("started above");
        match writer.send(id, message) {
            Ok(()) => {
                self.on_streams.insert(id, peer);
            }
            Err(why) => failed(self, why),
        }
    }

    /// Answer a work request. Returns false if the requester is gone.
    pub fn respond(&mut self, channel: WorkChannel, response: WorkResponse) -> bool {
        if let Some(hold) = &mut self.hold {
            hold.push(Held::Respond(channel, response));
            return true;
        }
        self.respond_now(channel, response)
    }

    fn respond_now(&mut self, channel: WorkChannel, response: WorkResponse) -> bool {
        match channel {
            WorkChannel::Request(channel) => self
                .swarm
                .behaviour_mut()
                .work
                .send_response(channel, response)
                .is_ok(),
            WorkChannel::Stream(reply) => {
                self.work_done(&reply.peer);
                self.incoming
                    .get(&reply.stream)
                    .is_some_and(|incoming| incoming.answer(&response))
            }
        }
    }

    /// A peer opened a step stream to us: served by a reader task of its own. A peer has one at a
    /// time (a new one replaces its old one, which it opens only when the old one broke), in a
    /// co-op only a member, and at most [`crate::steps::STEP_STREAMS_MAX`] peers at once (the
    /// oldest stream closed for a new one).
    fn on_incoming_stream(&mut self, peer: libp2p::PeerId, stream: libp2p::Stream) {
        if let Some(gate) = &mut self.gate {
            let admitted = crate::from_libp2p_peer_id(&peer)
                .is_some_and(|from| gate.check(&from, Now::read()).is_ok());
            if !admitted {
                tracing::debug!(%peer, "step stream from a peer this co-op does not admit; closed");
                return;
            }
        }
        self.incoming.retain(|_, incoming| incoming.peer != peer);
        if self.incoming.len() >= crate::steps::STEP_STREAMS_MAX
            && let Some(oldest) = self.incoming.keys().min().copied()
        {
            self.incoming.remove(&oldest);
        }
        let number = self.next_stream;
        self.next_stream += 1;
        let reader =
            crate::steps::Incoming::start(peer, number, stream, self.stream_events_to.clone());
        self.incoming.insert(number, reader);
    }

    /// What a stream task reported, as the role sees it.
    fn on_stream_event(&mut self, event: crate::steps::StreamEvent) -> Option<NetEvent> {
        use crate::steps::StreamEvent;
        match event {
            StreamEvent::Answered(id, response) => {
                let peer = self.on_streams.remove(&id)?;
                self.work_done(&peer);
                Some(NetEvent::WorkResponse { id, response })
            }
            StreamEvent::Failed(id, error) => {
                if let Some(peer) = self.on_streams.remove(&id) {
                    self.work_done(&peer);
                }
                Some(NetEvent::WorkFailed { id, error })
            }
            StreamEvent::Closed(stream) => {
                self.incoming.remove(&stream);
                None
            }
            StreamEvent::Step {
                peer,
                stream,
                request,
            } => {
                let channel = WorkChannel::Stream(crate::steps::StreamReply { stream, peer });
                self.on_request(peer, request, channel)
            }
        }
    }

    /// A work request from `peer`, on either kind of stream: checked against the co-op's gate,
    /// then handed to the role. Counted in flight until answered.
    fn on_request(
        &mut self,
        peer: libp2p::PeerId,
        request: WorkRequest,
        channel: WorkChannel,
    ) -> Option<NetEvent> {
        // Until our answer is sent or lost (`ResponseSent`, `InboundFailure`, or a stream's).
        *self.in_flight.entry(peer).or_default() += 1;
        let Some(from) = crate::from_libp2p_peer_id(&peer) else {
            tracing::warn!(%peer, "work request from a non-ed25519 peer; dropped");
            return None;
        };
        if let Some(gate) = &mut self.gate
            && let Err(why) = gate.check(&from, Now::read())
        {
            tracing::warn!(peer = %from, %why, "work request refused: not a member of this co-op");
            self.respond(
                channel,
                WorkResponse::Rejected(format!("not a member of this co-op: {why}")),
            );
            return None;
        }
        Some(NetEvent::WorkRequest {
            peer: from,
            request,
            channel,
        })
    }

    /// Send what is held and due.
    fn release_held(&mut self) {
        let due = self.hold.as_mut().map(|h| h.take_due()).unwrap_or_default();
        for held in due {
            match held {
                Held::Respond(channel, response) => {
                    self.respond_now(channel, response);
                }
                Held::Publish(message) => {
                    if let Err(error) = self.publish_now(&message) {
                        tracing::debug!(%error, "held gossip not sent");
                    }
                }
                Held::Request(id, peer, request) => self.put_on_wire(id, peer, request),
            }
        }
    }

    /// The next event the role acts on. Cancel-safe: events are handled whole between awaits.
    pub async fn next(&mut self) -> NetEvent {
        loop {
            if let Some((id, error)) = self.failed_now.pop_front() {
                return NetEvent::WorkFailed { id, error };
            }
            let hold = self.hold.as_mut();
            let holding = hold.is_some();
            let event = tokio::select! {
                () = async move { if let Some(hold) = hold { hold.woken().await } }, if holding => {
                    self.release_held();
                    continue;
                }
                event = self.swarm.select_next_some() => event,
                Some((peer, stream)) = self.incoming_streams.next() => {
                    self.on_incoming_stream(peer, stream);
                    continue;
                }
                Some(event) = self.stream_events.recv() => match self.on_stream_event(event) {
                    Some(event) => return event,
                    None => continue,
                },
                _ = self.clock.tick() => {
                    self.on_clock();
                    continue;
                }
            };
            if let Some(event) = self.handle(event) {
                return event;
            }
        }
    }

    /// Lift flood bans that ran out; in a co-op, refuse connected peers that showed no membership
    /// in their grace, cut off refused peers whose notice is over, and lift bans that ran out.
    fn on_clock(&mut self) {
        self.gossip.tick(&mut self.swarm);
        self.reserve_due();
        self.leave_relays();
        let Some(gate) = &mut self.gate else {
            return;
        };
        let (cut_off, lifted) = gate.tick(Now::read());
        for peer in cut_off {
            let peer = crate::to_libp2p_peer_id(&peer);
            self.access.forget(&peer);
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
        for peer in lifted {
            tracing::info!(%peer, "co-op refusal lifted; the peer may try again");
            let peer = crate::to_libp2p_peer_id(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
    }

    fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetEvent> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // A relay serves only at an address it is reached at: one started with `--relay`
                // says it has a public address, so what it listens on is.
                let relayed = address
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit));
                if self.swarm.behaviour().relay.is_enabled() && !relayed {
                    self.swarm.add_external_address(address.clone());
                }
                Some(NetEvent::Listening(address))
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => Some(NetEvent::ListenExpired(address)),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed = endpoint.is_relayed(), "connected");
                // Dialed outright by a peer we had no connection to (so not through a hole punched
                // from a relayed connection, whose simultaneous dials also arrive as inbound
                // connections): reachable. Not for a peer behind a NAT (it reserved a relay
                // slot): a peer it once punched to gets through the NAT's leftover mapping later.
                if let ConnectedPoint::Listener { send_back_addr, .. } = &endpoint
                    && !endpoint.is_relayed()
                    && self.connections.via(&peer_id).is_none()
                    && !self.reserved_ever
                {
                    self.probes.dialed_in(send_back_addr);
                }
                self.connections
                    .on_established(&mut self.swarm, peer_id, connection_id, &endpoint);
                if let Some(gate) = &mut self.gate {
                    match crate::from_libp2p_peer_id(&peer_id) {
                        Some(peer) => gate.connected(peer, Now::read()),
                        None => {
                            // Certificates name ed25519 identities: this peer can never show one.
                            tracing::warn!(peer = %peer_id, "refused: not an ed25519 identity, so never a member of this co-op");
                            self.swarm.behaviour_mut().blocked.block_peer(peer_id);
                        }
                    }
                }
                Some(NetEvent::Connected {
                    peer: peer_id,
                    endpoint,
                })
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.connections.on_closed(peer_id, connection_id);
                if num_established == 0 {
                    self.rtts.remove(&peer_id);
                    self.listen_addrs.remove(&peer_id);
                }
                if num_established == 0
                    && let Some(gate) = &mut self.gate
                    && let Some(peer) = crate::from_libp2p_peer_id(&peer_id)
                {
                    gate.disconnected(&peer);
                }
                (num_established == 0).then(|| {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    NetEvent::Disconnected(peer_id)
                })
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(%address, "an address peers may reach us at");
                None
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                let reservation = self.reservations.remove(&listener_id);
                match (reservation, reason) {
                    (Some((relay, retry)), Err(error)) => {
                        tracing::info!(%relay, %error, retry_s = retry.as_secs_f32(), "the relay refused a slot; asking again later");
                        let next = (retry * 2).min(crate::RELAY_RESERVE_RETRY_MAX);
                        self.reserve_again
                            .push((std::time::Instant::now() + retry, relay, next));
                    }
                    (_, reason) => tracing::info!(?addresses, ?reason, "listener closed"),
                }
                None
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener failed");
                None
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                None
            }
            SwarmEvent::Behaviour(event) => {
                match discover(&mut self.swarm, note_addrs(&mut self.listen_addrs, event))? {
                    BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                        propagation_source,
                        message_id,
                        message,
                    }) => self
                        .gossip
                        .receive(
                            &mut self.swarm,
                            self.gate.as_mut(),
                            &self.access,
                            propagation_source,
                            message_id,
                            message,
                        )
                        .map(NetEvent::Message),
                    BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                        if let Some(gate) = &mut self.gate
                            && let Some(peer) = crate::from_libp2p_peer_id(&peer_id)
                        {
                            match gate.topic_index(topic.as_str()) {
                                Some(i) => gate.subscribed(peer, i, Now::read()),
                                None => gate.subscribed_elsewhere(peer, topic.as_str()),
                            }
                        }
                        Some(NetEvent::Subscribed(peer_id))
                    }
                    BehaviourEvent::Work(event) => self.on_work(event),
                    BehaviourEvent::Ping(libp2p::ping::Event {
                        peer,
                        result: Ok(rtt),
                        ..
                    }) => {
                        self.rtts.insert(peer, rtt);
                        None
                    }
                    BehaviourEvent::Dcutr(libp2p::dcutr::Event {
                        remote_peer_id,
                        result,
                    }) => {
                        match result {
                            Ok(connection) => {
                                tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection replaces the relayed one");
                                self.connections.on_hole_punched(remote_peer_id, connection);
                            }
                            Err(error) => {
                                tracing::info!(peer = %remote_peer_id, %error, "hole punching failed; the connection stays relayed");
                            }
                        }
                        None
                    }
                    BehaviourEvent::RelayClient(
                        libp2p::relay::client::Event::ReservationReqAccepted {
                            relay_peer_id, ..
                        },
                    ) => {
                        tracing::info!(relay = %relay_peer_id, "reserved a slot on a relay: reachable through it");
                        None
                    }
                    BehaviourEvent::RelayClient(event) => {
                        tracing::debug!(?event, "relay client");
                        None
                    }
                    BehaviourEvent::Autonat(libp2p::autonat::v2::client::Event {
                        tested_addr,
                        server,
                        result,
                        ..
                    }) => {
                        let reached = result.is_ok();
                        tracing::debug!(addr = %tested_addr, %server, reached, "AutoNAT probe");
                        let before = self.probes.reachability();
                        self.probes.record(tested_addr, reached);
                        let now = self.probes.reachability();
                        if now != before {
                            tracing::info!(reachability = now.as_str(), "reachability");
                        }
                        None
                    }
                    BehaviourEvent::Relay(event) => {
                        tracing::debug!(?event, "relay");
                        None
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn on_work(
        &mut self,
        event: request_response::Event<WorkRequest, WorkResponse>,
    ) -> Option<NetEvent> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_request(peer, request, WorkChannel::Request(channel)),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.work_done(&peer);
                    Some(NetEvent::WorkResponse {
                        id: self.on_wire.remove(&request_id)?,
                        response,
                    })
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.work_done(&peer);
                Some(NetEvent::WorkFailed {
                    id: self.on_wire.remove(&request_id)?,
                    error: error.to_string(),
                })
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.work_done(&peer);
                tracing::debug!(%peer, %error, "inbound work request failed");
                None
            }
            request_response::Event::ResponseSent { peer, .. } => {
                self.work_done(&peer);
                None
            }
        }
    }
}

/// Keep in `known` what identify says a peer listens on; hand the event on.
fn note_addrs(
    known: &mut std::collections::HashMap<libp2p::PeerId, Vec<Multiaddr>>,
    event: BehaviourEvent,
) -> BehaviourEvent {
    if let BehaviourEvent::Identify(libp2p::identify::Event::Received { peer_id, info, .. }) =
        &event
    {
        let addrs = info
            .listen_addrs
            .iter()
            .take(ADDRS_PER_PEER_MAX)
            .cloned()
            .collect();
        known.insert(*peer_id, addrs);
    }
    event
}
