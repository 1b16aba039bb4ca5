//! The registry of peers: who is in the swarm, with what hardware, and who has gone quiet.
//!
//! A sans-IO state machine: it is given the time and its inputs, and returns what happened. Nothing
//! in here reads a clock or touches a socket.

use hearth_protocol::api::PeerEntry;
use hearth_protocol::{Advert, Capabilities, PeerId};

use crate::limits::{
    HEARTBEAT_INTERVAL_MAX_MS, HEARTBEAT_INTERVAL_MIN_MS, HEARTBEATS_MISSED_MAX, PEERS_MAX_DEFAULT,
};
use crate::peer_hash::{PeerHash, PeerMap};

/// What the registry is told.
#[derive(Clone, Debug)]
pub enum Input {
    /// A checked advert from `from` (its signer).
    Advert {
        /// The advertising peer.
        from: PeerId,
        /// What it advertised (boxed: adverts are large, ticks are empty).
        advert: Box<Advert>,
    },
    /// Time passed; check for silent peers.
    Tick,
}

/// What happened, for the shell to log or act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A peer advertised for the first time.
    Joined(PeerId),
    /// An offline peer advertised again.
    Returned(PeerId),
    /// A peer missed [`HEARTBEATS_MISSED_MAX`] heartbeats.
    Offline {
        /// The peer.
        peer: PeerId,
        /// How long it has been silent.
        silent_ms: u64,
    },
    /// A new peer was not admitted because the registry is full of online peers.
    Refused(PeerId),
}

#[derive(Clone, Debug)]
struct Record {
    capabilities: Capabilities,
    stage_sessions: u32,
    bytes_received: u64,
    held: Vec<hearth_protocol::HeldLayers>,
    fetching: Vec<hearth_protocol::HeldLayers>,
    links: Vec<hearth_protocol::Link>,
    reachability: hearth_protocol::Reachability,
    first_seen_ms: u64,
    last_seen_ms: u64,
    heartbeat_interval_ms: u64,
    adverts: u64,
    online: bool,
}

impl Record {
    fn deadline_ms(&self) -> u64 {
        self.last_seen_ms + HEARTBEATS_MISSED_MAX * self.heartbeat_interval_ms
    }
}

/// Every peer the coordinator has heard from, at most `peers_max`.
#[derive(Debug)]
pub struct Registry {
    peers: PeerMap<Record>,
    peers_max: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(PEERS_MAX_DEFAULT, 0)
    }
}

impl Registry {
    /// An empty registry remembering at most `peers_max` peers, its table keyed by the secret
    /// `seed` (so no peer can grind ids that collide in it).
    pub fn new(peers_max: usize, seed: u64) -> Self {
        Self {
            peers: PeerHash::new(seed).map(),
            peers_max: peers_max.max(1),
        }
    }

