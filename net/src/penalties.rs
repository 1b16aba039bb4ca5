//! Strikes against peers that send invalid messages. Pure bookkeeping; the event loop acts on the
//! verdicts (gossipsub scoring on every strike, a block at the limit).

use std::collections::HashMap;
use std::hash::Hash;

use crate::limits::{BAD_MESSAGES_MAX, PENALTY_PEERS_MAX};

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

#[cfg(test)]
mod tests {
    use super::*;

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
