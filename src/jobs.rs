//! Sharded jobs from the command line: `hearth embed`, `hearth batch generate`, `hearth jobs`,
//! `hearth job ID`, and `hearth verify` (offline).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hearth_kernels::{CatalogModel, MINILM, SMOLLM2};
use hearth_protocol::work::{Completion, UnitOutput};
use hearth_protocol::{ModelId, Receipt, Subject};
use serde_json::{Value, json};

use crate::cli::{
    BatchArgs, BatchCommand, EmbedJobArgs, JobArgs, JobOptions, JobsArgs, VerifyArgs,
};
use crate::client::Client;
use crate::config::FileConfig;
use crate::jsonl::{LINE_BYTES_MAX, read_inputs};

/// How often a waiting client asks for progress.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long a waiting client keeps trying a coordinator that stopped answering (a restart).
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(60);

fn model_id(model: &CatalogModel) -> ModelId {
    model.files[0]
        .blake3
        .parse()
        .map(ModelId)
        .expect("catalogued hashes are valid")
}

pub(crate) async fn embed(args: EmbedJobArgs, file: &FileConfig) -> anyhow::Result<()> {
    let inputs = read_inputs(&args.input, "text")?;
    let count = inputs.len();
    let request = embed_request(&inputs);
    submit(request, count, &args.job, args.output.as_deref(), file).await
}

pub(crate) async fn batch(args: BatchArgs, file: &FileConfig) -> anyhow::Result<()> {
    let BatchCommand::Generate(args) = args.command;
    let inputs = read_inputs(&args.input, "prompt")?;
    let count = inputs.len();
    let request = generate_request(&inputs, args.max_tokens);
    submit(request, count, &args.job, args.output.as_deref(), file).await
}

/// Submit a job whose inputs were all checked already, then follow it to its output unless
/// detached.
async fn submit(
    mut request: Value,
    count: usize,
    options: &JobOptions,
    output: Option<&Path>,
    file: &FileConfig,
) -> anyhow::Result<()> {
    let client = Client::new(&options.client, file)?;
    if let Some(r) = options.replicas {
        request["replicas"] = json!(r);
    }
    if let Some(n) = options.unit_size {
        request["unit_size"] = json!(n);
    }
    let id = post_job(&client, &request).await?;
    if options.detach {
        println!("{id}");
        return Ok(());
    }
    eprintln!("job {id}: {count} inputs submitted");
    let status = wait(&client, id).await?;
    finish(&client, id, &status, output, None).await
}

/// `POST /v1/jobs`: the new job's id.
pub(crate) async fn post_job(client: &Client, request: &Value) -> anyhow::Result<u64> {
    let answer: Value = client.post("/v1/jobs", request).await?;
    answer["id"]
        .as_u64()
        .context("the coordinator answered without a job id")
}

/// The job request for embedding `inputs` with the default embedder.
pub(crate) fn embed_request(inputs: &[(Value, String)]) -> Value {
    json!({ "kind": "embed", "model": model_id(&MINILM), "inputs": inputs_json(inputs) })
}

/// The job request for completing `inputs` greedily with the default LLM.
pub(crate) fn generate_request(inputs: &[(Value, String)], max_tokens: u32) -> Value {
    json!({
        "kind": "generate",
        "model": model_id(&SMOLLM2),
        "max_tokens": max_tokens,
        "inputs": inputs_json(inputs),
    })
}

fn inputs_json(inputs: &[(Value, String)]) -> Value {
    inputs
        .iter()
        .map(|(id, text)| json!({ "id": id, "text": text }))
        .collect()
}

