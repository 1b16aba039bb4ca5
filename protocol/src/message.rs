//! The messages peers exchange. Each travels inside a [`crate::Signed`] envelope.

use serde::{Deserialize, Serialize};

use crate::{Capabilities, Result};

/// Everything that can be inside a signed envelope. New variants go at the end, and the protocol
/// version rises when an existing one changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A node's capabilities, published on gossip at start and on every heartbeat.
    Advert(Advert),
    /// A co-op member's certificate, published before each advert in a co-op swarm.
    Membership(crate::coop::Membership),
    /// A co-op's revocation of a member, spread by the coordinator to the members.
    Revocation(crate::coop::Revocation),
}

impl Message {
    /// Check the limits the schema cannot express.
    pub fn validate(&self) -> Result<()> {
        match self {
            Message::Advert(advert) => {
                if advert.links.len() > LINKS_MAX
                    || advert.links.iter().any(|l| l.connection.len() > 16)
                {
                    return Err(crate::Error::Limit(format!(
                        "an advert lists at most {LINKS_MAX} links"
                    )));
                }
                let over = |list: &[HeldLayers]| {
                    list.len() > crate::ADVERT_MODELS_MAX
                        || list.iter().any(|h| h.layers.len() > HELD_RANGES_MAX)
                };
                if over(&advert.held) || over(&advert.fetching) {
                    return Err(crate::Error::Limit(format!(
                        "an advert lists at most {} models held in part (and as many being fetched), {HELD_RANGES_MAX} layer ranges each",
                        crate::ADVERT_MODELS_MAX
                    )));
                }
                if advert.serves.len() > SERVES_MAX {
                    return Err(crate::Error::Limit(format!(
                        "an advert names at most {SERVES_MAX} coordinators served"
                    )));
                }
                advert.capabilities.validate()
            }
            Message::Membership(_) | Message::Revocation(_) => Ok(()),
        }
    }
}

/// A node's heartbeat: who it is (the envelope's signer), what it offers, and when to expect the next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Advert {
    /// Increases by one with every advert from the same process; restarts at 0 with the process.
    pub seq: u64,
    /// The interval at which the node sends adverts, so the coordinator knows when one is missed.
    pub heartbeat_interval_ms: u32,
    /// What the node offers.
    pub capabilities: Capabilities,
    /// Pipeline sessions whose state (KV caches) the node holds now, checks' replays included. A
    /// node sends an advert soon after it changes, so a session's end is seen on every stage.
    pub stage_sessions: u32,
    /// Model bytes it received from peers (layers it fetched to serve), since it started.
    pub bytes_received: u64,
    /// Models it holds in part (fetched from peers): the layer ranges whose stages it can serve.
    pub held: Vec<HeldLayers>,
    /// Layers it is fetching from peers now (the ranges asked of it, per model), so a coverage
    /// view shows what is on its way.
    pub fetching: Vec<HeldLayers>,
    /// Its own connections to the other peers it works with (at most [`LINKS_MAX`]).
    pub links: Vec<Link>,
    /// Whether peers outside its network can dial it, as AutoNAT found.
    pub reachability: Reachability,
    /// The coordinators it joined (at most [`SERVES_MAX`]): a coordinator registers a node that
    /// names others only, and not itself, as another swarm's (its adverts reach this swarm's
    /// coordinator through a node that serves both). Empty: it serves whoever it hears from.
    pub serves: Vec<crate::PeerId>,
}

/// The most coordinators a node advertises serving.
pub const SERVES_MAX: usize = 16;

/// Whether a peer can be dialed from outside its own network, as AutoNAT (v2) probes found: another
/// peer dialed one of its addresses back (`public`), every address tried failed (`private`: behind
/// a NAT or firewall, reached through hole punching or a relay), or nothing tried yet (`unknown`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Not probed yet.
    #[default]
    Unknown,
    /// An address of it was dialed back.
    Public,
    /// Every address probed failed.
    Private,
}

impl Reachability {
    /// The name `hearth peers` and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

/// Most links an advert lists.
pub const LINKS_MAX: usize = 32;

/// A node's connection to another peer ([`Advert::links`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The other peer (`peer_id` in the API's JSON).
    #[serde(rename = "peer_id")]
    pub peer: crate::PeerId,
    /// `direct`, `hole-punched` or `relayed`.
    pub connection: String,
    /// The round trip to it, as ping last measured it.
    pub rtt_ms: Option<f32>,
}

/// Most layer ranges an advert lists for one model held in part.
pub const HELD_RANGES_MAX: usize = 8;

/// Layer ranges of one model a node holds in part ([`Advert::held`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLayers {
    /// The model.
    pub model: crate::ModelId,
    /// Ranges `[start, end)` whose stages' bytes it holds.
    pub layers: Vec<(u32, u32)>,
}
