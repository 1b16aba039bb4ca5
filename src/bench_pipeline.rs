//! `hearth bench pipeline`: what cutting the model across peers costs, against one process.
//!
//! One run, one machine: greedy decoding of the default model in this process at 1 thread, then a
//! local swarm (a coordinator and 3 nodes at `--max-threads 1`) generating the same tokens as
//! pipelines of 2 and 3 stages, with verification off and at its default (`window`). Each figure is
//! decode tokens/s (after the first token); a token's time is split into compute (the single
//! process's time per token) and network (the rest), and the coordinator's CPU time per token is
//! read from `/proc`. Then [`CONCURRENT`] sessions at once on 3 stages, their total tokens/s beside
//! one session's (both over the whole request, prefill included); and a second swarm whose every
//! process runs `--fault delay=DELAY_MS`, on 3 stages, beside the ideal `1 / (compute + 3 ×
//! DELAY_MS)` of a chain whose stages hand each token on once.

use std::path::Path;

use anyhow::bail;
use hearth_kernels::{GgufModel, GgufTokenizer, Stage, generate_greedy};
use serde_json::{Value, json};

use crate::children::Children;

/// The prompt every run continues (it does not reach end-of-sequence within 1,024 tokens).
const PROMPT: &str = "The capital of France is";
/// Nodes in the benchmark swarm.
const NODES: usize = 4;
/// Sessions run at once for the concurrency figure.
const CONCURRENT: usize = 8;
/// Emulated distance between every pair of processes for the distance figure (ms).
const DELAY_MS: u32 = 5;

