//! The part of a peer's event loop every role shares.
//!
//! [`Network`] owns the swarm and does what any Hearth peer does with its events: discovery (mDNS,
//! identify into Kademlia), replacing stale connections, and checking gossip before anything trusts
//! it. The role's own loop sees only what it acts on ([`NetEvent`]).

use futures::StreamExt;
use hearth_protocol::work::{WorkRequest, WorkResponse};
use hearth_protocol::{Message, PeerId, SecretKey};
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, gossipsub};

use crate::{
    Behaviour, BehaviourEvent, BoxError, Connections, Gossip, NetConfig, Received, build_swarm,
    discover,
};

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
        channel: ResponseChannel<WorkResponse>,
    },
    /// The answer to a work request this peer sent.
    WorkResponse {
        /// The request it answers.
        id: OutboundRequestId,
        /// The answer.
        response: WorkResponse,
    },
    /// A work request this peer sent got no answer.
    WorkFailed {
        /// The request.
        id: OutboundRequestId,
        /// Why, for logs.
        error: String,
    },
}

/// A running swarm with Hearth's shared event handling.
pub struct Network {
    /// The swarm, for role-specific calls (dialing, Kademlia).
    pub swarm: Swarm<Behaviour>,
    key: SecretKey,
    gossip: Gossip,
    connections: Connections,
}

impl Network {
    /// Build the swarm for `key` and start listening.
    pub fn new(key: SecretKey, config: &NetConfig) -> Result<Self, BoxError> {
        let swarm = build_swarm(&key, config)?;
        Ok(Self {
            swarm,
            key,
            gossip: Gossip::default(),
            connections: Connections::default(),
        })
    }

    /// This peer's id.
    pub fn local_peer(&self) -> PeerId {
        self.key.public().peer_id()
    }

    /// Sign and publish `message` on gossip.
    pub fn publish(&mut self, message: &Message) -> Result<(), BoxError> {
        self.gossip.publish(&mut self.swarm, &self.key, message)
    }

    /// Send a work request to `peer` (dialing it if need be); the answer comes as
    /// [`NetEvent::WorkResponse`] or [`NetEvent::WorkFailed`] with the returned id.
    pub fn request(&mut self, peer: &PeerId, request: WorkRequest) -> OutboundRequestId {
        let peer = crate::to_libp2p_peer_id(peer);
        self.swarm.behaviour_mut().work.send_request(&peer, request)
    }

    /// Answer a work request. Returns false if the requester is gone.
    pub fn respond(
        &mut self,
        channel: ResponseChannel<WorkResponse>,
        response: WorkResponse,
    ) -> bool {
        self.swarm
            .behaviour_mut()
            .work
            .send_response(channel, response)
            .is_ok()
    }

    /// The next event the role acts on. Cancel-safe: events are handled whole between awaits.
    pub async fn next(&mut self) -> NetEvent {
        loop {
            let event = self.swarm.select_next_some().await;
            if let Some(event) = self.handle(event) {
                return event;
            }
        }
    }

    fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetEvent> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                Some(NetEvent::Listening(address))
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => Some(NetEvent::ListenExpired(address)),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                self.connections
                    .on_established(&mut self.swarm, peer_id, connection_id, &endpoint);
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
                (num_established == 0).then(|| {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    NetEvent::Disconnected(peer_id)
                })
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                None
            }
            SwarmEvent::Behaviour(event) => match discover(&mut self.swarm, event)? {
                BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                }) => self
                    .gossip
                    .receive(&mut self.swarm, propagation_source, message_id, message)
                    .map(NetEvent::Message),
                BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. }) => {
                    Some(NetEvent::Subscribed(peer_id))
                }
                BehaviourEvent::Work(event) => self.on_work(event),
                _ => None,
            },
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
                } => {
                    let Some(from) = crate::from_libp2p_peer_id(&peer) else {
                        tracing::warn!(%peer, "work request from a non-ed25519 peer; dropped");
                        return None;
                    };
                    Some(NetEvent::WorkRequest {
                        peer: from,
                        request,
                        channel,
                    })
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => Some(NetEvent::WorkResponse {
                    id: request_id,
                    response,
                }),
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => Some(NetEvent::WorkFailed {
                id: request_id,
                error: error.to_string(),
            }),
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound work request failed");
                None
            }
            request_response::Event::ResponseSent { .. } => None,
        }
    }
}
