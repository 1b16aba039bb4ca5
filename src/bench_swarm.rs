//! `hearth bench swarm`: what the swarm's checking costs, measured against one process.
//!
//! One run, one machine: first `hearth local embed`'s path in this process (every core), then a
//! local swarm (a coordinator and 2 nodes at `--max-threads 1`) on the same texts: adaptive
//! replication on the fresh swarm (its second half, once peers have earned trust), then replicas 1
//! and replicas 2. Each swarm figure is texts per second from submission to the job's end, as a
//! ratio to the single process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use hearth_kernels::{Embedder, MINILM};
use serde_json::{Value, json};

use crate::children::Children;
use crate::client::Client;
use crate::jobs::{embed_request, post_job};

/// Nodes in the benchmark swarm, each at one thread.
const NODES: usize = 2;
/// Texts per batch of the batched reference figure.
const BATCH: usize = 32;
/// How often progress is sampled while a job runs.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Longest a measured job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// Varied sentences: 4 to 30 words.
fn texts(n: usize) -> Vec<(Value, String)> {
    let words = [
        "hearth",
        "volunteer",
        "machines",
        "pool",
        "their",
        "spare",
        "cycles",
        "into",
        "one",
        "swarm",
        "that",
        "checks",
        "every",
        "result",
        "twice",
        "before",
        "trusting",
        "it",
    ];
    (0..n)
        .map(|i| {
            let len = 4 + (i * 7) % 27;
            let sentence: Vec<&str> = (0..len)
                .map(|k| words[(i * 5 + k * 3) % words.len()])
                .collect();
            (Value::from(i), sentence.join(" "))
        })
        .collect()
}

pub(crate) async fn run(
    count: usize,
    unit_size: u32,
    json: bool,
    models: &Path,
) -> anyhow::Result<()> {
    let inputs = texts(count);

    // The single process: the same per-text computation `hearth local embed` runs.
    let dir = models.join(Path::new(MINILM.files[0].path).parent().expect("a folder"));
    let embedder = Embedder::load(&dir, &hearth_kernels::compute_device())
        .map_err(|e| anyhow::anyhow!("{e} (`hearth models fetch` gets the embedder)"))?;
    let all: Vec<&str> = inputs.iter().map(|(_, t)| t.as_str()).collect();
    embedder.embed_each(&all[..16])?; // warm up
    let threads = candle_core::utils::get_num_threads();
    let start = Instant::now();
    embedder.embed_each(&all)?;
    let single = count as f64 / start.elapsed().as_secs_f64();
    // For context only: batching pads texts to a common length, which changes their bits, so
    // neither `hearth local embed` nor the swarm does it.
    let start = Instant::now();
    for chunk in all.chunks(BATCH) {
        embedder.embed(chunk)?;
    }
    let batched = count as f64 / start.elapsed().as_secs_f64();
    drop(embedder);
    if !json {
        println!("single process, {threads} threads: {single:.1} texts/s");
    }

    let mut swarm = Children::in_temp_dir("hearth-bench-swarm")?;
    let result = measure_swarm(&mut swarm, models, &inputs, unit_size, json).await;
    swarm.finish(result.is_err(), false).await;
    let [adaptive, r1, r2] = result?;

    let ratio = |x: f64| x / single;
    if json {
        println!(
            "{}",
            json!({
                "texts": count,
                "unit_size": unit_size,
                "single_threads": threads,
                "single_texts_per_s": single,
                "single_batched_texts_per_s": batched,
                "nodes": NODES,
                "node_threads": 1,
                "replicas_1": { "texts_per_s": r1, "ratio": ratio(r1) },
                "replicas_2": { "texts_per_s": r2, "ratio": ratio(r2) },
                "adaptive_second_half": { "texts_per_s": adaptive, "ratio": ratio(adaptive) },
            })
        );
    } else {
        println!(
            "\n{count} texts, {unit_size} per unit; swarm: {NODES} nodes × 1 thread + coordinator"
        );
        println!("  {:<34} {:>9}  {:>6}", "", "texts/s", "ratio");
        println!(
            "  {:<34} {single:>9.1}  {:>6.2}",
            format!("single process ({threads} threads)"),
            1.0
        );
        println!(
            "  {:<34} {r1:>9.1}  {:>6.2}",
            "swarm, replicas 1",
            ratio(r1)
        );
        println!(
            "  {:<34} {r2:>9.1}  {:>6.2}",
            "swarm, replicas 2",
            ratio(r2)
        );
        println!(
            "  {:<34} {adaptive:>9.1}  {:>6.2}",
            "swarm, adaptive (second half)",
            ratio(adaptive)
        );
        println!(
            "  {:<34} {batched:>9.1}  {:>6.2}   (context: padding changes bits)",
            format!("single process, batches of {BATCH}"),
            ratio(batched)
        );
    }
    Ok(())
}

/// Start the swarm and run the three measured jobs: [adaptive second half, replicas 1, replicas 2].
async fn measure_swarm(
    swarm: &mut Children,
    models: &Path,
    inputs: &[(Value, String)],
    unit_size: u32,
    quiet: bool,
) -> anyhow::Result<[f64; 3]> {
    let (_api, client) = swarm.start_swarm(models, NODES).await?;
    // Each node loads the embedder on its first unit: do that before anything is timed. Four units
    // per node leave both far from trusted (trust takes 10 valid results in a row).
    run_job(&client, &inputs[..16], 4, Some(2)).await?;

    let adaptive = run_job(&client, inputs, unit_size, None).await?;
    if !quiet {
        println!(
            "swarm, adaptive: {:.1} texts/s over the second half",
            adaptive.1
        );
    }
    let r1 = run_job(&client, inputs, unit_size, Some(1)).await?;
    if !quiet {
        println!("swarm, replicas 1: {:.1} texts/s", r1.0);
    }
    let r2 = run_job(&client, inputs, unit_size, Some(2)).await?;
    if !quiet {
        println!("swarm, replicas 2: {:.1} texts/s", r2.0);
    }
    Ok([adaptive.1, r1.0, r2.0])
}

/// Run one job to its end: (texts/s over the whole job, texts/s over its second half).
async fn run_job(
    client: &Client,
    inputs: &[(Value, String)],
    unit_size: u32,
    replicas: Option<u32>,
) -> anyhow::Result<(f64, f64)> {
    let mut request = embed_request(inputs);
    request["unit_size"] = unit_size.into();
    if let Some(r) = replicas {
        request["replicas"] = r.into();
    }
    let start = Instant::now();
    let id = post_job(client, &request).await?;
    let mut half: Option<(Instant, u64)> = None;
    loop {
        let status: Value = client.get(&format!("/v1/jobs/{id}")).await?;
        let total = status["units_total"].as_u64().unwrap_or(1);
        let done = status["units_done"].as_u64().unwrap_or(0);
        if half.is_none() && done * 2 >= total {
            half = Some((Instant::now(), done));
        }
        match status["state"].as_str() {
            Some("done") => {
                let end = Instant::now();
                let whole = inputs.len() as f64 / (end - start).as_secs_f64();
                let (at, done_then) = half.unwrap_or((start, 0));
                let units = (total - done_then) as f64;
                let texts = units / total as f64 * inputs.len() as f64;
                let second = texts / (end - at).as_secs_f64().max(1e-3);
                return Ok((whole, second));
            }
            Some("failed" | "cancelled") => bail!("benchmark job {id} {}", status["state"]),
            _ => {}
        }
        if start.elapsed() > JOB_TIMEOUT {
            bail!("benchmark job {id} took over {} s", JOB_TIMEOUT.as_secs());
        }
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}
