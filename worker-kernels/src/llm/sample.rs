//! Seeded sampling: the same logits, seed and position give the same token on every machine.
//!
//! Temperature scales the logits, a softmax (Hearth's own `exp`, summed in index order) gives the
//! probabilities, nucleus sampling keeps the most likely tokens whose mass reaches `top_p` (ties
//! ordered by id), and a uniform draw from SplitMix64 keyed by `(seed, position)` picks one. Greedy
//! when the temperature is 0.

use hearth_protocol::work::Sampling;

use super::greedy::argmax;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) for the token after `position`.
fn uniform(seed: u64, position: u64) -> f64 {
    (mix(seed ^ mix(position)) >> 11) as f64 / (1u64 << 53) as f64
}

/// The token to follow `position` given its `logits`: greedy without `sampling` or at temperature 0,
/// else drawn as the module says.
pub fn sample(logits: &[f32], sampling: Option<&Sampling>, position: u64) -> u32 {
    let Some(s) = sampling.filter(|s| s.temperature > 0.0) else {
        return argmax(logits).0;
    };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            (
                i as u32,
                hearth_cpu::math::exp_f32((l - max) / s.temperature),
            )
        })
        .filter(|&(_, p)| p > 0.0)
        .collect();
    if s.top_p < 1.0 {
        // A total order (probability, then id), so the unstable sort is deterministic.
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|&(_, p)| f64::from(p)).sum();
        let want = f64::from(s.top_p.max(0.0)) * total;
        let mut mass = 0.0;
        let mut keep = 0;
        for &(_, p) in &probs {
            mass += f64::from(p);
            keep += 1;
            if mass >= want {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().map(|&(_, p)| f64::from(p)).sum();
    let target = uniform(s.seed, position) * total;
    let mut mass = 0.0;
    for &(id, p) in &probs {
        mass += f64::from(p);
        if mass > target {
            return id;
        }
    }
    probs.last().map_or_else(|| argmax(logits).0, |&(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(temperature: f32, top_p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_at_zero_and_reproducible_otherwise() {
        let logits = [0.1, 2.0, 1.9, -3.0];
        assert_eq!(sample(&logits, None, 0), 1);
        assert_eq!(sample(&logits, Some(&s(0.0, 1.0, 7)), 0), 1);
        let draws: Vec<u32> = (0..200)
            .map(|p| sample(&logits, Some(&s(1.0, 1.0, 7)), p))
            .collect();
        let again: Vec<u32> = (0..200)
            .map(|p| sample(&logits, Some(&s(1.0, 1.0, 7)), p))
            .collect();
        assert_eq!(draws, again);
        // Both likely tokens come up; the unlikely ones rarely.
        assert!(draws.iter().filter(|&&t| t == 1).count() > 50);
        assert!(draws.iter().filter(|&&t| t == 2).count() > 50);
        let other: Vec<u32> = (0..200)
            .map(|p| sample(&logits, Some(&s(1.0, 1.0, 8)), p))
            .collect();
        assert_ne!(draws, other, "another seed draws otherwise");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let logits = [5.0, 4.0, -10.0, -10.0];
        for p in 0..100 {
            let t = sample(&logits, Some(&s(1.0, 0.5, 3)), p);
            assert_eq!(t, 0, "top_p 0.5 keeps only the most likely token here");
            assert!(sample(&logits, Some(&s(1.0, 0.99, 3)), p) < 2);
        }
    }
}
