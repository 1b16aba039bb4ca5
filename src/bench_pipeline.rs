//! `hearth bench pipeline`: what cutting the model across peers costs, against one process.
//!
//! One run, one machine: greedy decoding of the default model in this process at 1 thread, then a
//! local swarm (a coordinator and 3 nodes at `--max-threads 1`) generating the same tokens as
//! pipelines of 2 and 3 stages, with verification off and at its default (`window`). Each figure is
//! decode tokens/s (after the first token), beside the single process run again before each of its
//! runs (the fastest of those: a shared machine's speed drifts over the minutes a benchmark takes,
//! and a baseline taken once at the start flattered or wronged every ratio after it); a token's
//! time is split into compute (that single process's time per token) and network (the rest), and
//! the coordinator's CPU time per token is read from `/proc`. Then [`CONCURRENT`] sessions at once
//! on 3 stages, their total tokens/s beside one session's (both over the whole request, prefill
//! included, taken in turns); and a second swarm whose every process runs `--fault
//! delay=DELAY_MS`, on 3 stages, beside the ideal `1 / (compute + 3 × DELAY_MS)` of a chain whose
//! stages hand each token on once.

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
    let mut single = Single {
        stage: Stage::load(
            &model,
            0..model.config.layers,
            &hearth_kernels::compute_device(),
        )?,
        ends: tokenizer.ends.clone(),
        prompt,
        tokens,
        runs: 0,
        fastest: 0.0,
    };
    single.warm_up()?;
    // The first run's tokens are what every pipeline must give.
    let (single_tokens, _) = single.run_tokens()?;
    for _ in 1..repeats {
        single.run()?;
    }
    let threads = candle_core::utils::get_num_threads();
    if !json {
        println!(
            "single process, {threads} thread(s): {:.1} tokens/s (measured again beside every pipeline run)",
            single.fastest
        );
    }

    let mut swarm = Children::in_temp_dir("hearth-bench-pipeline")?;
    let bench = Bench {
        model: &id,
        tokens,
        expected: &single_tokens,
        repeats,
        quiet: json,
    };
    let result = pipelines(&mut swarm, models, &bench, &mut single, &[]).await;
    let result = match result {
        Ok(runs) => concurrent(&swarm, &bench).await.map(|c| (runs, c)),
        Err(e) => Err(e),
    };
    swarm.finish(result.is_err(), false).await;
    let (runs, (one_session, together)) = result?;

    // The same 3 stages with every message held DELAY_MS, on a fresh swarm.
    let mut far = Children::in_temp_dir("hearth-bench-pipeline-far")?;
    let delay = format!("delay={DELAY_MS}");
    let result = pipelines(&mut far, models, &bench, &mut single, &["--fault", &delay]).await;
    far.finish(result.is_err(), false).await;
    let far_run = result?
        .into_iter()
        .find(|r| r.stages == 3 && r.verify == "off")
        .ok_or_else(|| anyhow::anyhow!("no 3-stage run at a distance"))?;

    // Each pipeline beside the single process measured in the same stretch of time (the fastest
    // of the runs taken between its own): the machine's speed drifts over a benchmark.
    let far_single_ms = 1e3 / far_run.single_tokens_per_s;
    let ideal_far = 1e3 / (far_single_ms + 3.0 * f64::from(DELAY_MS));
    let far_run = far_run.tokens_per_s;
    let single = single.fastest;
    let rows: Vec<Value> = runs
        .iter()
        .map(|r| {
            let per_token_ms = 1e3 / r.tokens_per_s;
            let single_ms = 1e3 / r.single_tokens_per_s;
            json!({
                "stages": r.stages,
                "verify": r.verify,
                "decode_tokens_per_s": r.tokens_per_s,
                "single_decode_tokens_per_s": r.single_tokens_per_s,
                "ratio": r.tokens_per_s / r.single_tokens_per_s,
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
        "single_decode_tokens_per_s": 1e3 / far_single_ms,
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
            "  {:<32} {:>9}  {:>9}  {:>6}  {:>11}  {:>10}  {:>10}",
            "", "tokens/s", "single", "ratio", "ms per hop", "network ms", "coord. CPU"
        );
        println!(
            "  {:<32} {single:>9.1}  {single:>9.1}  {:>6.2}",
            format!("single process ({threads} thread)"),
            1.0
        );
        for r in &rows {
            println!(
                "  {:<32} {:>9.1}  {:>9.1}  {:>6.2}  {:>11.2}  {:>10.2}  {:>7.2} ms",
                format!(
                    "{} stages, verify {}",
                    r["stages"],
                    r["verify"].as_str().unwrap_or("")
                ),
                r["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["single_decode_tokens_per_s"].as_f64().unwrap_or(0.0),
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

/// Greedy decoding in this process on one stage of every layer: the baseline, measured again
/// beside each pipeline run.
struct Single {
    stage: Stage,
    ends: Vec<u32>,
    prompt: Vec<u32>,
    tokens: u32,
    /// Runs so far (each its own session).
    runs: u64,
    /// The fastest decode tokens/s of every run so far.
    fastest: f64,
}

impl Single {
    fn warm_up(&mut self) -> anyhow::Result<()> {
        generate_greedy(&mut self.stage, &self.ends, &self.prompt, 4, 0)?;
        Ok(())
    }

    /// One run's tokens and decode tokens/s.
    fn run_tokens(&mut self) -> anyhow::Result<(Vec<u32>, f64)> {
        self.runs += 1;
        let run = generate_greedy(
            &mut self.stage,
            &self.ends,
            &self.prompt,
            self.tokens as usize,
            self.runs,
        )?;
        let speed = (run.token_ids.len() - 1) as f64 / (run.total - run.prefill).as_secs_f64();
        self.fastest = self.fastest.max(speed);
        Ok((run.token_ids, speed))
    }

    /// One run's decode tokens/s.
    fn run(&mut self) -> anyhow::Result<f64> {
        Ok(self.run_tokens()?.1)
    }
}

/// One pipeline's figures.
struct Run {
    stages: u32,
    verify: &'static str,
    tokens_per_s: f64,
    /// The single process's fastest run among those taken between this pipeline's runs.
    single_tokens_per_s: f64,
    round_trip_ms: f64,
    /// Over every run of this pipeline, not only the fastest.
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
/// keep its fastest run, and the fastest of the single process's runs taken before each of them.
async fn pipelines(
    swarm: &mut Children,
    models: &Path,
    bench: &Bench<'_>,
    single: &mut Single,
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
        // The fastest run's tokens/s and mean round trip.
        let mut best: Option<(f64, f64)> = None;
        let mut beside = 0f64;
        // The coordinator's CPU time over every run and the tokens they made: `/proc` counts it
        // in 10 ms ticks, a few ticks a run.
        let (mut cpu_ms, mut cpu_tokens) = (Some(0f64), 0usize);
        for _ in 0..bench.repeats {
            beside = beside.max(single.run()?);
            let cpu_before = swarm.cpu_ms("coordinator");
            let summary: Value = client.post("/v1/generate", &request(bench.tokens)).await?;
            let cpu_after = swarm.cpu_ms("coordinator");
            let ids: Vec<u32> = serde_json::from_value(summary["token_ids"].clone())?;
            cpu_ms = cpu_ms
                .zip(cpu_before.zip(cpu_after))
                .map(|(sum, (b, a))| sum + (a - b));
            cpu_tokens += ids.len();
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
            if best.is_none_or(|(fastest, _)| tokens_per_s > fastest) {
                best = Some((tokens_per_s, round_trip_ms));
            }
        }
        let (tokens_per_s, round_trip_ms) = best.expect("at least one run");
        let run = Run {
            stages,
            verify,
            tokens_per_s,
            single_tokens_per_s: beside,
            round_trip_ms,
            coordinator_cpu_ms_per_token: cpu_ms.map(|ms| ms / cpu_tokens.max(1) as f64),
        };
        if !bench.quiet {
            println!(
                "{stages} stages, verify {verify}: {:.1} tokens/s (single process beside it: {beside:.1})",
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
    // One session and then all of them, in turns: the machine's speed drifts over a benchmark.
    let (mut one_session, mut together) = (0f64, 0f64);
    for _ in 0..bench.repeats {
        let started = std::time::Instant::now();
        let one: Value = client.post("/v1/generate", &request).await?;
        check(&one)?;
        one_session = one_session.max(f64::from(bench.tokens) / started.elapsed().as_secs_f64());
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
