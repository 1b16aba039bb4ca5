//! Networks by interned id: how many peers offer work from each and how many units each runs, so
//! the fair share and the spreading of replicas compare small integers, not strings, on every
//! match. An id is freed (and may name another network later) once its network has neither peers
//! nor running units, so the table is bounded by the peers remembered.

use std::collections::BTreeMap;

/// A network's id while it is known.
pub(super) type NetId = u32;

#[derive(Debug, Default)]
struct Slot {
    name: String,
    peers: u32,
    running: u32,
}

/// The networks peers offer from.
#[derive(Debug, Default)]
pub(super) struct Networks {
    ids: BTreeMap<String, NetId>,
    slots: Vec<Slot>,
    free: Vec<NetId>,
    /// Networks with at least one peer.
    live: usize,
}

impl Networks {
    /// A peer now offers from `name`.
    pub(super) fn join(&mut self, name: &str) -> NetId {
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let slot = Slot {
                    name: name.to_string(),
                    peers: 0,
                    running: 0,
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.slots[id as usize] = slot;
                        id
                    }
                    None => {
                        self.slots.push(slot);
                        (self.slots.len() - 1) as NetId
                    }
                };
                self.ids.insert(name.to_string(), id);
                id
            }
        };
        let slot = &mut self.slots[id as usize];
        if slot.peers == 0 {
            self.live += 1;
        }
        slot.peers += 1;
        id
    }

    /// A peer no longer offers from `id`.
    pub(super) fn leave(&mut self, id: NetId) {
        let slot = &mut self.slots[id as usize];
        if slot.peers > 0 {
            slot.peers -= 1;
            if slot.peers == 0 {
                self.live -= 1;
            }
        }
        self.release(id);
    }

    /// A unit started running on a peer of `id`.
    pub(super) fn start(&mut self, id: NetId) {
        self.slots[id as usize].running += 1;
    }

    /// A unit stopped running on a peer of `id` (nothing if none was counted).
    pub(super) fn stop(&mut self, id: NetId) {
        let slot = &mut self.slots[id as usize];
        slot.running = slot.running.saturating_sub(1);
        self.release(id);
    }

    fn release(&mut self, id: NetId) {
        let slot = &mut self.slots[id as usize];
        if slot.peers == 0 && slot.running == 0 && !slot.name.is_empty() {
            self.ids.remove(&std::mem::take(&mut slot.name));
            self.free.push(id);
        }
    }

    /// Peers offering from `id`.
    pub(super) fn peers(&self, id: NetId) -> u32 {
        self.slots[id as usize].peers
    }

    /// Units running on peers of `id`.
    pub(super) fn running(&self, id: NetId) -> u32 {
        self.slots[id as usize].running
    }

    /// Networks with at least one peer.
    pub(super) fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_counted_and_freed_only_when_unused() {
        let mut n = Networks::default();
        let a = n.join("10.0.0");
        assert_eq!(n.join("10.0.0"), a);
        let b = n.join("10.0.1");
        assert_ne!(a, b);
        assert_eq!((n.peers(a), n.live()), (2, 2));
        n.start(b);
        n.leave(b);
        assert_eq!((n.peers(b), n.running(b), n.live()), (0, 1, 1));
        // Still running a unit: the id still names it.
        assert_eq!(n.join("10.0.1"), b);
        n.leave(b);
        n.stop(b);
        n.stop(b);
        assert_eq!(n.running(b), 0, "never below zero");
        // Freed, then reused for another network with fresh counts.
        let c = n.join("10.0.2");
        assert_eq!(c, b);
        assert_eq!((n.peers(c), n.running(c)), (1, 0));
        assert_eq!(n.live(), 2);
    }
}
