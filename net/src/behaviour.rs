//! The composed libp2p behaviour and the swarm built around it.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, SwarmBuilder, allow_block_list, autonat, connection_limits,
    dcutr, gossipsub, identify, kad, mdns, memory_connection_limits, noise, ping, relay,
    request_response, tcp, yamux,
};

use crate::gossip::advert_topic;
use crate::limits::{
    CONNECTIONS_MAX, CONNECTIONS_PER_PEER_MAX, GOSSIP_BYTES_MAX, IDLE_CONNECTION_TIMEOUT,
    MEMORY_SHARE_MAX, PENDING_INCOMING_MAX, RELAY_CIRCUIT_BYTES_MAX, RELAY_CIRCUIT_DURATION,
    RELAY_CIRCUITS_MAX, RELAY_CIRCUITS_PER_PEER_MAX, RELAY_RESERVATION_DURATION,
    RELAY_RESERVATIONS_MAX, RELAY_RESERVATIONS_PER_PEER_MAX, WORK_REQUEST_TIMEOUT,
    WORK_STREAMS_MAX,
};
use crate::work::{WORK_STREAM_PROTOCOL, WorkCodec};

/// Protocol name of Hearth's Kademlia DHT, kept apart from the public IPFS one.
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/kad/1.0.0");

/// How often gossipsub maintains its mesh and sends gossip.
const GOSSIP_HEARTBEAT: Duration = Duration::from_millis(700);

/// Errors from building a swarm: libp2p's are of many types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the swarm starts.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// `agent_version` sent in identify, for example `hearth-node/0.1.0`.
    pub agent: String,
    /// Resident memory of this process past which new connections are refused; `None`:
    /// [`crate::MEMORY_SHARE_MAX`] of the machine's memory.
    pub memory_max_bytes: Option<u64>,
    /// Emulated distance: hold everything sent to other peers this long (`--fault delay=MS`).
    pub send_delay: Option<std::time::Duration>,
    /// Offer a circuit relay to peers behind NATs (`--relay`), within the `RELAY_*` limits.
    pub relay: bool,
    /// Ask peers to dial our addresses back (AutoNAT's client), to learn whether we are reachable:
    /// for a node that says it is behind a NAT (`--behind-nat`). Off elsewhere: a dial-back that
    /// gets through arrives as a second connection from a peer we already reach, which the
    /// stale-connection rule (see `connections`) takes for a restart and resets.
    pub autonat: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
            ],
            mdns: true,
            agent: format!("hearth/{}", env!("CARGO_PKG_VERSION")),
            memory_max_bytes: None,
            send_delay: None,
            relay: false,
            autonat: false,
        }
    }
}

pub use derived::{Behaviour, BehaviourEvent};

/// The derive generates `BehaviourEvent` without docs; its variants are the fields' events.
mod derived {
    #![allow(missing_docs)]

    use super::*;

    /// Everything a Hearth peer speaks.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Refuses peers blocked for misbehaving; listed first so they are refused before anything else.
        pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
        /// Refuses, then bans, addresses that open connections too fast.
        pub inbound: crate::inbound::Behaviour,
        /// Caps connections (see [`crate::CONNECTIONS_MAX`]).
        pub limits: connection_limits::Behaviour,
        /// Refuses new connections while this process uses more memory than it may.
        pub memory: memory_connection_limits::Behaviour,
        /// Exchanges listen addresses and protocol versions.
        pub identify: identify::Behaviour,
        /// Keeps connections alive and measures round trips.
        pub ping: ping::Behaviour,
        /// Finds peers on the LAN.
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        /// Finds peers across networks from bootstrap peers.
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
        /// Carries signed adverts.
        pub gossipsub: gossipsub::Behaviour,
        /// Carries work units and their results ([`crate::WorkCodec`]).
        pub work: request_response::Behaviour<WorkCodec>,
        /// Long-lived streams for chained steps ([`crate::steps`]).
        pub steps: libp2p_stream::Behaviour,
        /// A circuit relay for peers behind NATs (`--relay`).
        pub relay: Toggle<relay::Behaviour>,
        /// Reservations on relays, and connections through them.
        pub relay_client: relay::client::Behaviour,
        /// Upgrades a relayed connection to a direct one by hole punching.
        pub dcutr: dcutr::Behaviour,
        /// Asks peers to dial our observed addresses back (AutoNAT v2): whether we are reachable
        /// (`NetConfig::autonat`).
        pub autonat: Toggle<autonat::v2::client::Behaviour>,
        /// Dials back the addresses other peers ask about (AutoNAT v2), from a fresh port, so a
        /// NAT's mapping for our own connection does not pass for reachability.
        pub autonat_server: autonat::v2::server::Behaviour,
    }
}

impl Behaviour {
    fn new(
        key: &libp2p::identity::Keypair,
        relay_client: relay::client::Behaviour,
        config: &NetConfig,
        access: &crate::relay::Access,
    ) -> Result<Self, BoxError> {
        let peer_id = key.public().to_peer_id();

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(GOSSIP_HEARTBEAT)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(GOSSIP_BYTES_MAX)
            .build()
            .map_err(|e| e.to_string())?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )?;
        gossipsub.with_peer_score(
            peer_score_params(),
            gossipsub::PeerScoreThresholds::default(),
        )?;

