//! What the simulator checks against: the true result of every unit (named, never hashed), and
//! which units were accepted, so a wrong acceptance or a unit accepted twice is counted.

use super::*;

/// Which units were accepted, a bit per unit of each job (10 million units: 1.2 MiB).
#[derive(Default)]
pub(crate) struct AcceptedUnits {
    pub(crate) bits: Vec<Vec<u64>>,
    pub(crate) count: u64,
}

impl AcceptedUnits {
    /// Mark `unit` of `job` accepted; false if it already was.
    pub(crate) fn insert(&mut self, job: u64, unit: u64) -> bool {
        let j = (job - 1) as usize;
        if self.bits.len() <= j {
            self.bits.resize(j + 1, Vec::new());
        }
        let words = &mut self.bits[j];
        let (w, b) = ((unit / 64) as usize, unit % 64);
        if words.len() <= w {
            words.resize(w + 1, 0);
        }
        let fresh = words[w] & (1 << b) == 0;
        words[w] |= 1 << b;
        self.count += u64::from(fresh);
        fresh
    }

    pub(crate) fn len(&self) -> u64 {
        self.count
    }
}

/// A digest that stands for a result or input: the scheduler compares digests and never opens
/// them, so the simulator names each one by what it is (a kind, the unit, who made it up) rather
/// than hashing anything (millions of blake3 calls were a tenth of a run).
pub(crate) fn named(kind: u8, job: u64, unit: u64, who: u64) -> Digest {
    let mut bytes = [0u8; 32];
    bytes[0] = kind;
    bytes[8..16].copy_from_slice(&job.to_le_bytes());
    bytes[16..24].copy_from_slice(&unit.to_le_bytes());
    bytes[24..].copy_from_slice(&who.to_le_bytes());
    Digest(bytes)
}

pub(crate) const TRUTH: u8 = 1;
pub(crate) const INPUT: u8 = 2;
pub(crate) const COLLUSION: u8 = 3;
pub(crate) const LIE: u8 = 4;

pub(crate) fn truth(job: u64, unit: u64) -> Digest {
    named(TRUTH, job, unit, 0)
}
