//! Strikes against peers that send invalid messages, and against peers that send too many valid
//! ones. Pure bookkeeping; the event loops act on the verdicts (gossipsub scoring on every strike,
//! a block at the limit; throttling, then a ban, for floods).

use std::collections::HashMap;
use std::hash::Hash;

use crate::limits::{BAD_MESSAGES_MAX, FLOOD_BAN, FLOOD_STRIKES_MAX, PENALTY_PEERS_MAX};

/// What to do with a peer after a strike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Drop the message and warn; the peer has this many strikes.
    Warn(u32),
    /// The peer reached [`BAD_MESSAGES_MAX`]: block it.
    Block,
}

/// Strike counts per peer, bounded by [`PENALTY_PEERS_MAX`].
#[derive(Debug)]
pub(crate) struct Penalties<P> {
    strikes: HashMap<P, u32>,
}

impl<P> Default for Penalties<P> {
    fn default() -> Self {
        Self {
            strikes: HashMap::new(),
        }
    }
}

impl<P: Eq + Hash + Clone> Penalties<P> {
    /// Record an invalid message from `peer`.
    pub(crate) fn strike(&mut self, peer: &P) -> Verdict {
        if !self.strikes.contains_key(peer) && self.strikes.len() >= PENALTY_PEERS_MAX {
            // Forget the least-struck peers (the ones with one strike) to make room.
            let floor = self.strikes.values().copied().min().unwrap_or(0);
            self.strikes.retain(|_, count| *count > floor);
        }
        let count = self.strikes.entry(peer.clone()).or_insert(0);
        *count += 1;
        if *count >= BAD_MESSAGES_MAX {
            Verdict::Block
        } else {
            Verdict::Warn(*count)
        }
    }

    /// Strikes recorded against `peer`.
    #[cfg(test)]
    fn strikes(&self, peer: &P) -> u32 {
        self.strikes.get(peer).copied().unwrap_or(0)
    }

    /// Peers tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.strikes.len()
    }
}

/// What a [`FloodGuard`] says about one more message from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// Within the rate: handle it.
    Within,
    /// Over the rate this second: drop it (the strike for this second is already counted).
    Over,
    /// The first over the rate this second: drop it; the peer has this many strikes.
    Throttled(u32),
    /// Over the rate for the [`FLOOD_STRIKES_MAX`]th second: ban the peer.
    Ban,
}

/// Messages per peer per second, with a strike for each second a peer goes over and a ban of
/// [`FLOOD_BAN`] at [`FLOOD_STRIKES_MAX`] strikes. It keeps the bans and their ends; the caller
/// blocks and unblocks. Bounded by [`PENALTY_PEERS_MAX`]; peers quiet for a minute are forgotten.
///
/// Sans-IO: time comes in as `now_ms` (milliseconds on any monotonic clock the caller keeps, such
/// as [`crate::monotonic_ms`]), so tests drive it without sleeping.
#[derive(Debug)]
pub struct FloodGuard<P> {
    per_second: u32,
    /// Per peer: the second counted, messages in it, strikes.
    counts: HashMap<P, (u64, u32, u32)>,
    /// Banned peers, and when their ban ends (ms).
    bans: HashMap<P, u64>,
}

