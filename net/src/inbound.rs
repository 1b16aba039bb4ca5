//! New inbound connections per remote address: past [`INBOUND_PER_SECOND_MAX`] in a second the rest
//! are refused before any handshake (a strike for that second); at [`crate::FLOOD_STRIKES_MAX`]
//! strikes the address is banned for [`crate::FLOOD_BAN`]. A flood of connections has no peer id
//! to ban (it may never finish a handshake), so it is the address that answers for it. Connections
//! already established are left alone.

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

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("too many new connections from {0}")]
pub struct Flooding(IpAddr);

/// The guard, as a behaviour that refuses pending inbound connections.
pub struct Behaviour {
    guard: FloodGuard<IpAddr>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            guard: FloodGuard::new(INBOUND_PER_SECOND_MAX),
        }
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Behaviour {
    /// Count a new connection from `ip`: refused while banned or over the rate.
    fn admit(&mut self, ip: IpAddr) -> Result<(), ConnectionDenied> {
        for lifted in self.guard.lift() {
            tracing::info!(ip = %lifted, "connection flood ban lifted");
        }
        if self.guard.is_banned(&ip) {
            return Err(ConnectionDenied::new(Flooding(ip)));
        }
        match self.guard.count(&ip) {
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
        match ip_of(remote_addr) {
            Some(ip) => self.admit(ip),
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

    use std::time::Instant;

    #[test]
    fn an_address_that_floods_is_refused_then_banned() {
        let mut guard = Behaviour::default();
        let flooder: IpAddr = "192.0.2.1".parse().expect("ip");
        let honest: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut refused = 0;
        // Far past the rate for as long as it takes to earn the ban (three seconds over).
        let started = Instant::now();
        while !guard.guard.is_banned(&flooder) {
            assert!(started.elapsed().as_secs() < 10, "never banned");
            for _ in 0..(2 * INBOUND_PER_SECOND_MAX) {
                refused += usize::from(guard.admit(flooder).is_err());
            }
            assert!(
                guard.admit(honest).is_ok(),
                "another address is not refused"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(refused > 0);
        assert!(guard.admit(flooder).is_err(), "banned");
        assert!(guard.admit(honest).is_ok());
    }
}
