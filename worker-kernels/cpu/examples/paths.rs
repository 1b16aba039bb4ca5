//! Prints what the kernels compute for a short fixed run on the path `HEARTH_KERNEL_PATH` selects
//! (the best one by default), so paths and machines can be compared line for line; `scripts/test`
//! runs it on every x86 path and, built for aarch64, under qemu for NEON.
//!
//! ```text
//! cargo run --release -p hearth-cpu --example paths -- MODEL.gguf [THREADS]
//! ```
//! Output: the greedy token ids of 6 steps after a 7-token prompt, the FNV-1a 64 digest of every
//! step's logits, and whether the prompt's logits computed as one prefill equal those of one token
//! at a time, bit for bit. Only the `path` line may differ between paths.

use std::path::PathBuf;

use hearth_cpu::{Gguf, Input, KernelPath, Kernels, KvCache, LlamaRange};

/// Token ids of "The capital of France is Paris" in SmolLM2's vocabulary; any valid ids would do (a
/// smaller vocabulary takes them modulo its size).
const PROMPT: [u32; 7] = [504, 3575, 282, 4649, 314, 7042, 30];
const STEPS: usize = 6;

fn fnv(digest: &mut u64, values: &[f32]) {
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            *digest = (*digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().ok_or("usage: paths MODEL.gguf [THREADS]")?);
    let threads = args
        .next()
        .map_or(Ok(1), |t| t.parse().map_err(|e| format!("{e}")))?;
    let path = KernelPath::from_env()?;
    let kernels = Kernels::new(path, threads)?;
    let g = Gguf::open(&model)?;
    let range = LlamaRange::load(&g, 0..hearth_cpu::Config::from_gguf(&g)?.layers)?;
    let vocab = range.config().vocab;
    let prompt: Vec<u32> = PROMPT.iter().map(|&t| t % vocab as u32).collect();
    let prompt = prompt.as_slice();

    // The prompt as one prefill with every position's logits, then greedy steps.
    let mut cache = KvCache::default();
    let prefill = range.forward(&kernels, &mut cache, Input::Tokens(prompt), true)?;
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut digest, &prefill);
    let mut tokens = vec![argmax(&prefill[(prompt.len() - 1) * vocab..])];
    while tokens.len() < STEPS {
        let last = *tokens.last().expect("one token");
        let logits = range.forward(&kernels, &mut cache, Input::Tokens(&[last]), false)?;
        fnv(&mut digest, &logits);
        tokens.push(argmax(&logits));
    }

    // The prompt again, one token at a time.
    let mut cache = KvCache::default();
    let mut alone = Vec::new();
    for &t in prompt {
        alone.extend(range.forward(&kernels, &mut cache, Input::Tokens(&[t]), false)?);
    }
    let invariant = alone
        .iter()
        .zip(&prefill)
        .all(|(a, b)| a.to_bits() == b.to_bits());

    println!("path {path}");
    println!("tokens {tokens:?}");
    println!("logits_fnv64 {digest:016x}");
    println!("prefill_equals_one_at_a_time {invariant}");
    Ok(())
}
