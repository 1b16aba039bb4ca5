//! The simulator's event queue: a calendar of one-millisecond slots for the next
//! [`HORIZON_MS`] (where nearly every event lands: replies, heartbeats, holds), a heap for the
//! rest. Events come out in time order and, at one time, in the order they were scheduled, as a
//! heap of (time, sequence) would give them, at O(1) a step instead of O(log n) on a queue of
//! hundreds of thousands.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Milliseconds ahead the calendar covers.
const HORIZON_MS: u64 = 1 << 15;

/// Events `E` by virtual time.
pub(crate) struct Queue<E> {
    /// Slot `t % HORIZON_MS` holds the events due at `t`, for `now <= t < now + HORIZON_MS`.
    slots: Vec<VecDeque<E>>,
    /// How many events the slots hold.
    in_slots: usize,
    /// Events due at or after `now + HORIZON_MS` when scheduled, by (time, sequence).
    far: BinaryHeap<Reverse<(u64, u64, E)>>,
    seq: u64,
    now: u64,
}

impl<E: Ord> Queue<E> {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..HORIZON_MS).map(|_| VecDeque::new()).collect(),
            in_slots: 0,
            far: BinaryHeap::new(),
            seq: 0,
            now: 0,
        }
    }

    /// Schedule `event` at `time` (never before the last time popped).
    pub(crate) fn push(&mut self, time: u64, event: E) {
        let time = time.max(self.now);
        if time - self.now < HORIZON_MS {
            self.slots[(time % HORIZON_MS) as usize].push_back(event);
            self.in_slots += 1;
        } else {
            self.seq += 1;
            self.far.push(Reverse((time, self.seq, event)));
        }
    }

    /// The next event and its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, E)> {
        loop {
            // Far events within reach go into their slots first, in (time, sequence) order: any
            // event pushed into those slots directly was pushed later (it could only be once its
            // time came within reach, which is now).
            while let Some(Reverse((time, _, _))) = self.far.peek() {
                if *time >= self.now + HORIZON_MS {
                    break;
                }
                let Some(Reverse((time, _, event))) = self.far.pop() else {
                    break;
                };
                self.slots[(time % HORIZON_MS) as usize].push_back(event);
                self.in_slots += 1;
            }
            if self.in_slots == 0 {
                // Nothing near: jump to the first far event.
                let Reverse((time, _, _)) = self.far.peek()?;
                self.now = *time;
                continue;
            }
            if let Some(event) = self.slots[(self.now % HORIZON_MS) as usize].pop_front() {
                self.in_slots -= 1;
                return Some((self.now, event));
            }
            self.now += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_as_a_heap_of_time_and_sequence_gives_them() {
        let mut queue = Queue::new();
        let mut heap = BinaryHeap::new();
        let mut seq = 0u64;
        let mut state = 12345u64;
        let mut rand = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut now = 0;
        for round in 0..20_000u64 {
            for _ in 0..(rand() % 3) {
                // Mostly near, sometimes far past the calendar, sometimes at the same time.
                let delay = match rand() % 10 {
                    0 => HORIZON_MS + rand() % (3 * HORIZON_MS),
                    1 => 0,
                    2 => HORIZON_MS - 1,
                    _ => rand() % 200,
                };
                seq += 1;
                queue.push(now + delay, round);
                heap.push(Reverse((now + delay, seq, round)));
            }
            let (a, b) = (queue.pop(), heap.pop().map(|Reverse((t, _, e))| (t, e)));
            assert_eq!(a, b);
            match a {
                Some((t, _)) => now = t,
                None => break,
            }
        }
        while let Some(Reverse((t, _, e))) = heap.pop() {
            assert_eq!(queue.pop(), Some((t, e)));
        }
        assert_eq!(queue.pop(), None);
    }
}