pub(crate) async fn run(
    tokens: u32,
    model: Option<&Path>,
    repeats: u32,
    json: bool,
    models: &Path,
) -> anyhow::Result<()> {
    let path = crate::models::locate(models, model)?;
    let model = GgufModel::open(&path)?;
    let tokenizer = GgufTokenizer::from_model(&model)?;
    let prompt = tokenizer.encode(PROMPT, false)?;
    // The swarm is asked for the model by id, which needs no name bound anywhere.
    let id = model.id.to_string();
    let mut stage = Stage::load(
        &model,
        0..model.config.layers,
        &hearth_kernels::compute_device(),
    )?;
    generate_greedy(&mut stage, &tokenizer.ends, &prompt, 4, 0)?; // warm up
    let mut single = 0f64;
    let mut single_tokens = Vec::new();
    for i in 0..repeats {
        let run = generate_greedy(
            &mut stage,
            &tokenizer.ends,
            &prompt,
            tokens as usize,
            1 + u64::from(i),
        )?;
        single =
            single.max((run.token_ids.len() - 1) as f64 / (run.total - run.prefill).as_secs_f64());
        single_tokens = run.token_ids;
    }
    let threads = candle_core::utils::get_num_threads();
    drop(stage);
    if !json {
        println!("single process, {threads} thread(s): {single:.1} tokens/s");
    }

    let mut swarm = Children::in_temp_dir("hearth-bench-pipeline")?;
    let bench = Bench {
        model: &id,
        tokens,
        expected: &single_tokens,
        repeats,
        quiet: json,
    };
    let result = pipelines(&mut swarm, models, &bench, &[]).await;
    let result = match result {
        Ok(runs) => concurrent(&swarm, &bench).await.map(|c| (runs, c)),
        Err(e) => Err(e),
    };
    swarm.finish(result.is_err(), false).await;
    let (runs, (one_session, together)) = result?;

    // The same 3 stages with every message held DELAY_MS, on a fresh swarm.
    let mut far = Children::in_temp_dir("hearth-bench-pipeline-far")?;
    let delay = format!("delay={DELAY_MS}");
    let result = pipelines(&mut far, models, &bench, &["--fault", &delay]).await;
    far.finish(result.is_err(), false).await;
    let far_runs = result?;
    let far_run = far_runs
        .iter()
        .find(|r| r.stages == 3 && r.verify == "off")
        .map(|r| r.tokens_per_s)
        .unwrap_or(0.0);

    let single_ms = 1e3 / single;
    let ideal_far = 1e3 / (single_ms + 3.0 * f64::from(DELAY_MS));
    let rows: Vec<Value> = runs
        .iter()
        .map(|r| {
            let per_token_ms = 1e3 / r.tokens_per_s;
            json!({
                "stages": r.stages,
                "verify": r.verify,
                "decode_tokens_per_s": r.tokens_per_s,
                "ratio": r.tokens_per_s / single,
                "per_hop_ms": (per_token_ms - single_ms) / f64::from(r.stages),
                "compute_ms_per_token": single_ms,
                "network_ms_per_token": per_token_ms - single_ms,
                "mean_round_trip_ms": r.round_trip_ms,
                "coordinator_cpu_ms_per_token": r.coordinator_cpu_ms_per_token,
            })
        })
        .collect();
    let concurrency = json!({
        "sessions": CONCURRENT,
        "stages": 3,
        "one_session_tokens_per_s": one_session,
        "total_tokens_per_s": together,
        "ratio": together / one_session,
    });
    let distance = json!({
        "delay_ms": DELAY_MS,
        "stages": 3,
        "decode_tokens_per_s": far_run,
        "ideal_tokens_per_s": ideal_far,
        "ratio_to_ideal": far_run / ideal_far,
    });
    if json {
        println!(
            "{}",
            json!({
                "tokens": tokens,
                "runs_per_figure": repeats,
                "single_threads": threads,
                "single_decode_tokens_per_s": single,
                "node_threads": 1,
                "runs": rows,
                "concurrent": concurrency,
                "distance": distance,
            })
        );
    } else {
        println!(
            "\n{tokens} tokens greedy, each figure the fastest of {repeats} runs; pipelines: {NODES} nodes × 1 thread + coordinator on 127.0.0.1"
        );
        println!(
            "  {:<32} {:>9}  {:>6}  {:>11}  {:>10}  {:>10}",
            "", "tokens/s", "ratio", "ms per hop", "network ms", "coord. CPU"
        );
        println!(
            "  {:<32} {single:>9.1}  {:>6.2}",
            format!("single process ({threads} thread)"),
            1.0
        );
        for r in &rows {
            println!(
                "  {:<32} {:>9.1}  {:>6.2}  {:>11.2}  {:>10.2}  {:>7.2} ms",
                format!(
                    "{} stages, verify {}",
                    r["stages"],
                    r["verify"].as_str().unwrap_or("")
                ),
                r["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["ratio"].as_f64().unwrap_or(0.0),
                r["per_hop_ms"].as_f64().unwrap_or(0.0),
                r["network_ms_per_token"].as_f64().unwrap_or(0.0),
                r["coordinator_cpu_ms_per_token"].as_f64().unwrap_or(0.0),
            );
        }
        println!(
            "\n{CONCURRENT} sessions at once on 3 stages: {together:.1} tokens/s in all, {:.2}× one session's {one_session:.1} (prefill included)",
            together / one_session
        );
        println!(
            "3 stages, every process at --fault delay={DELAY_MS}: {far_run:.1} tokens/s, {:.2}× the ideal {ideal_far:.1} (1 / (compute + 3 × {DELAY_MS} ms))",
            far_run / ideal_far
        );
    }
    Ok(())
}

/// One pipeline's figures.
struct Run {
    stages: u32,
    verify: &'static str,
    tokens_per_s: f64,
    round_trip_ms: f64,
    coordinator_cpu_ms_per_token: Option<f64>,
}

/// What every run of the benchmark asks and expects.
struct Bench<'a> {
    /// The model's id.
    model: &'a str,
    tokens: u32,
    /// The single process's tokens, which every run must give.
    expected: &'a [u32],
    /// Runs of each figure (the fastest counts).
    repeats: u32,
    quiet: bool,
}

