//! `hearth peers`.

use hearth_protocol::api::PeerEntry;

use crate::cli::PeersArgs;
use crate::client::Client;
use crate::config::FileConfig;

pub(crate) async fn run(args: PeersArgs, file: &FileConfig) -> anyhow::Result<()> {
    let client = Client::new(&args.client, file)?;
    let peers: Vec<serde_json::Value> = client.get("/v1/peers").await?;
    if args.json {
        // Pass the coordinator's objects through whole: fields added later reach scripts unchanged.
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    let peers: Vec<PeerEntry> = peers
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()?;
    print!("{}", table(&peers));
    // The coordinator's own reachability (AutoNAT), where it answers (an older one does not say).
    if let Ok(swarm) = client
        .get::<hearth_protocol::api::SwarmInfo>("/v1/swarm")
        .await
    {
        println!(
            "coordinator {}: reachability {}",
            swarm.peer_id,
            swarm.reachability.as_str()
        );
    }
    Ok(())
}

/// The human view of the swarm: one line per peer, then a count.
pub(crate) fn table(peers: &[PeerEntry]) -> String {
    use std::fmt::Write;

    let mut out = String::new();
    if peers.is_empty() {
        out.push_str("no peers yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<52}  {:<11}  {:<7}  {:<12}  {:>8}  {:<7}  {:<28}  {:>17}  {:>7}  {:>8}  {:>6}  {:>9}  {:>6}  {:>8}  {:>7}  {:>7}",
        "PEER",
        "STATE",
        "REACH",
        "CONNECTION",
        "RTT",
        "BACKEND",
        "DEVICE",
        "MEMORY FREE/TOTAL",
        "THREADS",
        "SCORE",
        "MODELS",
        "FETCHED",
        "RELIAB",
        "CREDIT",
        "STRIKES",
        "SEEN"
    );
    for p in peers {
        let c = &p.capabilities;
        let memory = format!("{}/{}", gib(c.memory_free_bytes), gib(c.memory_total_bytes));
        let device: String = c.device.chars().take(28).collect();
        let _ = writeln!(
            out,
            "{:<52}  {:<11}  {:<7}  {:<12}  {:>8}  {:<7}  {:<28}  {:>13} GiB  {:>7}  {:>8.1}  {:>6}  {:>6.1} MB  {:>6.3}  {:>8.0}  {:>7}  {:>6}s",
            p.peer_id.to_string(),
            match (p.quarantined, p.online) {
                (true, _) => "quarantined",
                (false, true) => "online",
                (false, false) => "offline",
            },
            p.reachability.as_str(),
            p.connection.as_deref().unwrap_or("-"),
            p.rtt_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms")),
            c.backend.as_str(),
            device,
            memory,
            c.threads,
            c.score,
            // Held whole, and in part (layers fetched from peers).
            if p.layers_held.is_empty() {
                c.models.len().to_string()
            } else {
                format!("{}+{}", c.models.len(), p.layers_held.len())
            },
            p.bytes_received as f64 / 1e6,
            p.reliability,
            p.credit,
            p.strikes,
            p.last_seen_ms_ago / 1000,
        );
    }
    let online = peers.iter().filter(|p| p.online).count();
    let _ = writeln!(out, "{} peers, {online} online", peers.len());
    out
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 30))
}

/// `hearth group`: the coordinator group as the member reached sees it.
pub(crate) async fn group(args: crate::cli::GroupArgs, file: &FileConfig) -> anyhow::Result<()> {
    if let Some(command) = &args.command {
        let admin = match &args.admin_key {
            Some(key) => key.clone(),
            None => {
                let dir = match &args.data_dir {
                    Some(dir) => dir.clone(),
                    None => crate::config::default_data_dir("coordinator")?,
                };
                let path = dir.join(hearth_coordinator::keys::ADMIN_KEY_FILE);
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "reading the group's admin key from {}: {e} (pass --admin-key, or --data-dir of a member)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let client = Client::new(
            &crate::cli::ClientArgs {
                api: args.client.api.clone(),
                api_key: Some(admin),
                ca_cert: args.client.ca_cert.clone(),
            },
            file,
        )?;
        let view: serde_json::Value = match command {
            crate::cli::GroupCommand::Add { addr } => {
                eprintln!(
                    "adding {addr}: it catches up from the group's log first (up to a minute)…"
                );
                client
                    .post(
                        "/v1/admin/group/members",
                        &serde_json::json!({ "addr": addr }),
                    )
                    .await?
            }
            crate::cli::GroupCommand::Remove { peer_id } => {
                client
                    .delete(&format!("/v1/admin/group/members/{peer_id}"))
                    .await?
            }
        };
        return print_group(&view, args.json);
    }
    let client = Client::new(&args.client, file)?;
    let view: serde_json::Value = client.get("/v1/group").await.map_err(|e| {
        if e.to_string().contains("404") {
            anyhow::anyhow!("this coordinator is not in a group (start members with `hearth coordinator --group …`)")
        } else {
            e
        }
    })?;
    print_group(&view, args.json)
}

fn print_group(view: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!("{:<54} {:<12} {:>8}  API", "MEMBER", "ROLE", "JOURNAL");
    for m in view["members"].as_array().into_iter().flatten() {
        let position = m["commit_index"]
            .as_u64()
            .map_or("-".to_string(), |i| i.to_string());
        println!(
            "{:<54} {:<12} {:>8}  {}",
            text(&m["peer_id"]),
            text(&m["role"]),
            position,
            text(&m["api"])
        );
    }
    println!(
        "term {}, leader {}",
        view["term"],
        view["leader"]
            .as_str()
            .unwrap_or("none (an election is under way)")
    );
    Ok(())
}
