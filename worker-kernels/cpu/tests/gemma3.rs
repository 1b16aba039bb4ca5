//! Gemma 3 270M Q4_K_M on Hearth's CPU kernels against an exact float64 forward of the same
//! dequantized weights (`scripts/reference/gemma3_exact_reference.py`, committed in
//! `tests/data/gemma3_exact_reference.json`): teacher-forced logits no further from exact than
//! llama.cpp's (its distance measured on the same tokens by
//! `scripts/reference/llama_cpp_reference.py gemma3`), the exact
//! argmax wherever its margin is clear, and the same bits on every kernel path, in a prefill or a
//! token at a time, on one thread or two.
//!
//! Needs the model: `hearth models fetch gemma-3-270m-q4_k_m` (`scripts/test` fetches it).

use std::path::PathBuf;

use hearth_cpu::{Config, Gguf, Input, KernelPath, Kernels, KvCache, LlamaRange};
use serde_json::Value;

/// Where the exact forward's best token leads by this much, Hearth's argmax is that token.
const CLEAR_MARGIN: f64 = 1.0;

fn model() -> PathBuf {
    let dir = std::env::var_os("HEARTH_MODELS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/hearth/models"),
        PathBuf::from,
    );
    let path = dir.join("gemma-3-270m-q4_k_m.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `hearth models fetch gemma-3-270m-q4_k_m`",
        path.display()
    );
    path
}

fn reference() -> Value {
    serde_json::from_str(include_str!(
        "../../../tests/data/gemma3_exact_reference.json"
    ))
    .expect("reference JSON")
}

/// How far llama.cpp's logits stray from exact on the same tokens at the same positions (measured
/// by `scripts/reference/llama_cpp_reference.py gemma3`): Hearth may stray no further.
fn llama_cpp_distance() -> (f64, f64) {
    let reference: Value = serde_json::from_str(include_str!(
        "../../../tests/data/llama_cpp_gemma3_reference.json"
    ))
    .expect("llama.cpp reference JSON");
    let d = &reference["exact_distance"];
    (
        d["mean"].as_f64().expect("mean"),
        d["worst"].as_f64().expect("worst"),
    )
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Every checked position's logits: a prefill of everything before the first checked position,
/// then one token at a time (short prompts: one prefill with every position's logits).
fn logits(range: &LlamaRange, k: &Kernels, ids: &[u32], checked: &[usize]) -> Vec<Vec<f32>> {
    let vocab = range.config().vocab;
    let mut cache = KvCache::default();
    let first = checked[0];
    if first == 0 {
        let all = range
            .forward(k, &mut cache, Input::Tokens(ids), true)
            .expect("forward");
        return checked
            .iter()
            .map(|&p| all[p * vocab..(p + 1) * vocab].to_vec())
            .collect();
    }
    range
        .forward(k, &mut cache, Input::Tokens(&ids[..first]), false)
        .expect("prefill");
    checked
        .iter()
        .map(|&p| {
            range
                .forward(k, &mut cache, Input::Tokens(&ids[p..=p]), false)
                .expect("decode")
        })
        .collect()
}

#[test]
fn gemma3_agrees_with_an_exact_forward_and_gives_the_same_bits_on_every_path() {
    let reference = reference();
    let g = Gguf::open(&model()).expect("the model parses");
    let config = Config::from_gguf(&g).expect("gemma3 config");
    assert_eq!(
        (
            config.layers,
            config.hidden,
            config.heads,
            config.kv_heads,
            config.head_dim
        ),
        (18, 640, 4, 1, 256),
        "FACTS.md"
    );
    let range = LlamaRange::load(&g, 0..config.layers).expect("loads");
    let best = KernelPath::available()
        .into_iter()
        .last()
        .expect("scalar at least");
    let k = Kernels::new(best, 2).expect("kernels");

    let started = std::time::Instant::now();
    let (mut sum, mut count, mut worst) = (0f64, 0usize, (0f64, String::new()));
    let mut runs = Vec::new();
    for prompt in reference["prompts"].as_array().expect("prompts") {
        let name = prompt["name"].as_str().expect("name");
        let ids: Vec<u32> = prompt["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let steps = prompt["steps"].as_array().expect("steps");
        let checked: Vec<usize> = steps
            .iter()
            .map(|s| s["position"].as_u64().expect("position") as usize)
            .collect();
        let rows = logits(&range, &k, &ids, &checked);
        for (step, row) in steps.iter().zip(&rows) {
            let at = format!("{name} position {}", step["position"]);
            for pair in step["top"].as_array().expect("top") {
                let (token, exact) = (
                    pair[0].as_u64().expect("token") as usize,
                    pair[1].as_f64().expect("logit"),
                );
                let error = (f64::from(row[token]) - exact).abs();
                sum += error;
                count += 1;
                if error > worst.0 {
                    worst = (error, format!("{at} token {token}"));
                }
            }
            let exact_best = step["argmax"].as_u64().expect("argmax") as usize;
            if step["margin"].as_f64().expect("margin") >= CLEAR_MARGIN {
                assert_eq!(argmax(row), exact_best, "{at}: a clear exact argmax");
            }
        }
        runs.push((ids, checked, rows));
    }
    eprintln!(
        "agreement computed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mean = sum / count as f64;
    let (theirs_mean, theirs_worst) = llama_cpp_distance();
    eprintln!(
        "gemma3 vs exact: mean |Δlogit| {mean:.3}, worst {:.3} at {} (llama.cpp: {theirs_mean:.3}, {theirs_worst:.3})",
        worst.0, worst.1
    );
    assert!(
        mean <= theirs_mean,
        "mean |Δlogit| {mean} > llama.cpp's {theirs_mean}"
    );
    assert!(
        worst.0 <= theirs_worst,
        "worst |Δlogit| {worst:?} > llama.cpp's {theirs_worst}"
    );

    // Every other path and thread count, and a prefill against a token at a time, give the bits
    // (the short prompts: the long one's sliding window is covered by the agreement above).
    let started = std::time::Instant::now();
    for path in KernelPath::available() {
        for threads in [1, 2] {
            let k = Kernels::new(path, threads).expect("kernels");
            for (ids, checked, rows) in runs.iter().filter(|(ids, ..)| ids.len() < 64) {
                let again = logits(&range, &k, ids, checked);
                let same = again
                    .iter()
                    .flatten()
                    .zip(rows.iter().flatten())
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{path}, {threads} threads");
            }
        }
    }
    eprintln!("paths checked in {:.1} s", started.elapsed().as_secs_f64());
    let (ids, _, rows) = &runs[0];
    let mut cache = KvCache::default();
    for (p, id) in ids.iter().enumerate() {
        let one = range
            .forward(&k, &mut cache, Input::Tokens(&[*id]), false)
            .expect("decode");
        assert!(
            one.iter()
                .zip(&rows[p])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "position {p} one token at a time"
        );
    }
}
