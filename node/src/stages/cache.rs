//! What the stage server keeps loaded and for how long, decided without a clock: layer ranges with
//! their sizes, and each (range, session) KV cache with its last use. Time comes in as `now_ms`
//! (the shell passes [`hearth_net::monotonic_ms`]); every eviction is of the least recently used,
//! ties broken by key so the choice never depends on a hash map's order.

use std::collections::HashMap;
use std::hash::Hash;

use crate::limits::{STAGE_SESSION_TTL, STAGES_LOADED_MAX};

/// A range bigger than the node's whole `--max-memory`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("takes about {size} bytes, over this node's --max-memory of {cap}")]
pub(crate) struct TooBig {
    /// The range's size.
    pub(crate) size: u64,
    /// The cap.
    pub(crate) cap: u64,
}

#[derive(Debug)]
struct Range {
    bytes: u64,
    used_ms: u64,
}

/// The bookkeeping of loaded ranges `R` and their sessions' caches.
#[derive(Debug)]
pub(crate) struct Cache<R> {
    ranges: HashMap<R, Range>,
    sessions: HashMap<(R, u64), u64>,
}

impl<R> Default for Cache<R> {
    fn default() -> Self {
        Self {
            ranges: HashMap::new(),
            sessions: HashMap::new(),
        }
    }
}

fn ttl_ms() -> u64 {
    u64::try_from(STAGE_SESSION_TTL.as_millis()).unwrap_or(u64::MAX)
}

impl<R: Copy + Eq + Hash + Ord> Cache<R> {
    /// Make room for `range` of `bytes` and count it loaded at `now_ms`. Returns the ranges to
    /// unload first, least recently used first: as many as it takes to stay under `cap` bytes
    /// (`--max-memory`) and [`STAGES_LOADED_MAX`] ranges. Their sessions are forgotten.
    pub(crate) fn admit(
        &mut self,
        range: R,
        bytes: u64,
        cap: Option<u64>,
        now_ms: u64,
    ) -> Result<Vec<R>, TooBig> {
        if let Some(cap) = cap
            && bytes > cap
        {
            return Err(TooBig { size: bytes, cap });
        }
        let mut evicted = Vec::new();
        loop {
            let loaded: u64 = self.ranges.values().map(|r| r.bytes).sum();
            let over_cap = cap.is_some_and(|cap| loaded + bytes > cap);
            if !over_cap && self.ranges.len() < STAGES_LOADED_MAX {
                break;
            }
            let Some(oldest) = self
                .ranges
                .iter()
                .min_by_key(|(key, r)| (r.used_ms, **key))
                .map(|(key, _)| *key)
            else {
                break;
            };
            self.unload(&oldest);
            evicted.push(oldest);
        }
        self.ranges.insert(
            range,
            Range {
                bytes,
                used_ms: now_ms,
            },
        );
        Ok(evicted)
    }

    /// Forget `range` and its sessions (unloaded, or its load failed).
    pub(crate) fn unload(&mut self, range: &R) {
        self.ranges.remove(range);
        self.sessions.retain(|(r, _), _| r != range);
    }

    /// `session` used `range` at `now_ms`.
    pub(crate) fn touch(&mut self, range: R, session: u64, now_ms: u64) {
        if let Some(r) = self.ranges.get_mut(&range) {
            r.used_ms = r.used_ms.max(now_ms);
        }
        self.sessions.insert((range, session), now_ms);
    }

