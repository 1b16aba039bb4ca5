//! New inbound connections per remote address: past [`INBOUND_PER_SECOND_MAX`] in a second the rest
//! are refused before any handshake (a strike for that second); at [`crate::FLOOD_STRIKES_MAX`]
//! strikes the address is banned for [`crate::FLOOD_BAN`]. A flood of connections has no peer id
//! to ban (it may never finish a handshake), so it is the address that answers for it. A
//! connection through a relay's circuit comes from the relay's address but answers for the peer at
//! the circuit's other end, which the relay vouches for: a busy relay carrying many honest peers is
//! never banned for one of them. Connections already established are left alone.

use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

use crate::limits::{FLOOD_BAN, INBOUND_PER_SECOND_MAX};
use crate::penalties::{Flood, FloodGuard};

/// Who answers for a new inbound connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The address it came from.
    Ip(IpAddr),
    /// The peer at the other end of a relay's circuit.
    Relayed(libp2p::PeerId),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Relayed(peer) => write!(f, "{peer} (relayed)"),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("too many new connections from {0}")]
pub struct Flooding(Source);

/// The guard, as a behaviour that refuses pending inbound connections.
pub struct Behaviour {
    guard: FloodGuard<Source>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            guard: FloodGuard::new(INBOUND_PER_SECOND_MAX),
        }
    }
}

/// Who answers for a connection from `addr`: a relayed one (`…/p2p-circuit/p2p/PEER`, or just
/// `/p2p/PEER` as libp2p's relay client gives it) the peer, any other the IP address.
fn source_of(addr: &Multiaddr) -> Option<Source> {
    let relayed = addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
        || addr
            .iter()
            .next()
            .is_some_and(|p| matches!(p, Protocol::P2p(_)));
    if relayed {
        return crate::last_peer_id(addr).map(Source::Relayed);
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(Source::Ip(IpAddr::V4(ip))),
        Protocol::Ip6(ip) => Some(Source::Ip(IpAddr::V6(ip))),
        _ => None,
    })
}

impl Behaviour {
    /// Count a new connection from `ip` at `now_ms`: refused while banned or over the rate.
    fn admit(&mut self, ip: Source, now_ms: u64) -> Result<(), ConnectionDenied> {
        for lifted in self.guard.lift(now_ms) {
            tracing::info!(ip = %lifted, "connection flood ban lifted");
        }
        if self.guard.is_banned(&ip, now_ms) {
            return Err(ConnectionDenied::new(Flooding(ip)));
        }
        match self.guard.count(&ip, now_ms) {
            Flood::Within => Ok(()),
            Flood::Over => Err(ConnectionDenied::new(Flooding(ip))),
            Flood::Throttled(strikes) => {
                tracing::warn!(%ip, strikes, "throttled: over {INBOUND_PER_SECOND_MAX} new connections a second from one address");
                Err(ConnectionDenied::new(Flooding(ip)))
            }
            Flood::Ban => {
                tracing::warn!(%ip, ban_s = FLOOD_BAN.as_secs(), "banned for flooding connections: new connections from the address refused");
                Err(ConnectionDenied::new(Flooding(ip)))
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match source_of(remote_addr) {
            Some(source) => self.admit(source, crate::monotonic_ms()),
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: libp2p::PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: libp2p::PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: libp2p::PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_floods_is_refused_then_banned_then_let_back() {
        let mut guard = Behaviour::default();
        let flooder = Source::Ip("192.0.2.1".parse().expect("ip"));
        let honest = Source::Ip("192.0.2.2".parse().expect("ip"));
        let mut refused = 0;
        // Twice the rate, every second, until the third second over bans it.
        for second in 0..u64::from(crate::FLOOD_STRIKES_MAX) {
            let now_ms = second * 1000 + 500;
            assert!(!guard.guard.is_banned(&flooder, now_ms), "banned early");
            for _ in 0..(2 * INBOUND_PER_SECOND_MAX) {
                refused += usize::from(guard.admit(flooder, now_ms).is_err());
            }
            assert!(
                guard.admit(honest, now_ms).is_ok(),
                "another address is not refused"
            );
        }
        let banned_at = 2_500;
        assert_eq!(refused, 3 * INBOUND_PER_SECOND_MAX as usize);
        assert!(guard.guard.is_banned(&flooder, banned_at));
        let ban_ms = FLOOD_BAN.as_millis() as u64;
        // Refused for the whole ban, even at a trickle; the other address never is.
        assert!(
            guard.admit(flooder, banned_at + ban_ms - 1).is_err(),
            "banned"
        );
        assert!(guard.admit(honest, banned_at + ban_ms - 1).is_ok());
        assert!(guard.admit(flooder, banned_at + ban_ms).is_ok(), "let back");
    }

    #[test]
    fn a_relayed_connection_answers_for_its_peer_not_the_relay() {
        let relay = libp2p::PeerId::random();
        let peer = libp2p::PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/192.0.2.9/udp/4001/quic-v1/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .expect("addr");
        assert_eq!(source_of(&circuit), Some(Source::Relayed(peer)));
        let bare: Multiaddr = format!("/p2p/{peer}").parse().expect("addr");
        assert_eq!(source_of(&bare), Some(Source::Relayed(peer)));
        let direct: Multiaddr = "/ip4/192.0.2.9/udp/4001/quic-v1".parse().expect("addr");
        assert_eq!(
            source_of(&direct),
            Some(Source::Ip("192.0.2.9".parse().expect("ip")))
        );
        // A relayed peer flooding is refused; another peer through the same relay is not.
        let mut guard = Behaviour::default();
        let now_ms = 500;
        let mut refused = 0;
        for _ in 0..(2 * INBOUND_PER_SECOND_MAX) {
            refused += usize::from(guard.admit(Source::Relayed(peer), now_ms).is_err());
        }
        assert_eq!(refused, INBOUND_PER_SECOND_MAX as usize);
        let other = Source::Relayed(libp2p::PeerId::random());
        assert!(guard.admit(other, now_ms).is_ok());
    }
}