/// Poll a job until it is finished, drawing a progress bar on a terminal.
pub(crate) async fn wait(client: &Client, id: u64) -> anyhow::Result<Value> {
    let terminal = std::io::stderr().is_terminal();
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let status: Value = match client.get(&format!("/v1/jobs/{id}")).await {
            Ok(status) => {
                unreachable_since = None;
                status
            }
            // A coordinator restarting resumes its jobs from its journal: keep waiting for it.
            Err(error) if crate::client::is_unreachable(&error) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > UNREACHABLE_PATIENCE {
                    return Err(error);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        if terminal {
            eprint!("\r{}", progress(&status));
        }
        let state = status["state"].as_str().unwrap_or("");
        if matches!(state, "done" | "failed" | "cancelled") {
            if terminal {
                eprintln!();
            }
            return Ok(status);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn progress(status: &Value) -> String {
    let total = status["units_total"].as_u64().unwrap_or(0).max(1);
    let done = status["units_done"].as_u64().unwrap_or(0);
    let failed = status["units_failed"].as_u64().unwrap_or(0);
    let width = 30;
    let filled = ((done + failed) * width / total) as usize;
    format!(
        "[{}{}] {done}/{total} units{}  {}",
        "#".repeat(filled),
        ".".repeat(width as usize - filled),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        },
        status["state"].as_str().unwrap_or("?"),
    )
}

/// After a job finished: write its output and receipts, or say why there are none.
async fn finish(
    client: &Client,
    id: u64,
    status: &Value,
    output: Option<&Path>,
    receipts: Option<&Path>,
) -> anyhow::Result<()> {
    let state = status["state"].as_str().unwrap_or("?");
    if state != "done" {
        bail!(
            "job {id} {state}: {} of {} units failed (see `hearth job {id} --json --units`)",
            status["units_failed"],
            status["units_total"]
        );
    }
    if let Some(path) = output {
        let bytes = client.get_bytes(&format!("/v1/jobs/{id}/output")).await?;
        write_atomically(path, &bytes)?;
        eprintln!("job {id}: output written to {}", path.display());
    }
    if let Some(path) = receipts {
        let bytes = client.get_bytes(&format!("/v1/jobs/{id}/receipts")).await?;
        write_atomically(path, &bytes)?;
        eprintln!("job {id}: receipts written to {}", path.display());
    }
    Ok(())
}

/// Only a complete file takes the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

pub(crate) async fn list(args: JobsArgs, file: &FileConfig) -> anyhow::Result<()> {
    let client = Client::new(&args.client, file)?;
    let jobs: Vec<Value> = client.get("/v1/jobs").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs yet");
        return Ok(());
    }
    println!(
        "{:>6}  {:<9}  {:>7}  {:>7}  {:>7}  {:>10}  {:>8}",
        "JOB", "STATE", "UNITS", "DONE", "FAILED", "EXECUTIONS", "REJECTED"
    );
    for job in &jobs {
        println!(
            "{:>6}  {:<9}  {:>7}  {:>7}  {:>7}  {:>10}  {:>8}",
            job["id"].to_string(),
            job["state"].as_str().unwrap_or("?"),
            job["units_total"].to_string(),
            job["units_done"].to_string(),
            job["units_failed"].to_string(),
            job["executions"].to_string(),
            job["rejected"].to_string(),
        );
    }
    Ok(())
}

pub(crate) async fn job(args: JobArgs, file: &FileConfig) -> anyhow::Result<()> {
    let client = Client::new(&args.client, file)?;
    let id = args.id;
    if args.cancel {
        let status: Value = client
            .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
            .await?;
        eprintln!("job {id}: {}", status["state"].as_str().unwrap_or("?"));
    }
    let mut status: Value = if args.wait {
        wait(&client, id).await?
    } else {
        client.get(&format!("/v1/jobs/{id}")).await?
    };
    if args.units {
        status = client.get(&format!("/v1/jobs/{id}?units=true")).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("job {id}: {}", progress(&status));
    }
    if args.output.is_some() || args.receipts.is_some() {
        finish(
            &client,
            id,
            &status,
            args.output.as_deref(),
            args.receipts.as_deref(),
        )
        .await?;
    }
    Ok(())
}

/// One output line's id (as JSON text) and its item.
fn parse_output_line(line: &str) -> anyhow::Result<(String, Value)> {
    let value: Value = serde_json::from_str(line).context("not JSON")?;
    let id = value.get("id").context("no \"id\"")?.to_string();
    Ok((id, value))
}

fn embedding(value: &Value) -> Option<Vec<f32>> {
    value["embedding"]
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect()
}

fn completion(value: &Value) -> Option<Completion> {
    let token_ids = value["token_ids"]
        .as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
        .collect::<Option<Vec<u32>>>()?;
    Some(Completion {
        token_ids,
        text: value["text"].as_str()?.to_string(),
    })
}

pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let read_lines = |path: &Path| -> anyhow::Result<Vec<String>> {
        let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        let mut lines = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("{}:{}", path.display(), n + 1))?;
            if line.len() > LINE_BYTES_MAX * 64 {
                bail!("{}:{}: line too long", path.display(), n + 1);
            }
            lines.push(line);
        }
        Ok(lines)
    };
    let receipts = read_lines(&args.receipts)?;
    let outputs = read_lines(&args.output)?;
    let mut problems: Vec<String> = Vec::new();
    let mut signers = BTreeSet::new();
    let mut covered = BTreeSet::new();
    let mut checked_receipts = 0;
    for (n, line) in receipts.iter().enumerate() {
        let at = format!("{}:{}", args.receipts.display(), n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{at}: not JSON ({e})"));
                continue;
            }
        };
        let receipt: Receipt = match serde_json::from_value(value["receipt"].clone()) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{at}: no valid \"receipt\" ({e})"));
                continue;
            }
        };
        checked_receipts += 1;
        if receipt.verify().is_err() {
            problems.push(format!(
                "{at}: signature does not verify for signer {}",
                receipt.peer_id()
            ));
        }
        signers.insert(receipt.peer_id().to_string());
        if let (Subject::Unit { unit, .. }, Some(named)) =
            (receipt.body.subject, value["unit"].as_u64())
            && unit != named
        {
            problems.push(format!(
                "{at}: receipt is for unit {unit}, line says {named}"
            ));
        }
        let ids: Vec<String> = value["input_ids"]
            .as_array()
            .map(|a| a.iter().map(Value::to_string).collect())
            .unwrap_or_default();
        let numbers: Vec<usize> = value["input_lines"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_u64())
                    .map(|n| n as usize)
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() || numbers.len() != ids.len() {
            problems.push(format!(
                "{at}: no \"input_ids\" with matching \"input_lines\""
            ));
            continue;
        }
        let out = args.output.display();
        let mut items = Vec::new();
        for (id, &number) in ids.iter().zip(&numbers) {
            let Some(line) = number.checked_sub(1).and_then(|i| outputs.get(i)) else {
                problems.push(format!(
                    "{at}: input {id} is at line {number}, which {out} lacks"
                ));
                break;
            };
            if !covered.insert(number) {
                problems.push(format!("{out}:{number}: covered by two receipts"));
            }
            match parse_output_line(line) {
                Ok((line_id, item)) if &line_id == id => items.push(item),
                Ok((line_id, _)) => problems.push(format!(
                    "{out}:{number}: id {line_id}, but the receipt names {id} here"
                )),
                Err(e) => problems.push(format!("{out}:{number}: {e}")),
            }
        }
        if items.len() != ids.len() {
            continue;
        }
        let output = if items[0].get("embedding").is_some() {
            items
                .iter()
                .map(embedding)
                .collect::<Option<Vec<_>>>()
                .map(UnitOutput::Embeddings)
        } else {
            items
                .iter()
                .map(completion)
                .collect::<Option<Vec<_>>>()
                .map(UnitOutput::Completions)
        };
        let lines = numbers
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        match output {
            Some(output) if output.digest() == receipt.body.output => {}
            Some(_) => problems.push(format!(
                "{out}: lines {lines} do not match the digest signed in {at}"
            )),
            None => problems.push(format!(
                "{out}: lines {lines} lack a valid \"embedding\" or \"token_ids\"/\"text\""
            )),
        }
    }
    let lines = outputs.iter().filter(|l| !l.trim().is_empty()).count();
    let uncovered = lines.saturating_sub(covered.len());
    if uncovered > 0 {
        problems.push(format!(
            "{}: {uncovered} lines no receipt covers",
            args.output.display()
        ));
    }
    if args.json {
        println!(
            "{}",
            json!({
                "receipts": checked_receipts,
                "lines": covered.len(),
                "signers": signers,
                "problems": problems,
                "ok": problems.is_empty(),
            })
        );
    } else {
        let mut out = std::io::stdout().lock();
        for p in &problems {
            writeln!(out, "{p}")?;
        }
        writeln!(
            out,
            "{checked_receipts} receipts, {} output lines, {} signers: {}",
            covered.len(),
            signers.len(),
            if problems.is_empty() {
                "all verified".to_string()
            } else {
                format!("{} problems", problems.len())
            }
        )?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("verification failed")
    }
}