    /// The sessions unused for longer than [`STAGE_SESSION_TTL`] at `now_ms` (a driver that
    /// vanished), forgotten here; the caller frees their caches.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<(R, u64)> {
        let mut stale: Vec<(R, u64)> = self
            .sessions
            .iter()
            .filter(|(_, used)| now_ms.saturating_sub(**used) > ttl_ms())
            .map(|(key, _)| *key)
            .collect();
        stale.sort_unstable();
        for key in &stale {
            self.sessions.remove(key);
        }
        stale
    }

    /// Of `caches`, the (range, session) used least recently (never-used ones first), forgotten
    /// here; the caller frees its cache.
    pub(crate) fn evict_oldest(&mut self, caches: &[(R, u64)]) -> Option<(R, u64)> {
        let oldest = caches
            .iter()
            .min_by_key(|key| (self.sessions.get(key).copied(), **key))
            .copied()?;
        self.sessions.remove(&oldest);
        Some(oldest)
    }

    /// Sessions with a cache on some range.
    pub(crate) fn session_count(&self) -> usize {
        let mut sessions: Vec<u64> = self.sessions.keys().map(|(_, s)| *s).collect();
        sessions.sort_unstable();
        sessions.dedup();
        sessions.len()
    }

    /// `session` ended, on every range.
    pub(crate) fn end(&mut self, session: u64) {
        self.sessions.retain(|(_, s), _| *s != session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<R: Copy + Eq + Hash + Ord> Cache<R> {
        fn contains(&self, range: &R) -> bool {
            self.ranges.contains_key(range)
        }
    }

    #[test]
    fn the_least_recently_used_range_makes_room() {
        let mut cache: Cache<u32> = Cache::default();
        assert_eq!(cache.admit(1, 40, Some(100), 0), Ok(vec![]));
        assert_eq!(cache.admit(2, 40, Some(100), 10), Ok(vec![]));
        // Range 1 was loaded first but used since: range 2 is the one to go.
        cache.touch(1, 7, 20);
        cache.touch(2, 8, 15);
        assert_eq!(cache.admit(3, 40, Some(100), 30), Ok(vec![2]));
        assert!(cache.contains(&1) && cache.contains(&3) && !cache.contains(&2));
        // Its sessions went with it.
        assert_eq!(cache.evict_oldest(&[(2, 8)]), Some((2, 8)));
        assert_eq!(cache.expire(u64::MAX), vec![(1, 7)]);
        // Too big for the cap at all: refused, nothing unloaded.
        assert_eq!(
            cache.admit(4, 101, Some(100), 40),
            Err(TooBig {
                size: 101,
                cap: 100
            })
        );
        assert!(cache.contains(&1) && cache.contains(&3));
        // Room for the biggest allowed: everything else goes, oldest first.
        assert_eq!(cache.admit(5, 100, Some(100), 50), Ok(vec![1, 3]));
    }

    #[test]
    fn ranges_past_the_count_limit_go_least_recently_used_first() {
        let mut cache: Cache<u32> = Cache::default();
        for r in 0..STAGES_LOADED_MAX as u32 {
            assert_eq!(cache.admit(r, 1, None, u64::from(r)), Ok(vec![]));
        }
        cache.touch(0, 1, 100);
        let evicted = cache.admit(99, 1, None, 200).expect("no cap");
        assert_eq!(
            evicted,
            vec![1],
            "range 0 was used last, range 1 the longest ago"
        );
    }

    #[test]
    fn idle_sessions_expire_after_the_ttl_and_the_oldest_cache_goes_first() {
        let mut cache: Cache<u32> = Cache::default();
        cache.admit(1, 1, None, 0).expect("no cap");
        cache.touch(1, 10, 1_000);
        cache.touch(1, 11, 2_000);
        cache.touch(1, 12, 3_000);
        assert!(
            cache.expire(1_000 + ttl_ms()).is_empty(),
            "not past the TTL yet"
        );
        assert_eq!(cache.expire(1_001 + ttl_ms()), vec![(1, 10)]);
        // Used again, a session's clock starts over.
        cache.touch(1, 11, 2_000 + ttl_ms());
        assert_eq!(cache.expire(3_001 + ttl_ms()), vec![(1, 12)]);
        // Over the cache bound: the least recently used of the caches goes.
        cache.touch(1, 13, 5_000 + ttl_ms());
        assert_eq!(
            cache.evict_oldest(&[(1, 13), (1, 11), (1, 14)]),
            Some((1, 14)),
            "a cache with no recorded use goes first"
        );
        assert_eq!(cache.evict_oldest(&[(1, 13), (1, 11)]), Some((1, 11)));
        cache.end(13);
        assert!(cache.expire(u64::MAX).is_empty());
    }
}
