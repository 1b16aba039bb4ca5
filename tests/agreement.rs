//! Agreement with llama.cpp on the same GGUF, against the references committed in tests/data
//! (made by scripts/reference/llama_cpp_reference.py): SmolLM2 (`llama_cpp_reference.json`),
//! Gemma 3 270M (`llama_cpp_gemma3_reference.json`), and the Llama 3, Qwen 2 and Qwen 3 test models
//! (`llama_cpp_test_*_reference.json`; the files by scripts/reference/make_test_models.py).
//!
//! Exact equality everywhere is not the bar: llama.cpp's own batched and one-token-at-a-time runs
//! disagree at near ties. The bars, per model ([`Model`]): (1) teacher-forced, llama.cpp's token is
//! Hearth's argmax or within a gap of Hearth's largest logit at every position (and Hearth's argmax
//! wherever llama.cpp's own margin is clear); (2) free-running, Hearth's greedy ids equal
//! llama.cpp's at least up to the first step where llama.cpp's own top-2 margin is a near tie;
//! (3) the tokenizer gives llama.cpp's ids for varied texts.

mod support;

use serde_json::Value;
use support::{run_hearth_env, stdout_json};

/// A model, its reference and its bars.
struct Model {
    /// The file in the models folder.
    file: &'static str,
    /// The reference in tests/data.
    reference: &'static str,
    /// Largest gap allowed between Hearth's top logit and its logit for llama.cpp's token.
    logit_gap_max: f64,
    /// Where llama.cpp's top-2 margin is at least this, its token must be Hearth's argmax.
    clear_margin: f64,
    /// llama.cpp margins under this are near ties, where the two may pick different tokens.
    near_tie: f64,
}

/// SmolLM2: Q4_1, the kernels' first model; tight bars.
const SMOLLM2: Model = Model {
    file: "smollm2-135m-instruct-q4_1.gguf",
    reference: "llama_cpp_reference.json",
    logit_gap_max: 0.3,
    clear_margin: 0.3,
    near_tie: 0.3,
};

/// Gemma 3 270M Q4_K_M: the bars issue 18 sets (a 262,144-token vocabulary's logits spread wider).
const GEMMA3: Model = Model {
    file: "gemma-3-270m-q4_k_m.gguf",
    reference: "llama_cpp_gemma3_reference.json",
    logit_gap_max: 1.0,
    clear_margin: 1.0,
    near_tie: 0.5,
};

/// The test models, with Gemma's bars.
const LLAMA3: Model = Model {
    file: "hearth-test-llama3-q4_k_m.gguf",
    reference: "llama_cpp_test_llama3_reference.json",
    ..GEMMA3
};
const QWEN2: Model = Model {
    file: "hearth-test-qwen2-q4_k_m.gguf",
    reference: "llama_cpp_test_qwen2_reference.json",
    ..GEMMA3
};
const QWEN3: Model = Model {
    file: "hearth-test-qwen3-q4_k_m.gguf",
    reference: "llama_cpp_test_qwen3_reference.json",
    ..GEMMA3
};

/// Test models whose matrices are floats (F16, BF16): no activation quantization on either side, so
/// the two stay within a few hundredths (llama.cpp keeps its KV cache in f16).
const QWEN2_F16: Model = Model {
    file: "hearth-test-qwen2-f16.gguf",
    reference: "llama_cpp_test_qwen2_f16_reference.json",
    logit_gap_max: 0.1,
    clear_margin: 0.1,
    near_tie: 0.1,
};
const LLAMA3_BF16: Model = Model {
    file: "hearth-test-llama3-bf16.gguf",
    reference: "llama_cpp_test_llama3_bf16_reference.json",
    ..QWEN2_F16
};

fn models_dir() -> String {
    std::env::var("HEARTH_MODELS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/hearth/models",
            std::env::var("HOME").expect("HOME")
        )
    })
}

fn reference(model: &Model) -> Value {
    let path = format!(
        "{}/tests/data/{}",
        env!("CARGO_MANIFEST_DIR"),
        model.reference
    );
    let text = std::fs::read_to_string(&path).expect("reference");
    serde_json::from_str(&text).expect("json")
}

