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
        BenchCommand::Local {
            model,
            layers,
            batch,
            json,
        } => local(model, layers, batch, json, &models),
        BenchCommand::Swarm {
            texts,
            unit_size,
            json,
        } => crate::bench_swarm::run(texts as usize, unit_size, json, &models).await,
        BenchCommand::Pipeline {
            tokens,
            model,
            runs,
            json,
        } => crate::bench_pipeline::run(tokens, model.as_deref(), runs, json, &models).await,
        BenchCommand::Fetch { model, runs, json } => {
            crate::bench_fetch::run(model.as_deref(), runs, json, &models).await
        }
    }
}

/// This process's resident and peak resident memory, bytes (Linux's `/proc/self/status`).
fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Bytes of the weights layers `range` of the model at `path` need: their blocks, the token
/// embedding on a first stage, the final norm and head on a last one.
fn layer_weight_bytes(
    path: &std::path::Path,
    range: &std::ops::Range<usize>,
    layers: usize,
) -> u64 {
    let Ok(g) = hearth_cpu::Gguf::open(path) else {
        return 0;
    };
    let mut names: Vec<&String> = g
        .tensors
        .keys()
        .filter(|n| {
            n.strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| range.contains(&i))
        })
        .collect();
    let embedding = "token_embd.weight".to_string();
    let (norm, output) = (
        "output_norm.weight".to_string(),
        "output.weight".to_string(),
    );
    if range.start == 0 {
        names.push(&embedding);
    }
    if range.end == layers {
        names.push(&norm);
        if g.tensors.contains_key(&output) {
            names.push(&output);
        } else if range.start != 0 {
            names.push(&embedding);
        }
    }
    names
        .into_iter()
        .filter_map(|n| g.tensor_len(n))
        .map(|n| n as u64)
        .sum()
}

fn local(
    model: Option<std::path::PathBuf>,
    layers: Option<std::ops::Range<usize>>,
    batch: Option<u32>,
    json: bool,
    models: &std::path::Path,
) -> anyhow::Result<()> {
    let path = crate::models::locate(models, model.as_deref())?;
    let model = GgufModel::open(&path)?;
    let tokenizer = GgufTokenizer::from_model(&model)?;
    let text = "Volunteer computing pools spare machines into one system that anyone can join. "
        .repeat(16);
    let mut prompt = tokenizer.encode(&text, false)?;
    prompt.truncate(PROMPT_TOKENS);
    // What a node holds is the stage alone: the tokenizer and the header go before it loads.
    drop(tokenizer);
    let all = model.config.layers;
    let range = layers.unwrap_or(0..all);
    if range.end > all {
        anyhow::bail!(
            "layers {}..{}: the model has {all} layers (0..{all})",
            range.start,
            range.end
        );
    }
    let mut stage = Stage::load(&model, range.clone(), &hearth_kernels::compute_device())?;
    let (id, hidden) = (model.id, model.config.hidden);
    drop(model);
    let loaded = memory();
    let input = |tokens: &[u32]| -> anyhow::Result<StageInput> {
        Ok(if range.start == 0 {
            StageInput::Tokens(tokens.to_vec())
        } else {
            StageInput::zeros(tokens.len(), hidden)?
        })
    };

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..RUNS {
        let session = run as u64;
        let start = Instant::now();
        stage.forward(session, input(&prompt)?, 0, false)?;
        prefill.push(PROMPT_TOKENS as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for step in 0..DECODE_TOKENS {
            // The token fed does not change the cost; a fixed one keeps runs identical.
            stage.forward(
                session,
                input(&[prompt[step % prompt.len()]])?,
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
    // N sessions decoding together: each step is one batch of N one-row items, as a stage runs
    // the steps of several sessions queued together.
    let batch_tps = match batch {
        None => None,
        Some(n) => {
            let sessions: Vec<u64> = (0..u64::from(n)).map(|s| 1_000 + s).collect();
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                for &session in &sessions {
                    stage.forward(session, input(&prompt)?, 0, false)?;
                }
                let start = Instant::now();
                for step in 0..DECODE_TOKENS {
                    let items = sessions
                        .iter()
                        .map(|&s| {
                            let token = [prompt[step % prompt.len()]];
                            Ok((s, input(&token)?, PROMPT_TOKENS + step, false))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    for out in stage.forward_batch(items) {
                        out?;
                    }
                }
                runs.push((n as usize * DECODE_TOKENS) as f64 / start.elapsed().as_secs_f64());
                for &session in &sessions {
                    stage.end_session(session);
                }
            }
            Some((n, median(&mut runs)))
        }
    };
    let threads = stage.threads();
    let kernel_path = stage.kernel_path();
    let after = memory();
    let weights = layer_weight_bytes(&path, &range, all);
    let file_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    if json {
        println!(
            "{}",
            json!({
                "model": id,
                "threads": threads,
                "kernel_path": kernel_path,
                "prompt_tokens": PROMPT_TOKENS,
                "prompt_tok_s": prompt_tps,
                "decode_tokens": DECODE_TOKENS,
                "decode_tok_s": decode_tps,
                "prompt_tokens_per_s": prompt_tps,
                "decode_tokens_per_s": decode_tps,
                "batch": batch_tps.map(|(n, tps)| json!({
                    "sessions": n,
                    "decode_tokens_per_s": tps,
                    "ratio_to_one": tps / decode_tps,
                })),
                "layers": [range.start, range.end],
                "file_bytes": file_bytes,
                "layers_weight_bytes": weights,
                "rss_loaded_bytes": loaded.map(|m| m.0),
                "rss_bytes": after.map(|m| m.0),
                "peak_rss_bytes": after.map(|m| m.1),
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
        if let Some((n, tps)) = batch_tps {
            println!(
                "  batch   {tps:>8.1} tokens/s  ({n} sessions decoding at once, in all; {:.2}× one session)",
                tps / decode_tps
            );
        }
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        if let Some((rss, peak)) = after {
            println!(
                "  memory  {:>8.1} MiB resident, {:.1} MiB at peak; layers {}..{} of {all} need {:.1} MiB of the file's {:.1} MiB",
                mib(rss),
                mib(peak),
                range.start,
                range.end,
                mib(weights),
                mib(file_bytes)
            );
        }
    }
    Ok(())
}