impl<P: Eq + Hash + Clone> FloodGuard<P> {
    /// A guard allowing `per_second` messages a second per peer.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            counts: HashMap::new(),
            bans: HashMap::new(),
        }
    }

    /// Count one message from `peer` at `now_ms`.
    pub fn count(&mut self, peer: &P, now_ms: u64) -> Flood {
        let second = now_ms / 1000;
        if !self.counts.contains_key(peer) && self.counts.len() >= PENALTY_PEERS_MAX {
            self.forget_quiet(now_ms);
            if self.counts.len() >= PENALTY_PEERS_MAX {
                self.counts.retain(|_, (_, _, strikes)| *strikes > 0);
            }
        }
        let entry = self.counts.entry(peer.clone()).or_insert((second, 0, 0));
        if entry.0 != second {
            *entry = (second, 0, entry.2);
        }
        entry.1 += 1;
        if entry.1 <= self.per_second {
            return Flood::Within;
        }
        if entry.1 > self.per_second + 1 {
            return Flood::Over;
        }
        entry.2 += 1;
        if entry.2 < FLOOD_STRIKES_MAX {
            return Flood::Throttled(entry.2);
        }
        self.counts.remove(peer);
        if self.bans.len() >= PENALTY_PEERS_MAX {
            // Keep the longest bans: the earliest to end would be lifted soonest anyway.
            let soonest = self
                .bans
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(p, _)| p.clone());
            if let Some(soonest) = soonest {
                self.bans.remove(&soonest);
            }
        }
        let ban_ms = u64::try_from(FLOOD_BAN.as_millis()).unwrap_or(u64::MAX);
        self.bans
            .insert(peer.clone(), now_ms.saturating_add(ban_ms));
        Flood::Ban
    }

    /// Whether `peer` is banned at `now_ms`.
    pub fn is_banned(&self, peer: &P, now_ms: u64) -> bool {
        self.bans.get(peer).is_some_and(|end| *end > now_ms)
    }

    /// Time passed to `now_ms`: the peers whose ban ended (for the caller to let back); quiet
    /// peers forgotten.
    pub fn lift(&mut self, now_ms: u64) -> Vec<P> {
        let mut lifted = Vec::new();
        self.bans.retain(|peer, end| {
            let over = *end <= now_ms;
            if over {
                lifted.push(peer.clone());
            }
            !over
        });
        self.forget_quiet(now_ms);
        lifted
    }

    /// Forget the peers quiet for a minute, strikes and all.
    fn forget_quiet(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        self.counts
            .retain(|_, (s, _, _)| second.saturating_sub(*s) < 60);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_throttled_each_second_then_banned() {
        let mut guard = FloodGuard::new(5);
        for second in 0..FLOOD_STRIKES_MAX as u64 {
            let now = second * 1000 + 10;
            for _ in 0..5 {
                assert_eq!(guard.count(&"mallory", now), Flood::Within);
                assert_eq!(guard.count(&"alice", now), Flood::Within);
            }
            let verdict = guard.count(&"mallory", now);
            if second + 1 < FLOOD_STRIKES_MAX as u64 {
                assert_eq!(verdict, Flood::Throttled(second as u32 + 1));
                assert_eq!(guard.count(&"mallory", now), Flood::Over);
            } else {
                assert_eq!(verdict, Flood::Ban);
            }
        }
        // Alice, at the rate but never over it, is never throttled; a new second starts afresh.
        assert_eq!(guard.count(&"alice", 10_000), Flood::Within);
        // Mallory's ban ends after FLOOD_BAN, and quiet peers are forgotten.
        let ban_ms = FLOOD_BAN.as_millis() as u64;
        assert!(guard.is_banned(&"mallory", 2_010 + ban_ms - 1));
        assert!(!guard.is_banned(&"mallory", 2_010 + ban_ms));
        assert!(guard.lift(2_010 + ban_ms - 1).is_empty());
        assert_eq!(guard.lift(2_010 + ban_ms), vec!["mallory"]);
        assert!(guard.lift(100_000).is_empty());
        assert!(guard.bans.is_empty() && guard.counts.is_empty());
    }

    #[test]
    fn blocks_at_the_limit() {
        let mut p = Penalties::default();
        for n in 1..BAD_MESSAGES_MAX {
            assert_eq!(p.strike(&"mallory"), Verdict::Warn(n));
        }
        assert_eq!(p.strike(&"mallory"), Verdict::Block);
        assert_eq!(p.strikes(&"alice"), 0);
    }

    #[test]
    fn table_stays_bounded_under_a_sybil_flood() {
        let mut p = Penalties::default();
        p.strike(&u64::MAX);
        p.strike(&u64::MAX);
        for sybil in 0..(3 * PENALTY_PEERS_MAX as u64) {
            p.strike(&sybil);
            assert!(p.len() <= PENALTY_PEERS_MAX);
        }
        // The repeat offender survives the evictions of one-strike peers.
        assert_eq!(p.strikes(&u64::MAX), 2);
    }
}