/// `hearth local ARGS --model MODEL`.
fn hearth_json(model: &Model, args: &[&str]) -> Value {
    let path = format!("{}/{}", models_dir(), model.file);
    let args: Vec<&str> = std::iter::once("local")
        .chain(args.iter().copied())
        .chain(["--model", &path])
        .collect();
    stdout_json(&run_hearth_env(&args, &[]))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

#[test]
fn teacher_forced_logits_agree_with_llama_cpp() {
    teacher_forced(&SMOLLM2);
}

#[test]
fn gemma3_teacher_forced_logits_agree_with_llama_cpp() {
    teacher_forced(&GEMMA3);
}

#[test]
fn test_models_teacher_forced_logits_agree_with_llama_cpp() {
    for model in [&LLAMA3, &QWEN2, &QWEN3, &QWEN2_F16, &LLAMA3_BF16] {
        teacher_forced(model);
    }
}

#[test]
fn test_models_free_running_generation_agrees_with_llama_cpp_until_a_near_tie() {
    for model in [&LLAMA3, &QWEN2, &QWEN3, &QWEN2_F16, &LLAMA3_BF16] {
        free_running(model);
    }
}

#[test]
fn free_running_generation_agrees_with_llama_cpp_until_a_near_tie() {
    free_running(&SMOLLM2);
}

#[test]
fn gemma3_free_running_generation_agrees_with_llama_cpp_until_a_near_tie() {
    free_running(&GEMMA3);
}

#[test]
fn tokenizers_give_llama_cpps_ids() {
    for model in [
        &SMOLLM2,
        &GEMMA3,
        &LLAMA3,
        &QWEN2,
        &QWEN3,
        &QWEN2_F16,
        &LLAMA3_BF16,
    ] {
        let path = format!("{}/{}", models_dir(), model.file);
        let gguf = hearth_kernels::GgufModel::open(std::path::Path::new(&path)).expect("opens");
        let tokenizer = hearth_kernels::GgufTokenizer::from_model(&gguf).expect("tokenizer");
        let reference = reference(model);
        // The same ends of generation (llama.cpp's `llama_vocab_is_eog` over the vocabulary).
        let ends: Vec<u64> = tokenizer.ends.iter().copied().map(u64::from).collect();
        assert_eq!(ends, ids(&reference["ends"]), "{}: ends", model.file);
        for case in reference["tokenize"].as_array().expect("tokenize") {
            let text = case["text"].as_str().expect("text");
            let special = case["special"].as_bool().expect("special");
            let mut ours = tokenizer.encode(text, special).expect("encodes");
            // The reference was taken without a BOS.
            if let (Some(bos), Some(&first)) = (tokenizer.bos, ours.first())
                && first == bos
            {
                ours.remove(0);
            }
            let ours: Vec<u64> = ours.into_iter().map(u64::from).collect();
            assert_eq!(
                ours,
                ids(&case["ids"]),
                "{}: {text:?} (special {special})",
                model.file
            );
        }
    }
}

fn teacher_forced(model: &Model) {
    let reference = reference(model);
    let mut worst: (f64, String) = (0.0, String::new());
    for prompt in reference["prompts"].as_array().expect("prompts") {
        let text = prompt["prompt"].as_str().expect("prompt");
        let theirs: Vec<u64> = prompt["greedy"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| s["id"].as_u64().expect("id"))
            .collect();
        let list = theirs
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let ours = hearth_json(
            model,
            &["score", "--prompt", text, "--ids", &list, "--json"],
        );
        assert_eq!(
            ids(&ours["prompt_ids"]),
            ids(&prompt["prompt_ids"]),
            "prompt tokens of {text:?}"
        );
        let steps = prompt["greedy"].as_array().expect("steps");
        for (step, position) in ours["positions"]
            .as_array()
            .expect("positions")
            .iter()
            .enumerate()
        {
            let gap = position["max_logit"].as_f64().expect("max")
                - position["logit"].as_f64().expect("logit");
            if steps[step]["margin"].as_f64().expect("margin") >= model.clear_margin {
                assert_eq!(
                    position["argmax"], position["id"],
                    "{text:?} step {step}: llama.cpp's clear choice is not Hearth's argmax"
                );
            }
            assert!(
                position["argmax"] == position["id"] || gap <= model.logit_gap_max,
                "{text:?} step {step}: llama.cpp's token {} is {gap:.3} below Hearth's top ({})",
                position["id"],
                position["argmax"]
            );
            if gap > worst.0 {
                worst = (gap, format!("{text:?} step {step}"));
            }
        }
    }
    println!(
        "{}: teacher forcing: worst gap {:.4} ({})",
        model.file, worst.0, worst.1
    );
}

fn free_running(model: &Model) {
    let reference = reference(model);
    for prompt in reference["prompts"].as_array().expect("prompts") {
        let text = prompt["prompt"].as_str().expect("prompt");
        let steps = prompt["greedy"].as_array().expect("steps");
        let theirs: Vec<u64> = steps
            .iter()
            .map(|s| s["id"].as_u64().expect("id"))
            .collect();
        let must_match = steps
            .iter()
            .position(|s| s["margin"].as_f64().expect("margin") < model.near_tie)
            .unwrap_or(steps.len());
        let ours = hearth_json(
            model,
            &[
                "generate",
                "--prompt",
                text,
                "--max-tokens",
                &steps.len().to_string(),
                "--json",
            ],
        );
        let ours = ids(&ours["token_ids"]);
        let agree = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        println!(
            "{}: {text:?}: {agree} of {} greedy tokens equal to llama.cpp's (first near tie at step {must_match})",
            model.file,
            theirs.len()
        );
        assert_eq!(
            ours[..must_match.min(ours.len())],
            theirs[..must_match],
            "{text:?}"
        );
    }
}
