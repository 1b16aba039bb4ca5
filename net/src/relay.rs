//! Who a relay serves: members within the `RELAY_*` limits, strangers little or nothing.
//!
//! A member is a peer whose signed gossip this peer accepted (its adverts, the coordinator's
//! memberships; in a co-op, only members the gate admitted get that far). Members reserve slots
//! and open circuits within libp2p's per-peer limits, sized for a whole generation and a weight
//! fetch. Strangers never reserve (a relayed address is for a peer of the swarm); outside a co-op
//! they may open a few circuits a minute ([`RELAY_STRANGER_CIRCUITS_PER_MINUTE`], a CLI fetching
//! weights from a private node), in a co-op none. The decisions are pure, time an argument; the
//! relay asks them through its rate limiters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

use crate::limits::{RELAY_MEMBERS_MAX, RELAY_STRANGER_CIRCUITS_PER_MINUTE, RELAY_STRANGERS_MAX};

/// What a relay knows of who it serves, shared with its rate limiters.
#[derive(Clone, Default)]
pub(crate) struct Access(Arc<Mutex<Rules>>);

impl Access {
    fn with<T>(&self, f: impl FnOnce(&mut Rules) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `peer` showed it belongs: its signed gossip was accepted.
    pub(crate) fn admit(&self, peer: PeerId) {
        self.with(|r| r.admit(peer));
    }

    /// `peer` no longer belongs (refused or revoked in a co-op).
    pub(crate) fn forget(&self, peer: &PeerId) {
        self.with(|r| r.forget(peer));
    }

    /// Serve members only from now on.
    pub(crate) fn members_only(&self) {
        self.with(|r| r.members_only = true);
    }

    /// The relay's limiter for reservations.
    pub(crate) fn reservation_limiter(&self) -> Box<dyn libp2p::relay::RateLimiter> {
        let access = self.clone();
        Box::new(move |peer: PeerId, _: &libp2p::Multiaddr, _| {
            access.with(|r| r.may_reserve(&peer))
        })
    }

    /// The relay's limiter for circuits, by the peer that opens them.
    pub(crate) fn circuit_limiter(&self) -> Box<dyn libp2p::relay::RateLimiter> {
        let access = self.clone();
        Box::new(move |peer: PeerId, _: &libp2p::Multiaddr, _| {
            access.with(|r| r.may_open_circuit(peer, crate::monotonic_ms()))
        })
    }
}

/// The pure rules.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    members_only: bool,
    /// Members, oldest admitted first; at most [`RELAY_MEMBERS_MAX`].
    members: HashSet<PeerId>,
    order: VecDeque<PeerId>,
    /// Strangers' circuits in the last minute: when each opened ([`crate::monotonic_ms`]); at most
    /// [`RELAY_STRANGERS_MAX`] strangers remembered.
    strangers: HashMap<PeerId, VecDeque<u64>>,
}

impl Rules {
    pub(crate) fn admit(&mut self, peer: PeerId) {
        if self.members.insert(peer) {
            self.order.push_back(peer);
            self.strangers.remove(&peer);
            while self.members.len() > RELAY_MEMBERS_MAX {
                if let Some(oldest) = self.order.pop_front() {
                    self.members.remove(&oldest);
                }
            }
        }
    }

    pub(crate) fn forget(&mut self, peer: &PeerId) {
        if self.members.remove(peer) {
            self.order.retain(|p| p != peer);
        }
    }

    pub(crate) fn may_reserve(&self, peer: &PeerId) -> bool {
        let allowed = self.members.contains(peer);
        if !allowed {
            tracing::debug!(%peer, "relay reservation refused: not (yet) a peer of this swarm");
        }
        allowed
    }

    pub(crate) fn may_open_circuit(&mut self, peer: PeerId, now_ms: u64) -> bool {
        if self.members.contains(&peer) {
            return true;
        }
        if self.members_only {
            tracing::debug!(%peer, "relay circuit refused: not a member of this co-op");
            return false;
        }
        self.strangers.retain(|_, opened| {
            while opened
                .front()
                .is_some_and(|&t| now_ms.saturating_sub(t) >= 60_000)
            {
                opened.pop_front();
            }
            !opened.is_empty()
        });
        if !self.strangers.contains_key(&peer) && self.strangers.len() >= RELAY_STRANGERS_MAX {
            tracing::debug!(%peer, "relay circuit refused: too many strangers this minute");
            return false;
        }
        let opened = self.strangers.entry(peer).or_default();
        if opened.len() >= RELAY_STRANGER_CIRCUITS_PER_MINUTE {
            tracing::debug!(%peer, "relay circuit refused: a stranger past its circuits this minute");
            return false;
        }
        opened.push_back(now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_reserve_and_open_circuits_strangers_a_few_a_minute() {
        let mut rules = Rules::default();
        let member = PeerId::random();
        let stranger = PeerId::random();
        rules.admit(member);
        assert!(rules.may_reserve(&member));
        assert!(!rules.may_reserve(&stranger), "strangers never reserve");
        for _ in 0..100 {
            assert!(
                rules.may_open_circuit(member, 0),
                "members: libp2p's per-peer limits apply"
            );
        }
        for _ in 0..RELAY_STRANGER_CIRCUITS_PER_MINUTE {
            assert!(rules.may_open_circuit(stranger, 1_000));
        }
        assert!(!rules.may_open_circuit(stranger, 1_000), "past its share");
        assert!(
            !rules.may_open_circuit(stranger, 60_999),
            "still within the minute"
        );
        assert!(rules.may_open_circuit(stranger, 61_001), "a minute later");
        // Admitted later (its advert arrived): a member from then on.
        rules.admit(stranger);
        assert!(rules.may_reserve(&stranger));
        rules.forget(&stranger);
        assert!(!rules.may_reserve(&stranger));
    }

    #[test]
    fn a_coop_relay_serves_members_only() {
        let mut rules = Rules {
            members_only: true,
            ..Rules::default()
        };
        let member = PeerId::random();
        rules.admit(member);
        assert!(rules.may_open_circuit(member, 0));
        assert!(!rules.may_open_circuit(PeerId::random(), 0));
    }

    #[test]
    fn what_it_remembers_is_bounded() {
        let mut rules = Rules::default();
        for _ in 0..RELAY_MEMBERS_MAX + 10 {
            rules.admit(PeerId::random());
        }
        assert_eq!(rules.members.len(), RELAY_MEMBERS_MAX);
        assert_eq!(rules.order.len(), RELAY_MEMBERS_MAX);
        let mut refused = 0;
        for _ in 0..RELAY_STRANGERS_MAX + 10 {
            refused += usize::from(!rules.may_open_circuit(PeerId::random(), 0));
        }
        assert_eq!(rules.strangers.len(), RELAY_STRANGERS_MAX);
        assert_eq!(refused, 10);
    }
}