/// Start the swarm (every process with `extra` flags); run each pipeline `bench.repeats` times and
/// keep its fastest run.
async fn pipelines(
    swarm: &mut Children,
    models: &Path,
    bench: &Bench<'_>,
    extra: &[&str],
) -> anyhow::Result<Vec<Run>> {
    swarm.start_swarm_with(models, NODES, extra).await?;
    let client = swarm_client(swarm)?;
    let mut runs = Vec::new();
    let plans: &[(u32, &'static str)] = if extra.is_empty() {
        &[(2, "off"), (3, "off"), (2, "window"), (3, "window")]
    } else {
        &[(3, "off")]
    };
    for &(stages, verify) in plans {
        let request = |n: u32| json!({ "model": bench.model, "prompt": PROMPT, "max_tokens": n, "stages": stages, "verify": verify });
        // Load the stages' layers before timing.
        let _: Value = client.post("/v1/generate", &request(2)).await?;
        let mut best: Option<Run> = None;
        for _ in 0..bench.repeats {
            let cpu_before = swarm.cpu_ms("coordinator");
            let summary: Value = client.post("/v1/generate", &request(bench.tokens)).await?;
            let cpu_after = swarm.cpu_ms("coordinator");
            let ids: Vec<u32> = serde_json::from_value(summary["token_ids"].clone())?;
            if ids != bench.expected {
                bail!("the {stages}-stage pipeline generated other tokens than the single process");
            }
            let tokens_per_s = summary["decode_tokens_per_s"].as_f64().unwrap_or(0.0);
            let hops = summary["hops"].as_array().cloned().unwrap_or_default();
            let round_trip_ms = hops
                .iter()
                .filter_map(|h| h["mean_ms"].as_f64())
                .sum::<f64>()
                / hops.len().max(1) as f64;
            if best.as_ref().is_none_or(|b| tokens_per_s > b.tokens_per_s) {
                best = Some(Run {
                    stages,
                    verify,
                    tokens_per_s,
                    round_trip_ms,
                    coordinator_cpu_ms_per_token: cpu_before
                        .zip(cpu_after)
                        .map(|(b, a)| (a - b) / ids.len().max(1) as f64),
                });
            }
        }
        let run = best.expect("at least one run");
        if !bench.quiet {
            println!(
                "{stages} stages, verify {verify}: {:.1} tokens/s",
                run.tokens_per_s
            );
        }
        runs.push(run);
    }
    Ok(runs)
}

/// A client for the swarm's coordinator.
fn swarm_client(swarm: &Children) -> anyhow::Result<crate::client::Client> {
    let api = std::fs::read_to_string(
        swarm
            .dir
            .join("coordinator")
            .join(hearth_coordinator::API_URL_FILE),
    )?;
    crate::client::Client::new(
        &crate::cli::ClientArgs {
            api: vec![api.trim().to_string()],
            api_key: None,
            ca_cert: None,
        },
        &crate::config::FileConfig::default(),
    )
}

/// One session on 3 stages, then [`CONCURRENT`] at once: (one's tokens/s, all's tokens/s), each
/// over whole requests (prefill included), each the fastest of `bench.repeats` runs. Every session
/// must give the single process's tokens.
async fn concurrent(swarm: &Children, bench: &Bench<'_>) -> anyhow::Result<(f64, f64)> {
    let client = swarm_client(swarm)?;
    let request = json!({ "model": bench.model, "prompt": PROMPT, "max_tokens": bench.tokens, "stages": 3, "verify": "off" });
    let check = |summary: &Value| -> anyhow::Result<()> {
        let ids: Vec<u32> = serde_json::from_value(summary["token_ids"].clone())?;
        if ids != bench.expected {
            bail!("a concurrent session generated other tokens than the single process");
        }
        Ok(())
    };
    let (mut one_session, mut together) = (0f64, 0f64);
    for _ in 0..bench.repeats {
        let started = std::time::Instant::now();
        let one: Value = client.post("/v1/generate", &request).await?;
        check(&one)?;
        one_session = one_session.max(f64::from(bench.tokens) / started.elapsed().as_secs_f64());
    }
    for _ in 0..bench.repeats {
        let started = std::time::Instant::now();
        let all = futures::future::join_all(
            (0..CONCURRENT).map(|_| client.post::<Value>("/v1/generate", &request)),
        )
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        for summary in all {
            check(&summary?)?;
        }
        together = together.max(CONCURRENT as f64 * f64::from(bench.tokens) / elapsed);
    }
    if !bench.quiet {
        println!("{CONCURRENT} sessions at once: {together:.1} tokens/s in all");
    }
    Ok((one_session, together))
}
