//! JSON shapes of the coordinator's HTTP API that more than one crate reads or writes: the
//! coordinator serves them, nodes and the CLI parse them.

use serde::{Deserialize, Serialize};

use crate::{Capabilities, PeerId};

/// `GET /v1/swarm`: how to reach the coordinator's swarm. Open to everyone, since nodes use it to
/// join before they hold any key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// The coordinator's peer id.
    pub peer_id: PeerId,
    /// Multiaddrs it listens on, each ending in `/p2p/<peer_id>`.
    pub addrs: Vec<String>,
    /// The wire protocol version it speaks.
    pub protocol_version: u16,
    /// Whether peers outside its network can dial it, as AutoNAT found.
    #[serde(default)]
    pub reachability: crate::Reachability,
}

fn new_trust() -> String {
    "new".into()
}

/// One element of `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer.
    pub peer_id: PeerId,
    /// Whether its heartbeats are arriving.
    pub online: bool,
    /// Milliseconds since its last advert arrived.
    pub last_seen_ms_ago: u64,
    /// Milliseconds since the coordinator first heard from it.
    pub known_for_ms: u64,
    /// Adverts received from it.
    pub adverts: u64,
    /// What it advertised last.
    pub capabilities: Capabilities,
    /// Pipeline sessions whose state it holds, as it advertised last.
    #[serde(default)]
    pub stage_sessions: u32,
    /// Model bytes it received from peers (layers it fetched to serve), as it advertised last.
    #[serde(default)]
    pub bytes_received: u64,
    /// Models it holds in part (fetched from peers), with the layer ranges it can serve of each.
    #[serde(default)]
    pub layers_held: Vec<crate::HeldLayers>,
    /// Layers it is fetching from peers now, per model, as it advertised last.
    #[serde(default)]
    pub layers_fetching: Vec<crate::HeldLayers>,
    /// How the coordinator reaches it: `direct`, `hole-punched` (a relayed connection upgraded
    /// by hole punching) or `relayed` (through a relay's circuit); none when not connected.
    #[serde(default)]
    pub connection: Option<String>,
    /// Its own connections to the other peers it works with, as it advertised last.
    #[serde(default)]
    pub links: Vec<crate::Link>,
    /// Whether peers outside its network can dial it (AutoNAT), as it advertised last.
    #[serde(default)]
    pub reachability: crate::Reachability,
    /// The round trip between the coordinator and it, as ping last measured it (connected peers).
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// 1 − its worst error estimate over its numeric classes (the ledger's).
    #[serde(default)]
    pub reliability: f64,
    /// Credit for verified work (one per accepted input).
    #[serde(default)]
    pub credit: f64,
    /// Strikes since its last quarantine.
    #[serde(default)]
    pub strikes: u32,
    /// Whether it is quarantined now.
    #[serde(default)]
    pub quarantined: bool,
    /// Why it was last quarantined.
    #[serde(default)]
    pub quarantine_reason: Option<String>,
    /// Its trust in the ledger: `new` (no valid result yet), `earning` (some, not yet enough),
    /// `trusted` (in every numeric class it has) or `quarantined`.
    #[serde(default = "new_trust")]
    pub trust: String,
    /// Valid results in a row (in its class with the most).
    #[serde(default)]
    pub valid_results: u32,
    /// Valid results in a row trust needs.
    #[serde(default)]
    pub valid_results_needed: u32,
    /// While quarantined: how long it still is, in ms.
    #[serde(default)]
    pub quarantine_left_ms: Option<u64>,
    /// Where it listens, as the coordinator learnt it (what another peer dials it at).
    #[serde(default)]
    pub listen_addrs: Vec<String>,
}
