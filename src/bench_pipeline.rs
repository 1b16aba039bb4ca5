//! `hearth bench pipeline`: what cutting the model across peers costs, against one process.
//!
//! One run, one machine: greedy decoding of the default model in this process at 1 thread, then a
//! local swarm (a coordinator and 3 nodes at `--max-threads 1`) generating the same tokens as
//! pipelines of 2 and 3 stages, with verification off and at its default (`window`). Each figure is
//! decode tokens/s (after the first token); the time a hop adds is the pipeline's time per token,
//! less the single process's, over the number of stages.

use std::path::Path;

use anyhow::bail;
use hearth_kernels::{GgufModel, GgufTokenizer, SMOLLM2, Stage, generate_greedy};
use serde_json::{Value, json};

use crate::children::Children;

/// The prompt every run continues (it does not reach end-of-sequence within 1,024 tokens).
const PROMPT: &str = "The capital of France is";
/// Nodes in the benchmark swarm.
const NODES: usize = 3;

pub(crate) async fn run(tokens: u32, json: bool, models: &Path) -> anyhow::Result<()> {
    let path = models.join(SMOLLM2.files[0].path);
    let model = GgufModel::open(&path)
        .map_err(|e| anyhow::anyhow!("{e} (`hearth models fetch` gets the default model)"))?;
    let tokenizer = GgufTokenizer::from_model(&model)?;
    let prompt = tokenizer.encode(PROMPT, false)?;
    let mut stage = Stage::load(
        &model,
        0..model.config.layers,
        &hearth_kernels::compute_device(),
    )?;
    generate_greedy(&mut stage, tokenizer.eos, &prompt, 4, 0)?; // warm up
    let run = generate_greedy(&mut stage, tokenizer.eos, &prompt, tokens as usize, 1)?;
    let single_tokens = run.token_ids;
    let single = (single_tokens.len() - 1) as f64 / (run.total - run.prefill).as_secs_f64();
    let threads = candle_core::utils::get_num_threads();
    drop(stage);
    if !json {
        println!("single process, {threads} thread(s): {single:.1} tokens/s");
    }

    let mut swarm = Children::in_temp_dir("hearth-bench-pipeline")?;
    let result = pipelines(&mut swarm, models, tokens, &single_tokens, json).await;
    swarm.finish(result.is_err(), false).await;
    let runs = result?;

    let single_ms = 1e3 / single;
    let rows: Vec<Value> = runs
        .iter()
        .map(|(stages, verify, tps, rtt)| {
            let per_token_ms = 1e3 / tps;
            json!({
                "stages": stages,
                "verify": verify,
                "decode_tokens_per_s": tps,
                "ratio": tps / single,
                "per_hop_ms": (per_token_ms - single_ms) / *stages as f64,
                "mean_round_trip_ms": rtt,
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            json!({
                "tokens": tokens,
                "single_threads": threads,
                "single_decode_tokens_per_s": single,
                "node_threads": 1,
                "runs": rows,
            })
        );
    } else {
        println!(
            "\n{tokens} tokens greedy; pipelines: {NODES} nodes × 1 thread + coordinator on 127.0.0.1"
        );
        println!(
            "  {:<32} {:>9}  {:>6}  {:>11}",
            "", "tokens/s", "ratio", "ms per hop"
        );
        println!(
            "  {:<32} {single:>9.1}  {:>6.2}",
            format!("single process ({threads} thread)"),
            1.0
        );
        for r in &rows {
            println!(
                "  {:<32} {:>9.1}  {:>6.2}  {:>11.2}",
                format!(
                    "{} stages, verify {}",
                    r["stages"],
                    r["verify"].as_str().unwrap_or("")
                ),
                r["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["ratio"].as_f64().unwrap_or(0.0),
                r["per_hop_ms"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

/// Start the swarm; run each pipeline: (stages, verify, decode tokens/s, mean round trip ms).
async fn pipelines(
    swarm: &mut Children,
    models: &Path,
    tokens: u32,
    expected: &[u32],
    quiet: bool,
) -> anyhow::Result<Vec<(u32, &'static str, f64, f64)>> {
    let (_api, client) = swarm.start_swarm(models, NODES).await?;
    let mut runs = Vec::new();
    for (stages, verify) in [(2, "off"), (3, "off"), (2, "window"), (3, "window")] {
        let request = |n: u32| json!({ "prompt": PROMPT, "max_tokens": n, "stages": stages, "verify": verify });
        // Load the stages' layers before timing.
        let _: Value = client.post("/v1/generate", &request(2)).await?;
        let summary: Value = client.post("/v1/generate", &request(tokens)).await?;
        let ids: Vec<u32> = serde_json::from_value(summary["token_ids"].clone())?;
        if ids != expected {
            bail!("the {stages}-stage pipeline generated other tokens than the single process");
        }
        let tps = summary["decode_tokens_per_s"].as_f64().unwrap_or(0.0);
        let hops = summary["hops"].as_array().cloned().unwrap_or_default();
        let rtt = hops
            .iter()
            .filter_map(|h| h["mean_ms"].as_f64())
            .sum::<f64>()
            / hops.len().max(1) as f64;
        if !quiet {
            println!("{stages} stages, verify {verify}: {tps:.1} tokens/s");
        }
        runs.push((stages, verify, tps, rtt));
    }
    Ok(runs)
}
