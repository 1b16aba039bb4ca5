//! `hearth bench local`: how fast this machine runs the default LLM alone. (`hearth bench swarm` is
//! in `bench_swarm.rs`.)
//!
//! Prompt speed is a 128-token prefill; decode speed is 64 one-token steps after it. Each is the
//! median of three runs, so one scheduling hiccup on a shared machine does not make the figure.

use std::time::Instant;

use hearth_kernels::{GgufModel, GgufTokenizer, Stage, StageInput};
use serde_json::json;

use crate::cli::{BenchArgs, BenchCommand};
use crate::config::FileConfig;

/// Prompt length of the prefill measurement, as in llama.cpp's `llama-bench -p 128`.
const PROMPT_TOKENS: usize = 128;
/// Decode steps measured.
const DECODE_TOKENS: usize = 64;
/// Runs per figure; the median is reported.
const RUNS: usize = 3;

pub(crate) async fn run(args: BenchArgs, file: &FileConfig) -> anyhow::Result<()> {
    let models = args.models.resolve(file)?;
    match args.command {
        BenchCommand::Local { model, json } => local(model, json, &models),
        BenchCommand::Swarm {
            texts,
            unit_size,
            json,
        } => crate::bench_swarm::run(texts as usize, unit_size, json, &models).await,
        BenchCommand::Pipeline { tokens, json } => {
            crate::bench_pipeline::run(tokens, json, &models).await
        }
    }
}

fn local(
    model: Option<std::path::PathBuf>,
    json: bool,
    models: &std::path::Path,
) -> anyhow::Result<()> {
    let path = crate::models::locate(models, model.as_deref())?;
    let model = GgufModel::open(&path)
        .map_err(|e| anyhow::anyhow!("{e} (`hearth models fetch` gets the default model)"))?;
    let tokenizer = GgufTokenizer::from_model(&model)?;
    let text = "Volunteer computing pools spare machines into one system that anyone can join. "
        .repeat(16);
    let mut prompt = tokenizer.encode(&text, false)?;
    prompt.truncate(PROMPT_TOKENS);
    let mut stage = Stage::load(
        &model,
        0..model.config.layers,
        &hearth_kernels::compute_device(),
    )?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..RUNS {
        let session = run as u64;
        let start = Instant::now();
        stage.forward(session, StageInput::Tokens(prompt.clone()), 0, false)?;
        prefill.push(PROMPT_TOKENS as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for step in 0..DECODE_TOKENS {
            // The token fed does not change the cost; a fixed one keeps runs identical.
            stage.forward(
                session,
                StageInput::Tokens(vec![prompt[step % prompt.len()]]),
                PROMPT_TOKENS + step,
                false,
            )?;
        }
        decode.push(DECODE_TOKENS as f64 / start.elapsed().as_secs_f64());
        stage.end_session(session);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (prompt_tps, decode_tps) = (median(&mut prefill), median(&mut decode));
    let threads = stage.threads();
    let kernel_path = stage.kernel_path();
    if json {
        println!(
            "{}",
            json!({
                "model": model.id,
                "threads": threads,
                "kernel_path": kernel_path,
                "prompt_tokens": PROMPT_TOKENS,
                "prompt_tok_s": prompt_tps,
                "decode_tokens": DECODE_TOKENS,
                "decode_tok_s": decode_tps,
                "prompt_tokens_per_s": prompt_tps,
                "decode_tokens_per_s": decode_tps,
            })
        );
    } else {
        println!(
            "{} on {threads} thread(s), kernel path {kernel_path}:",
            path.display()
        );
        println!(
            "  prompt  {prompt_tps:>8.1} tokens/s  ({PROMPT_TOKENS}-token prefill, median of {RUNS})"
        );
        println!("  decode  {decode_tps:>8.1} tokens/s  ({DECODE_TOKENS} steps, median of {RUNS})");
    }
    Ok(())
}
