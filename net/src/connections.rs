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
    /// Directly, dialed or accepted as it is.
    Direct,
    /// Directly, after hole punching upgraded a relayed connection (ordered last: a peer with a
    /// punched connection and another direct one, which hole punching's simultaneous dials leave,
    /// is reached through the punched hole).
    HolePunched,
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
    /// Connections hole punching made that were not established yet when it said so (the two
    /// events come in either order); at most [`PUNCHED_PENDING_MAX`].
    punched: std::collections::VecDeque<(PeerId, ConnectionId, Instant)>,
    /// Peers hole punching reached, and when last: a direct connection to one of them later (a
    /// redial after the punched connection closed) goes through the hole it left, not past a NAT
    /// that lets dials in. At most [`PUNCHED_PENDING_MAX`], the oldest forgotten.
    punched_peers: std::collections::VecDeque<(PeerId, Instant)>,
}

/// How long a punched hole is taken to stay open for a redial (home routers keep a UDP mapping
/// for a few minutes of silence, a TCP one longer).
const PUNCHED_HOLE_KEPT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// A direct connection to a peer this soon after hole punching to it said it succeeded is the
/// punched one (the connection that got through may be the other side's dial, not ours).
const PUNCHED_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Hole-punched connections remembered ahead of their establishment.
const PUNCHED_PENDING_MAX: usize = 64;

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
        } else if let Some(i) = self.punched.iter().position(|(p, c, at)| {
            *c == connection || (*p == peer && now.duration_since(*at) < PUNCHED_WITHIN)
        }) {
            self.punched.remove(i);
            Via::HolePunched
        } else if self
            .punched_peers
            .iter()
            .any(|(p, at)| *p == peer && now.duration_since(*at) < PUNCHED_HOLE_KEPT)
        {
            Via::HolePunched
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
        // The connection it names, else the direct ones open to that peer (behind its NAT, a
        // direct connection is one hole punching made), else the next one to come.
        let now = Instant::now();
        self.punched_peers.retain(|(p, _)| *p != peer);
        if self.punched_peers.len() >= PUNCHED_PENDING_MAX {
            self.punched_peers.pop_front();
        }
        self.punched_peers.push_back((peer, now));
        let mut marked = false;
        if let Some(open) = self.open.get_mut(&peer) {
            let named = open.iter().any(|(id, _, _)| *id == connection);
            for (id, since, via) in open.iter_mut() {
                let recent = now.duration_since(*since) < PUNCHED_WITHIN;
                if *id == connection || (!named && *via == Via::Direct && recent) {
                    *via = Via::HolePunched;
                    marked = true;
                }
            }
        }
        if !marked {
            if self.punched.len() >= PUNCHED_PENDING_MAX {
                self.punched.pop_front();
            }
            self.punched.push_back((peer, connection, now));
        }
    }

    /// Each connected peer and how it is reached ([`Connections::via`]).
    pub(crate) fn peers(&self) -> impl Iterator<Item = (PeerId, Via)> + '_ {
        self.open.iter().filter_map(|(peer, open)| {
            open.iter()
                .map(|(_, _, via)| *via)
                .max()
                .map(|via| (*peer, via))
        })
    }

    /// How `peer` is reached: through a punched hole if any connection is one, else directly if
    /// any is direct, else through a relay.
    pub(crate) fn via(&self, peer: &PeerId) -> Option<Via> {
        self.open.get(peer)?.iter().map(|(_, _, via)| *via).max()
    }

    /// Relayed connections to peers also reached another way (a punched hole, or directly): the
    /// work should leave the relay for the direct path, and these close once idle.
    pub(crate) fn superseded_relayed(&self) -> Vec<(PeerId, ConnectionId)> {
        self.open
            .iter()
            .filter(|(_, open)| open.iter().any(|(_, _, via)| *via != Via::Relayed))
            .flat_map(|(peer, open)| {
                open.iter()
                    .filter(|(_, _, via)| *via == Via::Relayed)
                    .map(|(id, _, _)| (*peer, *id))
            })
            .collect()
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
