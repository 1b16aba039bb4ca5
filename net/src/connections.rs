//! Replacing stale connections.
//!
//! When a peer is killed, its QUIC connections linger on our side until the idle timeout: UDP has no
//! reset. If the peer restarts under the same identity and connects again, the new connection is no
//! longer its *first*, and gossipsub only exchanges topic subscriptions on a first connection, so
//! neither side would learn the other is subscribed and adverts would stop flowing. So: an inbound
//! connection from a peer we already hold an older connection to (older than
//! [`crate::STALE_CONNECTION_GRACE`], which tells a restart from two peers dialing each other at
//! once) drops every connection to that peer. The peer redials at once and gets a clean first
//! connection.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::swarm::ConnectionId;
use libp2p::{PeerId, Swarm};

use crate::Behaviour;
use crate::limits::STALE_CONNECTION_GRACE;

/// How a connection reaches its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Through a relay's circuit.
    Relayed,
    /// Directly, after hole punching upgraded a relayed connection.
    HolePunched,
    /// Directly, dialed or accepted as it is.
    Direct,
}

impl Via {
    /// As `hearth peers` says it: `direct`, `hole-punched` or `relayed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Relayed => "relayed",
            Via::HolePunched => "hole-punched",
            Via::Direct => "direct",
        }
    }
}

/// When each open connection was established and how it reaches its peer, per peer. Bounded by
/// the connection limits.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: HashMap<PeerId, Vec<(ConnectionId, Instant, Via)>>,
}

impl Connections {
    /// Record a new connection; drop all of the peer's connections if it replaces a stale one.
    pub(crate) fn on_established(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let now = Instant::now();
        let via = if endpoint.is_relayed() {
            Via::Relayed
        } else {
            Via::Direct
        };
        let open = self.open.entry(peer).or_default();
        // A direct connection beside a relayed one is a hole punch (or a dial that got through),
        // not a restart.
        let stale = endpoint.is_listener()
            && via == Via::Direct
            && open.iter().any(|(_, since, old)| {
                *old == Via::Direct && now.duration_since(*since) >= STALE_CONNECTION_GRACE
            });
        open.push((connection, now, via));
        if stale {
            tracing::info!(%peer, "peer reconnected while an older connection lingers; resetting its connections");
            let _ = swarm.disconnect_peer_id(peer);
        }
    }

    /// Hole punching made `connection` to `peer`.
    pub(crate) fn on_hole_punched(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(open) = self.open.get_mut(&peer) {
            for (id, _, via) in open.iter_mut() {
                if *id == connection {
                    *via = Via::HolePunched;
                }
            }
        }
    }

    /// The best way a connection reaches `peer`: direct before hole-punched before relayed.
    pub(crate) fn via(&self, peer: &PeerId) -> Option<Via> {
        self.open.get(peer)?.iter().map(|(_, _, via)| *via).max()
    }

    /// Forget a closed connection.
    pub(crate) fn on_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(open) = self.open.get_mut(&peer) {
            open.retain(|(id, _, _)| *id != connection);
            if open.is_empty() {
                self.open.remove(&peer);
            }
        }
    }
}