    /// Apply one input at time `now_ms` (milliseconds on any monotonic clock).
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        match input {
            Input::Advert { from, advert } => self.on_advert(now_ms, from, *advert),
            Input::Tick => self.on_tick(now_ms),
        }
    }

    fn on_advert(&mut self, now_ms: u64, from: PeerId, advert: Advert) -> Vec<Output> {
        let heartbeat_interval_ms = u64::from(advert.heartbeat_interval_ms)
            .clamp(HEARTBEAT_INTERVAL_MIN_MS, HEARTBEAT_INTERVAL_MAX_MS);
        if let Some(record) = self.peers.get_mut(&from) {
            record.capabilities = advert.capabilities;
            record.stage_sessions = advert.stage_sessions;
            record.bytes_received = advert.bytes_received;
            record.held = advert.held;
            record.fetching = advert.fetching;
            record.links = advert.links;
            record.reachability = advert.reachability;
            record.last_seen_ms = now_ms;
            record.heartbeat_interval_ms = heartbeat_interval_ms;
            record.adverts += 1;
            let returned = !record.online;
            record.online = true;
            return if returned {
                vec![Output::Returned(from)]
            } else {
                Vec::new()
            };
        }
        if self.peers.len() >= self.peers_max && !self.forget_one_offline() {
            return vec![Output::Refused(from)];
        }
        self.peers.insert(
            from,
            Record {
                capabilities: advert.capabilities,
                stage_sessions: advert.stage_sessions,
                bytes_received: advert.bytes_received,
                held: advert.held,
                fetching: advert.fetching,
                links: advert.links,
                reachability: advert.reachability,
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                heartbeat_interval_ms,
                adverts: 1,
                online: true,
            },
        );
        vec![Output::Joined(from)]
    }

    fn on_tick(&mut self, now_ms: u64) -> Vec<Output> {
        let mut outputs = Vec::new();
        for (peer, record) in &mut self.peers {
            if record.online && now_ms > record.deadline_ms() {
                record.online = false;
                outputs.push(Output::Offline {
                    peer: *peer,
                    silent_ms: now_ms - record.last_seen_ms,
                });
            }
        }
        // In peer order, whatever the table's.
        outputs.sort_unstable_by_key(|o| match o {
            Output::Offline { peer, .. } => *peer,
            Output::Joined(peer) | Output::Returned(peer) | Output::Refused(peer) => *peer,
        });
        outputs
    }

    /// Drop the offline peer silent the longest; false if every peer is online.
    fn forget_one_offline(&mut self) -> bool {
        let oldest = self
            .peers
            .iter()
            .filter(|(_, r)| !r.online)
            .min_by_key(|(peer, r)| (r.last_seen_ms, **peer))
            .map(|(peer, _)| *peer);
        oldest.is_some_and(|peer| self.peers.remove(&peer).is_some())
    }

    /// Every known peer, online or not, as the HTTP API shows them, in peer order.
    pub fn entries(&self, now_ms: u64) -> Vec<PeerEntry> {
        let mut peers: Vec<(&PeerId, &Record)> = self.peers.iter().collect();
        peers.sort_unstable_by_key(|(peer, _)| **peer);
        peers
            .into_iter()
            .map(|(peer, r)| PeerEntry {
                peer_id: *peer,
                online: r.online,
                last_seen_ms_ago: now_ms.saturating_sub(r.last_seen_ms),
                known_for_ms: now_ms.saturating_sub(r.first_seen_ms),
                adverts: r.adverts,
                capabilities: r.capabilities.clone(),
                stage_sessions: r.stage_sessions,
                bytes_received: r.bytes_received,
                layers_held: r.held.clone(),
                layers_fetching: r.fetching.clone(),
                connection: None,
                links: r.links.clone(),
                reachability: r.reachability,
                rtt_ms: None,
                reliability: 0.0,
                credit: 0.0,
                strikes: 0,
                quarantined: false,
                quarantine_reason: None,
                trust: "new".into(),
                valid_results: 0,
                valid_results_needed: crate::limits::TRUST_VALID_RUN_MIN,
                quarantine_left_ms: None,
                listen_addrs: Vec::new(),
            })
            .collect()
    }

    /// Each online peer with what it advertised last, in peer order.
    pub fn online_capabilities(&self) -> Vec<(&PeerId, &Capabilities)> {
        let mut online: Vec<(&PeerId, &Capabilities)> = self
            .peers
            .iter()
            .filter(|(_, r)| r.online)
            .map(|(peer, r)| (peer, &r.capabilities))
            .collect();
        online.sort_unstable_by_key(|(peer, _)| **peer);
        online
    }

    /// What an online peer advertised last.
    pub fn capabilities(&self, peer: &PeerId) -> Option<&Capabilities> {
        self.peers
            .get(peer)
            .filter(|r| r.online)
            .map(|r| &r.capabilities)
    }

    /// The layer ranges of `model` an online peer holds in part (fetched from peers), as it
    /// advertised last.
    pub fn held_layers(&self, peer: &PeerId, model: &hearth_protocol::ModelId) -> Vec<(u32, u32)> {
        self.peers
            .get(peer)
            .filter(|r| r.online)
            .and_then(|r| r.held.iter().find(|h| h.model == *model))
            .map(|h| h.layers.clone())
            .unwrap_or_default()
    }

    /// Peers currently online.
    pub fn online(&self) -> usize {
        self.peers.values().filter(|r| r.online).count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hearth_protocol::{Backend, SecretKey};

    use super::*;

    fn advert(interval_ms: u32) -> Advert {
        Advert {
            seq: 0,
            heartbeat_interval_ms: interval_ms,
            stage_sessions: 0,
            bytes_received: 0,
            held: Vec::new(),
            links: Vec::new(),
            reachability: Default::default(),
            serves: Vec::new(),
            fetching: Vec::new(),
            capabilities: Capabilities {
                backend: Backend::Cpu,
                device: "cpu".into(),
                memory_total_bytes: 1,
                memory_free_bytes: 1,
                threads: 1,
                cpu_model: "cpu".into(),
                cpu_cores: 1,
                cpu_features: vec![],
                host_memory_total_bytes: 1,
                os: "linux".into(),
                arch: "x86_64".into(),
                score: 1.0,
                numeric_class: BTreeMap::new(),
                models: vec![],
            },
        }
    }

    fn peer(n: u64) -> PeerId {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        SecretKey::from_bytes(&seed).public().peer_id()
    }

    #[test]
    fn offline_after_the_missed_heartbeats_and_back_on_the_next_advert() {
        let mut registry = Registry::default();
        let a = peer(1);
        assert_eq!(
            registry.handle(
                0,
                Input::Advert {
                    from: a,
                    advert: Box::new(advert(1000))
                }
            ),
            vec![Output::Joined(a)]
        );
        let limit = HEARTBEATS_MISSED_MAX * 1000;
        assert!(
            registry.handle(limit, Input::Tick).is_empty(),
            "not yet past the deadline"
        );
        assert_eq!(
            registry.handle(limit + 1, Input::Tick),
            vec![Output::Offline {
                peer: a,
                silent_ms: limit + 1
            }]
        );
        assert!(
            registry.handle(limit + 2, Input::Tick).is_empty(),
            "reported once"
        );
        assert!(!registry.entries(limit + 2)[0].online);
        assert_eq!(
            registry.handle(
                limit + 5,
                Input::Advert {
                    from: a,
                    advert: Box::new(advert(1000))
                }
            ),
            vec![Output::Returned(a)]
        );
        let entry = &registry.entries(limit + 5)[0];
        assert!(entry.online);
        assert_eq!(entry.adverts, 2);
    }

    #[test]
    fn claimed_intervals_are_clamped() {
        let mut registry = Registry::default();
        let a = peer(1);
        registry.handle(
            0,
            Input::Advert {
                from: a,
                advert: Box::new(advert(u32::MAX)),
            },
        );
        let latest = HEARTBEATS_MISSED_MAX * HEARTBEAT_INTERVAL_MAX_MS + 1;
        assert_eq!(
            registry.handle(latest, Input::Tick).len(),
            1,
            "a huge claimed interval does not keep a dead peer online"
        );
    }

    #[test]
    fn full_registry_forgets_offline_peers_before_refusing() {
        let mut registry = Registry::default();
        for n in 0..PEERS_MAX_DEFAULT as u64 {
            registry.handle(
                0,
                Input::Advert {
                    from: peer(n),
                    advert: Box::new(advert(1000)),
                },
            );
        }
        let newcomer = peer(u64::MAX);
        assert_eq!(
            registry.handle(
                1,
                Input::Advert {
                    from: newcomer,
                    advert: Box::new(advert(1000))
                }
            ),
            vec![Output::Refused(newcomer)]
        );
        // Everyone but peer 0 keeps advertising; peer 0 goes offline and makes room.
        for n in 1..PEERS_MAX_DEFAULT as u64 {
            registry.handle(
                3500,
                Input::Advert {
                    from: peer(n),
                    advert: Box::new(advert(1000)),
                },
            );
        }
        registry.handle(3501, Input::Tick);
        assert_eq!(
            registry.handle(
                3502,
                Input::Advert {
                    from: newcomer,
                    advert: Box::new(advert(1000))
                }
            ),
            vec![Output::Joined(newcomer)]
        );
        assert_eq!(registry.entries(3502).len(), PEERS_MAX_DEFAULT);
        assert!(registry.entries(3502).iter().all(|e| e.peer_id != peer(0)));
    }
}
