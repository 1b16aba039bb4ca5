//! The part of a peer's event loop every role shares.
//!
//! [`Network`] owns the swarm and does what any Hearth peer does with its events: discovery (mDNS,
//! identify into Kademlia), replacing stale connections, and checking gossip before anything trusts
//! it. The role's own loop sees only what it acts on ([`NetEvent`]).

use futures::StreamExt;
use hearth_protocol::{Message, PeerId, SecretKey};
use libp2p::core::ConnectedPoint;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, gossipsub};

use crate::{
    Behaviour, BehaviourEvent, BoxError, Connections, Gossip, NetConfig, Received, build_swarm,
    discover,
};

/// What a role's event loop is told.
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
                _ => None,
            },
            _ => None,
        }
    }
}
