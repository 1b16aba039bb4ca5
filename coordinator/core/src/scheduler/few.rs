//! A map of the few peers on one unit (running it, or having tried it): a sorted vector, which for
//! a handful of entries is smaller and faster than a tree (whose first leaf alone is ~500 bytes,
//! allocated for each of millions of units). Empty, it allocates nothing.

use hearth_protocol::PeerId;

/// Peers with a value each, in peer order.
#[derive(Clone, Debug)]
pub(super) struct Few<V> {
    /// Exactly as long as it holds (one allocation, none when empty): a unit sees two or three
    /// peers, each added once, so growing by reallocation costs less than a vector's spare room
    /// over millions of units.
    items: Option<Box<[(PeerId, V)]>>,
}

impl<V> Default for Few<V> {
    fn default() -> Self {
        Self { items: None }
    }
}

impl<V> Few<V> {
    fn slice(&self) -> &[(PeerId, V)] {
        self.items.as_deref().unwrap_or(&[])
    }

    fn find(&self, peer: &PeerId) -> Result<usize, usize> {
        self.slice().binary_search_by(|(p, _)| p.cmp(peer))
    }

    /// `peer`'s value.
    pub(super) fn get(&self, peer: &PeerId) -> Option<&V> {
        self.find(peer).ok().map(|i| &self.slice()[i].1)
    }

    /// Whether `peer` is in.
    pub(super) fn contains(&self, peer: &PeerId) -> bool {
        self.find(peer).is_ok()
    }

    /// Set `peer`'s value; the old one, if any.
    pub(super) fn insert(&mut self, peer: PeerId, value: V) -> Option<V> {
        match self.find(&peer) {
            Ok(i) => {
                let items = self.items.as_mut().expect("found in it");
                Some(std::mem::replace(&mut items[i].1, value))
            }
            Err(i) => {
                let mut items = self.items.take().map(Vec::from).unwrap_or_default();
                items.reserve_exact(1);
                items.insert(i, (peer, value));
                self.items = Some(items.into_boxed_slice());
                None
            }
        }
    }

    /// Take `peer` out; its value, if it was in.
    pub(super) fn remove(&mut self, peer: &PeerId) -> Option<V> {
        let i = self.find(peer).ok()?;
        let mut items = Vec::from(self.items.take()?);
        let (_, value) = items.remove(i);
        if !items.is_empty() {
            self.items = Some(items.into_boxed_slice());
        }
        Some(value)
    }

    /// The peers, in order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &PeerId> {
        self.slice().iter().map(|(p, _)| p)
    }

    /// Whether none are in.
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_none()
    }

    /// How many are in.
    pub(super) fn len(&self) -> usize {
        self.slice().len()
    }

    /// Take every peer out, in order.
    pub(super) fn take_keys(&mut self) -> Vec<PeerId> {
        self.items
            .take()
            .map(|items| Vec::from(items).into_iter().map(|(p, _)| p).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::SecretKey;

    use super::*;

    #[test]
    fn behaves_as_an_ordered_map() {
        let ids: Vec<PeerId> = (1..=5u8)
            .map(|n| SecretKey::from_bytes(&[n; 32]).public().peer_id())
            .collect();
        let mut few = Few::default();
        let mut tree = std::collections::BTreeMap::new();
        for (n, id) in ids.iter().enumerate().rev() {
            assert_eq!(few.insert(*id, n), tree.insert(*id, n));
        }
        assert_eq!(few.insert(ids[2], 9), tree.insert(ids[2], 9));
        assert_eq!(few.remove(&ids[0]), tree.remove(&ids[0]));
        assert_eq!(few.remove(&ids[0]), None);
        assert!(few.keys().eq(tree.keys()));
        assert_eq!(few.get(&ids[2]), Some(&9));
        assert!(few.contains(&ids[4]) && !few.contains(&ids[0]));
        assert_eq!(few.len(), 4);
        assert_eq!(few.take_keys(), tree.keys().copied().collect::<Vec<_>>());
        assert!(few.is_empty());
    }
}
