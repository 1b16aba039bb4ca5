//! `hearth local`: the default model (and Gemma 3) on this machine, through the CLI. Needs
//! `hearth models fetch --all`.

mod support;

use std::process::Output;

use serde_json::Value;
use support::{run_hearth_env, stdout_json as json};

fn local(args: &[&str], threads: Option<&str>) -> Output {
    let args: Vec<&str> = std::iter::once("local")
        .chain(args.iter().copied())
        .collect();
    match threads {
        Some(threads) => run_hearth_env(&args, &[("RAYON_NUM_THREADS", threads)]),
        None => run_hearth_env(&args, &[]),
    }
}

#[test]
fn greedy_generation_names_the_capital() {
    let out = json(&local(
        &[
            "generate",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "4",
            "--json",
        ],
        None,
    ));
    // llama.cpp's greedy continuation starts " Paris." (7042, 30); "The" is 504 in llama.cpp's tokenizer.
    assert_eq!(out["prompt_ids"][0], 504);
    assert_eq!(out["token_ids"][0], 7042);
    assert_eq!(out["token_ids"].as_array().expect("ids").len(), 4);
    assert!(
        out["text"].as_str().expect("text").starts_with(" Paris"),
        "{out}"
    );
}

/// Gemma 3 270M (SentencePiece vocabulary, gemma3 layers on Hearth's kernels) through
/// `hearth local generate --model`: the prompt split into the ids its words are in the vocabulary
/// (as `scripts/reference/gemma3_exact_reference.py` looked them up), and the first token the exact
/// float64 forward's argmax there (its margin is 1.1). Needs `hearth models fetch --all`.
#[test]
fn gemma3_generates_through_its_own_tokenizer() {
    let models = std::env::var("HEARTH_MODELS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/hearth/models",
            std::env::var("HOME").expect("HOME")
        )
    });
    let model = format!("{models}/gemma-3-270m-q4_k_m.gguf");
    let out = json(&local(
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            " The capital of France is Paris. The capital of",
            "--max-tokens",
            "4",
            "--json",
        ],
        None,
    ));
    let reference: Value =
        serde_json::from_str(include_str!("data/gemma3_exact_reference.json")).expect("reference");
    let prose = &reference["prompts"][0];
    assert_eq!(prose["name"], "prose");
    assert_eq!(out["prompt_ids"], prose["ids"], "{out}");
    let last = prose["steps"]
        .as_array()
        .expect("steps")
        .last()
        .expect("a step")
        .clone();
    assert!(last["margin"].as_f64().expect("margin") >= 1.0);
    assert_eq!(out["token_ids"][0], last["argmax"], "{out}");
    assert!(
        out["text"].as_str().expect("text").starts_with(" France"),
        "{out}"
    );
}

#[test]
fn logits_are_bit_identical_across_runs_and_thread_counts() {
    let args = [
        "score",
        "--prompt",
        "Replicas agree bit for bit when",
        "--ids",
        "260,3012,1345,30",
        "--json",
    ];
    let one = json(&local(&args, Some("1")));
    let two = json(&local(&args, Some("2")));
    let again = json(&local(&args, Some("2")));
    // serde_json prints f32 logits with every digit needed to round-trip, so equal text is equal bits.
    assert_eq!(one["positions"], two["positions"], "1 vs 2 threads");
    assert_eq!(two["positions"], again["positions"], "run to run");
    assert_eq!(one["positions"].as_array().expect("positions").len(), 4);
}

#[test]
fn hearth_kernel_path_forces_a_path_and_every_path_gives_the_same_logits_digest() {
    let args = [
        "local",
        "generate",
        "--prompt",
        "Every CPU gives the same bits:",
        "--max-tokens",
        "6",
        "--json",
    ];
    let best = json(&run_hearth_env(&args, &[]));
    let digest = best["logits_digest"].as_str().expect("digest");
    assert_eq!(digest.len(), 64, "a blake3 in hex: {best}");
    let mut paths = vec!["scalar"];
    if std::arch::is_x86_feature_detected!("avx2") {
        paths.push("avx2");
    }
    if std::arch::is_x86_feature_detected!("avx512bw") {
        paths.push("avx512");
    }
    for path in paths {
        let out = json(&run_hearth_env(&args, &[("HEARTH_KERNEL_PATH", path)]));
        assert_eq!(out["kernel_path"], path, "{out}");
        assert_eq!(out["logits_digest"], best["logits_digest"], "{path}");
        assert_eq!(out["token_ids"], best["token_ids"], "{path}");
    }
    // A path this CPU lacks, or no such path: one clear line, no output.
    let lacking = if cfg!(target_arch = "x86_64") {
        "neon"
    } else {
        "avx2"
    };
    for bad in [lacking, "sse9"] {
        let out = run_hearth_env(&args, &[("HEARTH_KERNEL_PATH", bad)]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("HEARTH_KERNEL_PATH"), "{bad}: {err}");
        assert!(out.stdout.is_empty(), "{bad}");
    }
}