        let mdns = if config.mdns {
            match mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id) {
                Ok(mdns) => Some(mdns),
                Err(error) => {
                    tracing::warn!(%error, "mDNS unavailable; LAN peers will not be found automatically");
                    None
                }
            }
        } else {
            None
        };

        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(KAD_PROTOCOL),
        );
        // Every Hearth peer answers DHT queries: volunteer swarms are small enough that waiting for
        // autonat to confirm a public address first would leave the DHT empty.
        kad.set_mode(Some(kad::Mode::Server));

        Ok(Self {
            blocked: allow_block_list::Behaviour::default(),
            inbound: crate::inbound::Behaviour::default(),
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(CONNECTIONS_MAX))
                    .with_max_pending_incoming(Some(PENDING_INCOMING_MAX))
                    .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX)),
            ),
            memory: match config.memory_max_bytes {
                Some(bytes) => memory_connection_limits::Behaviour::with_max_bytes(
                    usize::try_from(bytes).unwrap_or(usize::MAX),
                ),
                None => memory_connection_limits::Behaviour::with_max_percentage(MEMORY_SHARE_MAX),
            },
            identify: identify::Behaviour::new(
                identify::Config::new(identify_protocol(), key.public())
                    .with_agent_version(config.agent.clone())
                    // A relayed address gained later reaches the peers already connected.
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(crate::PING_INTERVAL)),
            mdns: mdns.into(),
            kad,
            gossipsub,
            work: request_response::Behaviour::with_codec(
                WorkCodec,
                [(
                    WORK_STREAM_PROTOCOL,
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(WORK_REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(WORK_STREAMS_MAX),
            ),
            steps: libp2p_stream::Behaviour::new(),
            relay: config
                .relay
                .then(|| relay::Behaviour::new(peer_id, relay_config(access)))
                .into(),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: config
                .autonat
                .then(autonat::v2::client::Behaviour::default)
                .into(),
            autonat_server: autonat::v2::server::Behaviour::default(),
        })
    }
}

/// A relay's limits: sized for a whole generation and a weight fetch per circuit, for members
/// only (strangers: see [`crate::relay`]). libp2p's own rate limiters (one circuit per peer every
/// two minutes past 30) would starve a busy member; its per-peer caps stay.
fn relay_config(access: &crate::relay::Access) -> relay::Config {
    relay::Config {
        max_reservations: RELAY_RESERVATIONS_MAX,
        // libp2p refuses only past one more than these (its check is `>`).
        max_reservations_per_peer: RELAY_RESERVATIONS_PER_PEER_MAX - 1,
        reservation_duration: RELAY_RESERVATION_DURATION,
        reservation_rate_limiters: vec![access.reservation_limiter()],
        max_circuits: RELAY_CIRCUITS_MAX,
        max_circuits_per_peer: RELAY_CIRCUITS_PER_PEER_MAX - 1,
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        max_circuit_bytes: RELAY_CIRCUIT_BYTES_MAX,
        circuit_src_rate_limiters: vec![access.circuit_limiter()],
    }
}

/// The identify protocol version: peers that announce another are not Hearth peers of this version.
pub(crate) fn identify_protocol() -> String {
    format!("/hearth/{}", hearth_protocol::PROTOCOL_VERSION)
}

/// Peer scoring for the advert topic: invalid messages cost heavily (three put a peer past the
/// graylist threshold); the mesh-delivery penalties are off, since honest nodes publish only their
/// own heartbeat and would otherwise be punished for quiet.
fn peer_score_params() -> gossipsub::PeerScoreParams {
    // No penalty for many peers at one IP address: a co-op's members behind one home router, or
    // a whole LAN behind a NAT, share one. With gossipsub's default (past 10 peers, a penalty
    // growing with the square of the surplus) the 15th such member's adverts and certificate
    // were ignored. Floods are bounded per author instead (`GOSSIP_MESSAGES_PER_SECOND_MAX`).
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    params.topics.insert(advert_topic().hash(), topic);
    params
}

/// Build a swarm for `key`, listening on `config.listen`.
pub fn build_swarm(
    key: &hearth_protocol::SecretKey,
    config: &NetConfig,
) -> Result<Swarm<Behaviour>, BoxError> {
    build_swarm_with(key, config, &crate::relay::Access::default())
}

/// [`build_swarm`], its relay (if any) serving whom `access` admits.
pub(crate) fn build_swarm_with(
    key: &hearth_protocol::SecretKey,
    config: &NetConfig,
    access: &crate::relay::Access,
) -> Result<Swarm<Behaviour>, BoxError> {
    let mut swarm = SwarmBuilder::with_existing_identity(crate::keypair(key))
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| Behaviour::new(key, relay_client, config, access))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    swarm.behaviour_mut().gossipsub.subscribe(&advert_topic())?;
    for addr in &config.listen {
        swarm.listen_on(addr.clone())?;
    }
    Ok(swarm)
}
