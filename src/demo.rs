//! `hearth demo`: a coordinator and nodes as child processes on 127.0.0.1, the swarm forming, then a
//! clean stop.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use hearth_protocol::api::PeerEntry;

use crate::children::Children;
use crate::cli::DemoArgs;
use crate::client::Client;
use crate::config::FileConfig;
use crate::peers::table;
use crate::shutdown_signal;

/// How often the demo polls the coordinator while the swarm forms.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

pub(crate) async fn run(args: DemoArgs, file: &FileConfig) -> anyhow::Result<()> {
    let models = args.models.resolve(file)?;
    let mut swarm = Children::in_temp_dir("hearth-demo")?;
    let outcome = tokio::select! {
        result = form(&args, &models, &mut swarm) => result,
        () = shutdown_signal() => {
            eprintln!("interrupted");
            Ok(())
        }
    };
    swarm.finish(outcome.is_err(), true).await;
    outcome
}

async fn form(args: &DemoArgs, models: &Path, swarm: &mut Children) -> anyhow::Result<()> {
    println!(
        "Starting a coordinator and {} nodes on 127.0.0.1 (throwaway data in {})",
        args.nodes,
        swarm.dir.display()
    );
    let (api, client) = swarm.start_coordinator().await?;
    println!("Coordinator API at {api}");

    let started = Instant::now();
    // One of the nodes lies (when built with fault injection and not told otherwise).
    let liar = cfg!(feature = "fault-injection") && !args.no_liar && args.nodes >= 3;
    let total = args.nodes;
    for n in 1..=total {
        let is_liar = liar && n == total;
        let name = if is_liar {
            "liar".to_string()
        } else {
            format!("node{n}")
        };
        let mut extra = Vec::new();
        if is_liar {
            println!("One node is started with --fault wrong-output: it lies about its results.");
            extra.extend(["--fault", "wrong-output"]);
        }
        swarm.start_node(&name, &api, models, &extra)?;
    }

    let deadline = started + Duration::from_secs(args.timeout);
    let mut seen = BTreeSet::new();
    loop {
        swarm.check_alive()?;
        let peers: Vec<PeerEntry> = client.get("/v1/peers").await.unwrap_or_default();
        for peer in peers.iter().filter(|p| p.online) {
            if seen.insert(peer.peer_id) {
                let c = &peer.capabilities;
                println!(
                    "  + {} joined after {:.1}s: {} {} ({} threads, score {:.1})",
                    peer.peer_id,
                    started.elapsed().as_secs_f64(),
                    c.backend.as_str(),
                    c.device,
                    c.threads,
                    c.score
                );
            }
        }
        if peers.iter().filter(|p| p.online).count() >= total as usize {
            println!(
                "\nThe swarm formed in {:.1}s:\n",
                started.elapsed().as_secs_f64()
            );
            print!("{}", table(&peers));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} nodes joined within {}s",
                seen.len(),
                args.timeout
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    jobs(&client).await?;

    if args.hold {
        println!(
            "\nThe swarm keeps running; `hearth peers --api {api}` shows it. Ctrl-C stops everything."
        );
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Sentences the demo embeds.
const DEMO_TEXTS: [&str; 8] = [
    "A group that owns its machines owns its AI.",
    "Volunteers lend spare cycles to a shared swarm.",
    "Every result is signed by the peer that computed it.",
    "Redundant execution catches peers that lie.",
    "The coordinator journals every state change.",
    "Nobody is trusted by default.",
    "Embeddings turn sentences into vectors.",
    "The hearth keeps the village warm.",
];

/// Prompts the demo completes.
const DEMO_PROMPTS: [&str; 2] = [
    "The capital of France is",
    "A volunteer computing network is",
];

/// Run a replicated embed job and a batch-generate job through the swarm and show what the
/// verifier made of them.
async fn jobs(client: &Client) -> anyhow::Result<()> {
    pipeline(client).await?;
    let inputs: Vec<(serde_json::Value, String)> = (0..64)
        .map(|i| {
            (
                i.into(),
                format!("{} ({i})", DEMO_TEXTS[i % DEMO_TEXTS.len()]),
            )
        })
        .collect();
    println!(
        "\nEmbedding {} sentences on the swarm: all-MiniLM-L6-v2, 4 per work unit, each unit on 2 peers",
        inputs.len()
    );
    let mut request = crate::jobs::embed_request(&inputs);
    request["replicas"] = 2.into();
    request["unit_size"] = 4.into();
    let started = Instant::now();
    let id = crate::jobs::post_job(client, &request).await?;
    let status = crate::jobs::wait(client, id).await?;
    println!(
        "  job {id} {} in {:.1}s: {} units, {} executions, {} results rejected",
        status["state"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64(),
        status["units_total"],
        status["executions"],
        status["rejected"],
    );

    let prompts: Vec<(serde_json::Value, String)> = DEMO_PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| (i.into(), (*p).to_string()))
        .collect();
    println!(
        "\nCompleting {} prompts with SmolLM2-135M (greedy, 16 tokens, each on 2 peers):",
        prompts.len()
    );
    let mut request = crate::jobs::generate_request(&prompts, 16);
    request["replicas"] = 2.into();
    request["unit_size"] = 1.into();
    let id = crate::jobs::post_job(client, &request).await?;
    let status = crate::jobs::wait(client, id).await?;
    if status["state"] == "done" {
        let bytes = client.get_bytes(&format!("/v1/jobs/{id}/output")).await?;
        for (line, (_, prompt)) in String::from_utf8_lossy(&bytes).lines().zip(&prompts) {
            let value: serde_json::Value = serde_json::from_str(line)?;
            println!("  {prompt}{}", value["text"].as_str().unwrap_or(""));
        }
    } else {
        println!("  job {id} {}", status["state"]);
    }

    let peers: Vec<PeerEntry> = client.get("/v1/peers").await?;
    println!("\nThe swarm after the jobs:\n");
    print!("{}", table(&peers));
    for p in peers.iter().filter(|p| p.quarantined) {
        println!(
            "\n{} is quarantined: {}",
            p.peer_id,
            p.quarantine_reason.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

/// A pipelined generation streamed to the terminal, then its route and its checks.
async fn pipeline(client: &Client) -> anyhow::Result<()> {
    use std::io::Write;

    let prompt = DEMO_PROMPTS[0];
    println!(
        "\nGenerating on a pipeline: SmolLM2-135M cut into 3 stages across the nodes; every window of 8 tokens is replayed by an independent peer before it is shown\n"
    );
    print!("  {prompt}");
    let _ = std::io::stdout().flush();
    let request =
        serde_json::json!({ "prompt": prompt, "max_tokens": 32, "stages": 3, "stream": true });
    let mut summary = serde_json::Value::Null;
    client
        .post_lines("/v1/generate", &request, |line| {
            if let (Some(text), true) = (line["text"].as_str(), line.get("token_id").is_some()) {
                print!("{text}");
                let _ = std::io::stdout().flush();
            } else if line.get("done").is_some() || line.get("error").is_some() {
                summary = line;
            }
        })
        .await?;
    println!();
    if let Some(message) = summary["error"]["message"].as_str() {
        bail!("the pipelined generation failed: {message}");
    }
    let done = &summary["done"];
    let route: Vec<String> = done["route"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "layers {}..{} on {}",
                h["layers"][0],
                h["layers"][1],
                short(&h["peer_id"])
            )
        })
        .collect();
    println!("\n  route: {}", route.join(" → "));
    let windows = done["windows"].as_array().cloned().unwrap_or_default();
    let agreed = windows.iter().filter(|w| w["outcome"] == "agreed").count();
    println!(
        "  {} tokens, {} verified; {} stage checks, {agreed} agreed",
        done["token_ids"].as_array().map_or(0, Vec::len),
        done["verified_tokens"],
        windows.len()
    );
    for w in windows.iter().filter(|w| w["outcome"] != "agreed") {
        println!(
            "  caught: steps {}..{} of layers {}..{}: {} (stage {}, replayed by {} and {})",
            w["steps"][0],
            w["steps"][1],
            w["layers"][0],
            w["layers"][1],
            w["outcome"].as_str().unwrap_or("?"),
            short(&w["stage_peer"]),
            short(&w["verifier"]),
            short(&w["tie_breaker"]),
        );
    }
    for r in done["reroutes"].as_array().into_iter().flatten() {
        println!(
            "  rerouted: layers {}..{} from {} to {} ({})",
            r["layers"][0],
            r["layers"][1],
            short(&r["failed_peer"]),
            short(&r["replacement"]),
            r["reason"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// The end of a peer id, enough to tell the demo's peers apart.
fn short(peer: &serde_json::Value) -> String {
    let s = peer.as_str().unwrap_or("-");
    format!("…{}", &s[s.len().saturating_sub(6)..])
}
