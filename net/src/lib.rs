//! The libp2p swarm that Hearth's node and coordinator share.
//!
//! Both roles join the same swarm with the same transports and behaviours, so this crate builds it
//! once ([`build_swarm`]): QUIC with TCP + noise + yamux as fallback, identify, ping, mDNS on a LAN,
//! Kademlia seeded with bootstrap peers, gossipsub for adverts, connection limits and a block list.
//! Each role's event loop owns a [`Network`], which handles what every peer does with swarm events
//! (discovery, stale connections, and checking gossip: opening the signed envelope, reporting
//! the verdict to gossipsub's peer scoring, blocking peers that keep sending bad messages) and hands
//! the role only the [`NetEvent`]s it acts on.
//!
//! Identity: a node's key lives in its data folder ([`load_or_create_identity`]); the same ed25519 key
//! is its libp2p identity and its receipt signer ([`keypair`], [`to_libp2p_peer_id`]).

mod behaviour;
mod connections;
pub use connections::Via;
pub mod coop;
mod discovery;
pub mod fetch;
mod gossip;
mod hold;
mod identity_file;
pub mod inbound;
mod limits;
mod network;
mod penalties;
mod reach;
mod relay;
pub mod steps;
pub use reach::Reachability;
pub mod weights;
mod work;

pub use behaviour::{Behaviour, BehaviourEvent, BoxError, NetConfig, build_swarm};
use connections::Connections;
use discovery::discover;
use gossip::Gossip;
pub use gossip::{ADVERT_TOPIC, Received};
pub use identity_file::{IDENTITY_FILE, IdentityError, load_identity, load_or_create_identity};
pub use libp2p;
pub use limits::*;
pub use network::{NetEvent, Network, RequestId, WorkChannel};
pub use penalties::{Flood, FloodGuard};
pub use work::{WORK_STREAM_PROTOCOL, WorkCodec};

use hearth_protocol::SecretKey;

/// Milliseconds on this process's monotonic clock: the `now_ms` the shells pass to the sans-IO
/// guards ([`FloodGuard`], [`coop::Gate`]). The guards never read a clock themselves.
pub fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = EPOCH.get_or_init(std::time::Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// The libp2p keypair of a Hearth identity: the same ed25519 key.
pub fn keypair(secret: &SecretKey) -> libp2p::identity::Keypair {
    let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(secret.to_bytes())
        .expect("any 32 bytes are an ed25519 secret key");
    libp2p::identity::Keypair::from(libp2p::identity::ed25519::Keypair::from(secret))
}

/// The libp2p peer id of a Hearth peer id.
pub fn to_libp2p_peer_id(peer: &hearth_protocol::PeerId) -> libp2p::PeerId {
    libp2p::PeerId::from_bytes(&peer.to_multihash_bytes())
        .expect("an ed25519 identity multihash is a valid libp2p peer id")
}

/// The Hearth peer id of a libp2p peer id, if it names an ed25519 key (the only kind Hearth uses).
pub fn from_libp2p_peer_id(peer: &libp2p::PeerId) -> Option<hearth_protocol::PeerId> {
    hearth_protocol::PeerId::from_multihash_bytes(&peer.to_bytes()).ok()
}

/// The last peer id in `addr` (`…/p2p/RELAY/p2p-circuit/p2p/PEER` names PEER): whom a dial to it
/// reaches, or who a relayed connection came from.
pub(crate) fn last_peer_id(addr: &libp2p::Multiaddr) -> Option<libp2p::PeerId> {
    addr.iter().fold(None, |last, p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hearth_and_libp2p_agree_on_peer_ids() {
        for seed in [[0u8; 32], [1; 32], [0xff; 32]] {
            let secret = SecretKey::from_bytes(&seed);
            let ours = secret.public().peer_id();
            let theirs = keypair(&secret).public().to_peer_id();
            assert_eq!(ours.to_string(), theirs.to_string());
            assert_eq!(to_libp2p_peer_id(&ours), theirs);
            assert_eq!(from_libp2p_peer_id(&theirs), Some(ours));
        }
    }
}
