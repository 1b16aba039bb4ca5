//! The verifier's rules: which results agree, and what a unit's results add up to.
//!
//! Pure functions over digests and classes, called by the [`crate::Scheduler`] for every result.
//!
//! - **Within a numeric class** results must agree bit for bit: compared by output digest.
//! - **Across classes** the shell compares the outputs themselves with [`within_tolerance`] (it
//!   holds the bytes; the sans-IO core holds only digests) and tells the core which earlier results
//!   a new one agrees with. The tolerance: embeddings agree when every component differs by at most
//!   [`EMBED_MAX_ABS_DIFF`] and the cosine similarity of each pair is at least [`EMBED_COSINE_MIN`];
//!   completions agree when their token ids are identical (greedy decoding from the same prompt).
//! - **Quorum**: a unit run on `r` replicas is accepted when `⌊r/2⌋ + 1` results agree, at least 2
//!   (a trusted peer running alone is the one exception: a quorum of 1). A result outside the
//!   accepted group loses the quorum: provably wrong (quarantine at once) when it is of the same
//!   numeric class as two or more agreeing results, a strike otherwise.

use std::collections::BTreeSet;

use hearth_protocol::work::UnitOutput;
use hearth_protocol::{Digest, PeerId};
use serde::{Deserialize, Serialize};

use crate::Fault;

/// Largest per-component difference between embeddings of different numeric classes that still agree.
pub const EMBED_MAX_ABS_DIFF: f32 = 1e-3;
/// Least cosine similarity between embeddings of different numeric classes that still agree.
pub const EMBED_COSINE_MIN: f32 = 0.9999;

/// Whether outputs from different numeric classes agree within the documented tolerance.
pub fn within_tolerance(a: &UnitOutput, b: &UnitOutput) -> bool {
    match (a, b) {
        (UnitOutput::Embeddings(a), UnitOutput::Embeddings(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    x.len() == y.len()
                        && x.iter()
                            .zip(y)
                            .all(|(p, q)| (p - q).abs() <= EMBED_MAX_ABS_DIFF)
                        && cosine(x, y) >= EMBED_COSINE_MIN
                })
        }
        (UnitOutput::Completions(a), UnitOutput::Completions(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.token_ids == y.token_ids)
        }
        _ => false,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

/// One valid result of a unit, as the core knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Who computed it.
    pub peer: PeerId,
    /// Its output digest.
    pub digest: Digest,
    /// Its numeric class (shared: millions of results name a handful of classes).
    pub class: std::sync::Arc<str>,
    /// Earlier results of other classes it agrees with, within tolerance.
    pub agrees_across: BTreeSet<PeerId>,
}

/// Whether two results agree.
pub fn agree(a: &Outcome, b: &Outcome) -> bool {
    if a.class == b.class {
        a.digest == b.digest
    } else {
        a.agrees_across.contains(&b.peer) || b.agrees_across.contains(&a.peer)
    }
}

/// Results that must agree to accept a unit run on `replicas` replicas.
pub fn quorum(replicas: u32) -> u32 {
    if replicas <= 1 {
        1
    } else {
        (replicas / 2 + 1).max(2)
    }
}

/// The largest group of agreeing results, as indices into `outcomes` (first-come order, so the
/// earliest result of the group is its representative).
pub fn best_group(outcomes: &[Outcome]) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    for (i, a) in outcomes.iter().enumerate() {
        let group: Vec<usize> = (0..outcomes.len())
            .filter(|&j| j == i || agree(a, &outcomes[j]))
            .collect();
        if group.len() > best.len() {
            best = group;
        }
    }
    best
}

/// The fault of a result that lost to `group` (the accepted results).
pub fn loser_fault(loser: &Outcome, group: &[&Outcome]) -> Fault {
    let same_class = group.iter().filter(|o| o.class == loser.class).count();
    if same_class >= 2 {
        Fault::LostQuorum
    } else {
        Fault::Mismatch
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::SecretKey;
    use hearth_protocol::work::Completion;

    use super::*;

    fn peer(n: u8) -> PeerId {
        SecretKey::from_bytes(&[n; 32]).public().peer_id()
    }

    fn outcome(n: u8, digest: u8, class: &str) -> Outcome {
        Outcome {
            peer: peer(n),
            digest: Digest([digest; 32]),
            class: class.into(),
            agrees_across: BTreeSet::new(),
        }
    }

    #[test]
    fn quorum_is_a_strict_majority_of_at_least_two() {
        assert_eq!(
            [1, 2, 3, 4, 5].map(quorum),
            [1, 2, 2, 3, 3],
            "replicas 1..=5"
        );
    }

    #[test]
    fn same_class_compares_by_digest_other_classes_by_the_shells_word() {
        let a = outcome(1, 7, "avx2");
        let b = outcome(2, 7, "avx2");
        let c = outcome(3, 7, "neon");
        assert!(agree(&a, &b));
        assert!(
            !agree(&a, &c),
            "the same digest across classes proves nothing"
        );
        let mut d = outcome(4, 9, "neon");
        d.agrees_across.insert(a.peer);
        assert!(agree(&a, &d) && agree(&d, &a));
    }

    #[test]
    fn the_largest_agreeing_group_wins_and_its_losers_are_judged_by_class() {
        let outcomes = [
            outcome(1, 1, "x"),
            outcome(2, 2, "x"),
            outcome(3, 1, "x"),
            outcome(4, 3, "y"),
        ];
        let group = best_group(&outcomes);
        assert_eq!(group, vec![0, 2]);
        let members: Vec<&Outcome> = group.iter().map(|&i| &outcomes[i]).collect();
        assert_eq!(loser_fault(&outcomes[1], &members), Fault::LostQuorum);
        assert_eq!(loser_fault(&outcomes[3], &members), Fault::Mismatch);
    }

    #[test]
    fn tolerance_accepts_rounding_and_refuses_real_differences() {
        let v: Vec<f32> = (0..384).map(|i| ((i as f32) * 0.37).sin() * 0.05).collect();
        let close: Vec<f32> = v.iter().map(|x| x + 1e-6).collect();
        let mut wrong = v.clone();
        wrong[5] += 0.01;
        let e = |x: &Vec<f32>| UnitOutput::Embeddings(vec![x.clone()]);
        assert!(within_tolerance(&e(&v), &e(&close)));
        assert!(!within_tolerance(&e(&v), &e(&wrong)));
        let c = |ids: Vec<u32>| {
            UnitOutput::Completions(vec![Completion {
                token_ids: ids,
                text: String::new(),
            }])
        };
        assert!(within_tolerance(&c(vec![1, 2]), &c(vec![1, 2])));
        assert!(!within_tolerance(&c(vec![1, 2]), &c(vec![1, 3])));
        assert!(!within_tolerance(&e(&v), &c(vec![1])));
    }
}
