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

/// When each open connection was established, per peer. Bounded by the connection limits.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: HashMap<PeerId, Vec<(ConnectionId, Instant)>>,
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
        let open = self.open.entry(peer).or_default();
        let stale = endpoint.is_listener()
            && open
                .iter()
                .any(|(_, since)| now.duration_since(*since) >= STALE_CONNECTION_GRACE);
        open.push((connection, now));
        if stale {
            tracing::info!(%peer, "peer reconnected while an older connection lingers; resetting its connections");
            let _ = swarm.disconnect_peer_id(peer);
        }
    }

    /// Forget a closed connection.
    pub(crate) fn on_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(open) = self.open.get_mut(&peer) {
            open.retain(|(id, _)| *id != connection);
            if open.is_empty() {
                self.open.remove(&peer);
            }
        }
    }
}