#[test]
fn bench_local_reports_speeds_threads_and_kernel_path() {
    let out = json(&run_hearth_env(
        &["bench", "--threads", "1", "local", "--batch", "2", "--json"],
        &[],
    ));
    for field in ["decode_tok_s", "prompt_tok_s"] {
        let v = out[field].as_f64().unwrap_or(0.0);
        assert!(v > 0.0 && v.is_finite(), "{field}: {out}");
    }
    // Two sessions decoding at once, through the stage's batched pass.
    assert_eq!(out["batch"]["sessions"], 2, "{out}");
    let together = out["batch"]["decode_tokens_per_s"].as_f64().unwrap_or(0.0);
    assert!(together > 0.0 && together.is_finite(), "{out}");
    assert_eq!(out["threads"], 1, "{out}");
    assert!(
        ["scalar", "avx2", "avx512", "neon"].contains(&out["kernel_path"].as_str().unwrap_or("")),
        "{out}"
    );
}

#[test]
fn chat_prompts_end_at_the_end_of_turn() {
    let out = json(&local(
        &[
            "generate",
            "--chat",
            "--prompt",
            "Say hello.",
            "--max-tokens",
            "48",
            "--json",
        ],
        None,
    ));
    let ids = out["prompt_ids"].as_array().expect("ids");
    assert!(ids.len() > 10, "the template wraps the message: {out}");
    // The model answers and ends its turn; generation stops at the end-of-sequence token (2).
    let generated = out["token_ids"].as_array().expect("ids");
    assert_eq!(generated.last(), Some(&Value::from(2)), "{out}");
    assert!(
        out["text"].as_str().expect("text").ends_with("<|im_end|>"),
        "{out}"
    );
}

#[test]
fn missing_or_corrupt_models_get_one_line_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope.gguf");
    let out = local(
        &[
            "generate",
            "--model",
            missing.to_str().expect("utf-8"),
            "--prompt",
            "x",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nope.gguf") && err.contains("hearth models fetch"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let corrupt = tmp.path().join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF but not really").expect("write");
    let out = local(
        &[
            "generate",
            "--model",
            corrupt.to_str().expect("utf-8"),
            "--prompt",
            "x",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("corrupt.gguf"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

fn embed(input: &str, threads: Option<&str>) -> (Output, Vec<Value>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (tmp.path().join("in.jsonl"), tmp.path().join("out.jsonl"));
    std::fs::write(&src, input).expect("write");
    let out = local(
        &[
            "embed",
            "--input",
            src.to_str().expect("utf-8"),
            "--output",
            dst.to_str().expect("utf-8"),
        ],
        threads,
    );
    let lines = std::fs::read_to_string(&dst)
        .map(|text| {
            text.lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect()
        })
        .unwrap_or_default();
    (out, lines)
}

#[test]
fn embeddings_keep_order_are_unit_length_and_reproducible() {
    let input: String = (0..40)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"text\": \"sentence number {i} about {}\"}}\n",
                ["cats", "rust", "rain", "music"][i % 4]
            )
        })
        .collect();
    let (out, one) = embed(&input, Some("1"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(one.len(), 40, "one output line per input, across batches");
    for (i, line) in one.iter().enumerate() {
        assert_eq!(line["id"], i, "input order");
        let v: Vec<f64> = line["embedding"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        assert_eq!(v.len(), 384);
        let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length: {norm}");
    }
    let (_, two) = embed(&input, Some("2"));
    assert_eq!(one, two, "1 vs 2 threads");
    // Similar sentences are closer than unrelated ones: the vectors carry meaning, not noise.
    let dot = |a: &Value, b: &Value| -> f64 {
        a["embedding"]
            .as_array()
            .expect("v")
            .iter()
            .zip(b["embedding"].as_array().expect("v"))
            .map(|(x, y)| x.as_f64().expect("n") * y.as_f64().expect("n"))
            .sum()
    };
    assert!(
        dot(&one[0], &one[4]) > dot(&one[0], &one[1]),
        "cats~cats should beat cats~rust"
    );
}

#[test]
fn bad_embed_input_is_refused_with_its_line_and_nothing_is_written() {
    let (out, lines) = embed("{\"id\": 1, \"text\": \"fine\"}\n{\"id\": 2}\n", None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(":2:") && err.contains("\"text\""),
        "{err}"
    );
    assert!(lines.is_empty(), "no output for a refused input");
}

/// Largest difference per dimension allowed against sentence-transformers.
const EMBED_DIFF_MAX: f64 = 1e-5;

#[test]
fn embeddings_match_sentence_transformers() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/minilm_reference.json"
    ))
    .expect("reference");
    let reference: Value = serde_json::from_str(&text).expect("json");
    let texts = reference["texts"].as_array().expect("texts");
    let input: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}\n", serde_json::json!({ "id": i, "text": t })))
        .collect();
    let (out, ours) = embed(&input, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut worst = 0f64;
    for (line, theirs) in ours
        .iter()
        .zip(reference["embeddings"].as_array().expect("embeddings"))
    {
        for (a, b) in line["embedding"]
            .as_array()
            .expect("v")
            .iter()
            .zip(theirs.as_array().expect("v"))
        {
            worst = worst.max((a.as_f64().expect("n") - b.as_f64().expect("n")).abs());
        }
    }
    assert_eq!(ours.len(), texts.len());
    println!("embeddings: max |difference| from sentence-transformers {worst:e}");
    assert!(
        worst <= EMBED_DIFF_MAX,
        "max difference {worst:e} over {EMBED_DIFF_MAX:e}"
    );
}
