//! A keyed hash for the cores' maps of peers (the simulator uses it for its own tables too).
//! Lookups by peer id are the commonest thing the scheduler, ledger and registry do (several per
//! event, at 100,000 peers), and a hash map answers them in
//! constant time where an ordered map compares ids down a tree. The hash is keyed by the caller's
//! secret seed: a peer that could compute it could grind identities that collide and slow every
//! lookup, so it must not know the key. Nothing iterates these maps where order could change a
//! decision (the few scans pick by an explicit order), so the key never changes what is decided.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use hearth_protocol::PeerId;

/// A map keyed by peer id, hashed with a secret key.
pub type PeerMap<V> = HashMap<PeerId, V, PeerHash>;

/// Builds [`PeerHasher`]s with one secret key.
#[derive(Clone, Copy, Debug)]
pub struct PeerHash {
    key: [u64; 2],
}

impl PeerHash {
    /// The hash keyed by `seed` (the caller's secret seed; a different purpose than the draws it
    /// also seeds, so it is mixed first).
    pub fn new(seed: u64) -> Self {
        let mut state = seed ^ 0x7065_6572_2068_6173; // "peer has"
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            key: [next(), next() | 1],
        }
    }

    /// An empty map with this hash.
    pub fn map<V>(self) -> PeerMap<V> {
        HashMap::with_hasher(self)
    }
}

impl BuildHasher for PeerHash {
    type Hasher = PeerHasher;

    fn build_hasher(&self) -> PeerHasher {
        PeerHasher {
            state: self.key[0],
            multiplier: self.key[1],
        }
    }
}

/// Folded multiplication of each word with the key (aHash's fallback construction).
#[derive(Debug)]
pub struct PeerHasher {
    state: u64,
    multiplier: u64,
}

impl PeerHasher {
    fn fold(&mut self, word: u64) {
        let full = u128::from(self.state ^ word) * u128::from(self.multiplier);
        self.state = (full as u64) ^ ((full >> 64) as u64);
    }
}

impl Hasher for PeerHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.fold(u64::from_le_bytes(word));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.fold(n as u64);
    }

    fn finish(&self) -> u64 {
        let full = u128::from(self.state) * u128::from(self.multiplier.rotate_left(32) | 1);
        (full as u64) ^ ((full >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::SecretKey;

    use super::*;

    #[test]
    fn keyed_hashes_differ_by_key_and_spread() {
        let ids: Vec<PeerId> = (0..1000u32)
            .map(|n| {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&n.to_le_bytes());
                SecretKey::from_bytes(&seed).public().peer_id()
            })
            .collect();
        let (a, b) = (PeerHash::new(1), PeerHash::new(2));
        let differ = ids
            .iter()
            .filter(|id| a.hash_one(id) != b.hash_one(id))
            .count();
        assert_eq!(differ, ids.len(), "another key, other hashes");
        // The low bits (a table's buckets) spread: 1,000 ids over 1,024 buckets fill most.
        let buckets: std::collections::BTreeSet<u64> =
            ids.iter().map(|id| a.hash_one(id) & 1023).collect();
        assert!(buckets.len() > 550, "{} buckets", buckets.len());
        let mut map = a.map();
        for (n, id) in ids.iter().enumerate() {
            map.insert(*id, n);
        }
        assert!(ids.iter().enumerate().all(|(n, id)| map[id] == n));
    }
}
